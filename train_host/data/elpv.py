"""The ELPV solar-cell dataset from the `elpv-dataset` package, split deterministically.

2,624 grayscale 300×300 electroluminescence cells, each with a defect probability in
{0, 1/3, 2/3, 1} from expert review and a type (mono/poly). Rule:
good = probability 0; defective = probability ≥ 0.5; the 1/3 ("possibly defective")
cells are left out of every list because their label is ambiguous. Per type (stratified),
a seeded 60% of the good cells → train, 10% → val, the remaining 30% → test; every
defective cell → test. ELPV is CC BY-NC-SA 4.0: non-commercial use only.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path

import numpy as np

from edge_infer.errors import LinesideError

from .records import GOOD, Sample, Split

TRAIN_SHARE, VAL_SHARE = 0.6, 0.1
LICENCE = "ELPV: CC BY-NC-SA 4.0, non-commercial use only"
RULE = ("good = defect probability 0; defective = probability >= 0.5; probability 1/3 "
        "(possibly defective) excluded as ambiguous; per cell type (mono/poly) a seeded 60% of "
        "good cells -> train, 10% -> val, 30% -> test; all defective cells -> test")


CELL_TYPES = ("mono", "poly")


def parse_elpv(data: str) -> str | None:
    """'elpv' → None (every cell); 'elpv:mono' / 'elpv:poly' → that cell type, a station of its own."""
    if data == "elpv":
        return None
    cell_type = data.split(":", 1)[1] if data.startswith("elpv:") else data
    if cell_type not in CELL_TYPES:
        raise LinesideError(f"--data {data}: ELPV's cell types are {', '.join(CELL_TYPES)}; give 'elpv' for all "
                            "cells or 'elpv:mono' / 'elpv:poly' for one type as a station of its own")
    return cell_type


def load_elpv(seed: int, cell_type: str | None = None) -> Split:
    """All cells, or only ``cell_type``'s; a type's split is the same either way (the same draws are made)."""
    data_dir = elpv_data_dir()
    cells = read_labels(data_dir / "labels.csv")
    train: list[Sample] = []
    val: list[Sample] = []
    test: list[Sample] = []
    excluded = 0
    per_type = {}
    rng = np.random.default_rng([seed, 10])
    only = cell_type
    for cell_type in sorted({t for _, _, t in cells}):
        rows = [(p, prob) for p, prob, t in cells if t == cell_type]
        good = sorted(p for p, prob in rows if prob == 0.0)
        order = rng.permutation(len(good))  # drawn for every type, so a type's split is the same when selected
        if only is not None and cell_type != only:
            continue
        bad = [Sample(p, 1, "defective" if prob == 1.0 else "probably_defective")
               for p, prob in rows if prob >= 0.5]
        excluded += sum(0.0 < prob < 0.5 for _, prob in rows)
        n_train, n_val = round(TRAIN_SHARE * len(good)), round(VAL_SHARE * len(good))
        train += _good_cells(good, order[:n_train])
        val += _good_cells(good, order[n_train:n_train + n_val])
        test += _good_cells(good, order[n_train + n_val:]) + bad
        per_type[cell_type] = {"good": len(good), "train": n_train, "val": n_val,
                               "test_good": len(good) - n_train - n_val, "test_defect": len(bad)}
    info = {
        "source": "elpv",
        "package": f"elpv-dataset {_version()}",
        "root": str(data_dir),
        "rules": RULE,
        "excluded_ambiguous": excluded,
        "per_type": per_type,
        "licence": LICENCE,
    }
    if only is not None:
        info["cell_type"] = only
    return Split("elpv" if only is None else f"elpv-{only}", _sorted(train), _sorted(val), _sorted(test), info)


def _good_cells(paths: list[Path], idx) -> list[Sample]:
    return [Sample(paths[i], 0, GOOD) for i in sorted(idx)]


def _sorted(samples: list[Sample]) -> list[Sample]:
    return sorted(samples, key=lambda s: str(s.path))


def elpv_data_dir() -> Path:
    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None or spec.origin is None:
        raise LinesideError(
            "the ELPV dataset is not installed: run `pip install elpv-dataset` "
            "(or install lineside with the `train` extra)"
        )
    data_dir = Path(spec.origin).parent / "data"
    if not (data_dir / "labels.csv").is_file():
        raise LinesideError(
            f"the elpv-dataset package has no {data_dir / 'labels.csv'}: reinstall it "
            "(`pip install --force-reinstall elpv-dataset`)"
        )
    return data_dir


def read_labels(csv: Path) -> list[tuple[Path, float, str]]:
    """labels.csv rows: `images/cellNNNN.png  <probability>  <mono|poly>`, whitespace-separated."""
    cells = []
    for line_no, line in enumerate(csv.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rel, prob, cell_type = line.split()
            cells.append((csv.parent / rel, float(prob), cell_type))
        except ValueError:
            raise LinesideError(
                f"{csv} line {line_no} is not 'path probability type': {line!r}; reinstall elpv-dataset"
            ) from None
    return cells


def _version() -> str:
    try:
        return metadata.version("elpv-dataset")
    except metadata.PackageNotFoundError:
        return "unknown"
