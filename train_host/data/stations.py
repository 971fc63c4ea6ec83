"""Several stations' datasets as one training split, for a detector trained once and used on new stations.

Zero-shot training (`lineside train dinov2-lora --zero-shot --data A --data B ...`) fits on
the union of the stations' good images; each station is split as `load_split` splits it
alone (its own validation hold-out, limit and contamination), and the parts are
concatenated station after station, so ``info["stations"]`` (each station's own info and
its counts) says which samples came from where. The test part is empty: such a run is
judged on a station it never saw (`lineside evaluate RUN --data NEW`), so ``info["data"]``
is None and the commands that score it ask for ``--data``.
"""

from __future__ import annotations

from pathlib import Path

from edge_infer.errors import LinesideError

from .records import Split, count, fingerprint
from .split import load_split


def load_stations(datas: list[str], val_share: float = 0.1, seed: int = 0, contamination: float = 0.0,
                  limit: int | None = None) -> Split:
    if len(datas) < 2:
        raise LinesideError(f"--zero-shot trains across stations and got {len(datas)} (--data {' '.join(datas)}): "
                            "give two or more, --data DIR1 --data DIR2 ...; for one station drop --zero-shot")
    resolved = [str(Path(d).resolve()) if not (d == "elpv" or str(d).startswith("elpv:")) else d for d in datas]
    if len(set(resolved)) < len(resolved):
        raise LinesideError(f"--data names the same station twice ({' '.join(datas)}): give each station once")
    splits = [load_split(d, val_share=val_share, seed=seed, contamination=contamination, limit=limit) for d in datas]
    train = [s for split in splits for s in split.train]
    val = [s for split in splits for s in split.val]
    stations = [{**split.info, "name": split.name, "train": len(split.train), "val": len(split.val)}
                for split in splits]
    info = {"data": None, "zero_shot": True, "stations": stations, "val_share": val_share, "seed": seed,
            "contamination": contamination, "limit": limit, "counts": count(train, val, []),
            "fingerprint": fingerprint(train, val, []),
            "rules": "zero-shot: each station split alone, train and validation concatenated in --data order; "
                     "no test part (score a new station with --data)"}
    return Split("+".join(split.name for split in splits), train, val, [], info)


def station_slices(info: dict, part: str, total: int) -> list[slice]:
    """Where each station's samples lie in a split's ``part`` ("train" or "val"); one slice for one station."""
    sizes = [station[part] for station in info.get("stations", [])] or [total]
    if sum(sizes) != total:
        raise LinesideError(f"the split's station counts {sizes} do not add up to its {total} {part} samples")
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(start, start + size) for start, size in zip(starts, sizes)]
