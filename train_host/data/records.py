"""What a dataset split is (`Sample`, `Split`) and the seeded list operations that shape one.

A split is plain lists of file paths with labels; nothing here reads pixels, so listing a
dataset is cheap and torch-free. `split.py` builds one (`load_split`) from the dataset
readers (`elpv.py`, `mvtec.py`), which build on these records; `loader.py` turns samples
into tensors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int  # 0 good, 1 defect
    defect: str  # "good" or the defect class name
    mask_path: Path | None = None


@dataclass
class Split:
    name: str
    train: list[Sample]  # defect-free images to fit on (plus contamination, if asked for)
    val: list[Sample]  # held-out good images: thresholds and model selection use these
    test: list[Sample]  # good + defective images for evaluation
    info: dict = field(default_factory=dict)  # provenance for run records and manifests
    # a few labelled defects moved out of test (``val_defects``): a validation signal for the
    # families that can use one; kept apart from `val` so `val` stays good-only for everyone else
    val_defects: list[Sample] = field(default_factory=list)

    @property
    def has_masks(self) -> bool:
        return any(s.mask_path is not None for s in self.test)


def validation_defects(test: list[Sample], n: int, seed: int) -> list[Sample]:
    """The labelled defect images (seeded choice) that move from test into validation."""
    if n <= 0:
        return []
    defects = [s for s in test if s.label == 1]
    if n >= len(defects):
        raise LinesideError(
            f"val_defects {n} would leave the test set with no defect images (it has {len(defects)}): "
            f"use at most {max(0, len(defects) - 1)}, or add defect images to the data")
    return subsample(defects, n, seed, salt=6)


def contaminants(train: list[Sample], test: list[Sample], share: float, seed: int) -> list[Sample]:
    """The defect images (seeded choice) that move from test into train."""
    if share <= 0:
        return []
    n = max(1, round(share * len(train)))
    defects = [s for s in test if s.label == 1]
    if n > len(defects):
        raise LinesideError(
            f"contamination {share} asks for {n} defect images in train but test has only "
            f"{len(defects)}: lower the contamination or raise the limit"
        )
    return subsample(defects, n, seed, salt=3)


def subsample(samples: list[Sample], n: int, seed: int, salt: int) -> list[Sample]:
    """A seeded choice of n samples, returned in path order (independent of input order)."""
    ordered = sorted(samples, key=lambda s: str(s.path))
    if len(ordered) <= n:
        return ordered
    pick = np.random.default_rng([seed, salt]).permutation(len(ordered))[:n]
    return [ordered[i] for i in sorted(pick)]


def subsample_both_classes(test: list[Sample], limit: int, seed: int) -> list[Sample]:
    """Cap test at `limit`, keeping the good/defect proportion and at least one of each class."""
    if len(test) <= limit:
        return sorted(test, key=lambda s: str(s.path))
    good = [s for s in test if s.label == 0]
    bad = [s for s in test if s.label == 1]
    n_bad = round(limit * len(bad) / len(test))
    if good and bad:
        n_bad = min(max(n_bad, 1), limit - 1)
    n_good = limit - n_bad
    picked = subsample(good, n_good, seed, salt=4) + subsample(bad, n_bad, seed, salt=5)
    return sorted(picked, key=lambda s: str(s.path))


def count(train: list[Sample], val: list[Sample], test: list[Sample], val_defects: list[Sample] = ()) -> dict:
    return {
        "train_good": sum(s.label == 0 for s in train),
        "train_contaminated": sum(s.label == 1 for s in train),
        "val": len(val),
        "val_defect": len(val_defects),
        "test_good": sum(s.label == 0 for s in test),
        "test_defect": sum(s.label == 1 for s in test),
        "test_with_mask": sum(s.mask_path is not None for s in test),
    }


def fingerprint(*parts: list[Sample]) -> str:
    """sha256 over each list's (file name, label): two runs on the same split share it."""
    h = hashlib.sha256()
    for i, part in enumerate(parts):
        for s in part:
            h.update(f"{i}|{Path(s.path).parent.name}/{Path(s.path).name}|{s.label}\n".encode())
    return h.hexdigest()
