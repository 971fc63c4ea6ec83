"""MVTec AD and MVTec AD 2 category folders, told apart by their layout.

MVTec AD:    ROOT/train/good, ROOT/test/<class>, ROOT/ground_truth/<class>/<stem>_mask.png
MVTec AD 2:  ROOT/train/good, ROOT/validation/good, ROOT/test_public/{good,bad},
             ROOT/test_public/ground_truth/bad/<stem>_mask.png
Class "good" is label 0, every other class label 1. A defect image without a mask is
kept (mask_path None). AD 2's test_private sets have no labels and are not read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.imageio import list_images

from .records import GOOD, Sample, Split

MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")


def load_mvtec(root: Path, val_share: float, seed: int) -> Split:
    root = _check_root(root)
    layout = detect_layout(root)
    train = _good_samples(root / "train" / "good")
    if not train:
        raise LinesideError(
            f"{root / 'train' / 'good'} has no images: put the defect-free training images "
            "(png/jpg/bmp/tif) there"
        )
    val = _good_samples(root / "validation" / "good") if layout == "mvtec_ad2" else []
    if val:
        val_rule = "val = validation/good (official AD 2 split); val_share not used"
    else:
        train, val = hold_out(train, val_share, seed, root)
        val_rule = f"val = seeded {val_share:.0%} of train/good"
    test_dir, gt_dir = (root / "test", root / "ground_truth") if layout == "mvtec_ad" else (
        root / "test_public", root / "test_public" / "ground_truth")
    test = _test_samples(test_dir, gt_dir)
    info = {
        "source": layout,
        "root": str(root),
        "val_share": val_share,
        "rules": f"train = train/good; {val_rule}; test = {test_dir.name}/<class> (good → 0, others → 1); "
                 f"masks from {gt_dir.relative_to(root)}/<class>/<stem>_mask.png or <stem>.png",
        "classes": sorted({s.defect for s in test}),
    }
    return Split(root.name, train, val, test, info)


def detect_layout(root: Path) -> str:
    """"mvtec_ad2" (test_public or validation folder) or "mvtec_ad" (test folder)."""
    if not (root / "train" / "good").is_dir():
        hint = _category_hint(root)
        raise LinesideError(
            f"{root} is not an MVTec-layout folder: expected {root / 'train' / 'good'} with the "
            "defect-free images and test/<class> (MVTec AD) or test_public/{good,bad} (MVTec AD 2)"
            + hint
        )
    if (root / "test_public").is_dir():
        return "mvtec_ad2"
    if (root / "test").is_dir():
        return "mvtec_ad"
    raise LinesideError(
        f"{root} has train/good but no test folder: add test/<class> (MVTec AD: test/good plus "
        "one folder per defect class) or test_public/{good,bad} (MVTec AD 2)"
    )


def hold_out(train: list[Sample], share: float, seed: int, root: Path) -> tuple[list[Sample], list[Sample]]:
    """Seeded hold-out of `share` of train/good as val (at least one image when share > 0)."""
    n_val = max(1, round(share * len(train))) if share > 0 else 0
    if n_val >= len(train):
        raise LinesideError(
            f"{root / 'train' / 'good'} has {len(train)} image(s): too few to hold out {share:.0%} "
            "for validation; add images or lower val_share"
        )
    order = np.random.default_rng([seed, 0]).permutation(len(train))
    val_idx = set(order[:n_val].tolist())
    keep = [s for i, s in enumerate(train) if i not in val_idx]
    held = [s for i, s in enumerate(train) if i in val_idx]
    return keep, held


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise LinesideError(
            f"data folder {root} does not exist: give an MVTec-layout category folder "
            "(with train/good and test/...) or 'elpv'"
        )
    if not root.is_dir():
        raise LinesideError(f"data {root} is a file, not a folder: give an MVTec-layout category folder or 'elpv'")
    return root.resolve()


def _category_hint(root: Path) -> str:
    """Point at the categories when the user gave the dataset root instead of one of them."""
    categories = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "train" / "good").is_dir())
    if not categories:
        return ""
    listed = ", ".join(categories[:5]) + (", ..." if len(categories) > 5 else "")
    return f". It holds categories ({listed}): pass one of them, e.g. {root / categories[0]}"


def _good_samples(folder: Path) -> list[Sample]:
    if not folder.is_dir():
        return []
    return [Sample(p, 0, GOOD) for p in list_images(folder)]


def _test_samples(test_dir: Path, gt_dir: Path) -> list[Sample]:
    classes = sorted(p for p in test_dir.iterdir() if p.is_dir() and p.name != "ground_truth")
    samples = [
        Sample(path, 0 if cls.name == GOOD else 1, cls.name, find_mask(gt_dir / cls.name, path.stem))
        for cls in classes
        for path in list_images(cls)
    ]
    if not samples:
        raise LinesideError(
            f"{test_dir} has no images: put test images in {test_dir}/good and one folder per "
            "defect class (MVTec AD 2: good and bad)"
        )
    return samples


def find_mask(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}_mask", stem):
        for suffix in MASK_SUFFIXES:
            candidate = folder / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    return None
