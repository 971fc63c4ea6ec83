"""`load_split`: the one entry point that builds a `Split`, from ELPV or an MVTec AD / AD 2 folder.

It sits above the records and the dataset readers (which use the records), so neither has
to import the other's module back.
"""

from __future__ import annotations

from pathlib import Path

from edge_infer.errors import LinesideError

from .records import Split, contaminants, count, fingerprint, subsample, subsample_both_classes, validation_defects


def load_split(data: str | Path, val_share: float = 0.1, seed: int = 0,
               contamination: float = 0.0, limit: int | None = None, val_defects: int = 0) -> Split:
    """`data == "elpv"` → the ELPV solar cells ('elpv:mono' / 'elpv:poly': one cell type); otherwise an MVTec AD / AD 2 category folder.

    contamination: move round(contamination × train size) defect images (at least one when
    contamination > 0) from test into train; they keep label 1 so experiments can count them.
    limit: cap train (before contamination), val and test each, keeping both classes in test.
    val_defects: move this many labelled defect images (seeded, never the contaminants) from
    test into `Split.val_defects`, so a family may validate on real defects that the test
    set then never contains. The test set keeps at least one defect.
    """
    _check_options(val_share, contamination, limit, val_defects)
    if str(data) == "elpv" or str(data).startswith("elpv:"):
        from .elpv import load_elpv, parse_elpv

        split = load_elpv(seed, parse_elpv(str(data)))
    else:
        from .mvtec import load_mvtec

        split = load_mvtec(Path(data), val_share, seed)
    split.info["data"] = str(data)  # what to pass to load_split again (evaluate, export)
    return _finish(split, seed, contamination, limit, val_defects)


def _check_options(val_share: float, contamination: float, limit: int | None, val_defects: int = 0) -> None:
    if val_defects < 0:
        raise LinesideError(f"val_defects must be 0 or more, got {val_defects}: e.g. 20 moves 20 labelled "
                            "defect images from test into validation")
    if not 0.0 <= val_share < 1.0:
        raise LinesideError(f"val_share must be in [0, 1), got {val_share}: e.g. 0.1 holds out 10% of train/good")
    if not 0.0 <= contamination < 1.0:
        raise LinesideError(
            f"contamination must be in [0, 1), got {contamination}: e.g. 0.05 mixes 5% defects into train")
    if limit is not None and limit < 2:
        raise LinesideError(f"limit must be at least 2 (test keeps one good and one defect), got {limit}")


def _finish(split: Split, seed: int, contamination: float, limit: int | None, n_val_defects: int = 0) -> Split:
    """Apply limit, contamination and val_defects, then record counts and a fingerprint of the lists."""
    train, val, test = split.train, split.val, split.test
    if limit is not None:
        train = subsample(train, limit, seed, salt=1)
        val = subsample(val, limit, seed, salt=2)
    moved = contaminants(train, test, contamination, seed)
    if moved:
        moved_paths = {s.path for s in moved}
        test = [s for s in test if s.path not in moved_paths]
        train = sorted(train + moved, key=lambda s: str(s.path))
    val_defects = validation_defects(test, n_val_defects, seed)  # after contamination: never the same images
    if val_defects:
        held = {s.path for s in val_defects}
        test = [s for s in test if s.path not in held]
    if limit is not None:
        test = subsample_both_classes(test, limit, seed)
    info = dict(split.info)
    parts = (train, val, test, val_defects) if val_defects else (train, val, test)  # old fingerprints unchanged
    info.update(seed=seed, contamination=contamination, limit=limit, val_defects=len(val_defects),
                counts=count(train, val, test, val_defects), fingerprint=fingerprint(*parts))
    return Split(split.name, train, val, test, info, val_defects)
