"""Scoring the calibration images through a bundle, on the backend the line uses.

Good images come from one folder; defects from a folder of defect images or an
MVTec-layout ``test/`` folder, whose non-``good`` class folders hold the defects.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_infer.bundle import Thresholds
from edge_infer.errors import LinesideError
from edge_infer.imageio import IMAGE_SUFFIXES, list_images
from edge_infer.score import Scorer


@dataclass
class ScoreSet:
    """Scores (and optionally anomaly maps) of one set of images; unreadable ones listed apart."""

    scores: np.ndarray
    sources: list[str]
    maps: list[np.ndarray] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    classes: dict[str, int] = field(default_factory=dict)


def good_images(folder: str | Path) -> list[Path]:
    """Images of a good folder (or of its ``good/`` subfolder, MVTec's ``train/`` layout)."""
    folder = existing_folder(folder, "--good")
    paths = list_images(folder)
    if not paths and (folder / "good").is_dir():
        paths = list_images(folder / "good")
    if not paths:
        raise LinesideError(f"good folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): "
                            "give the folder of good images from this station")
    return paths


def defect_images(folder: str | Path) -> tuple[list[Path], dict[str, int]]:
    """Defect images: the folder's own images, or those of every class folder but ``good``."""
    folder = existing_folder(folder, "--defects")
    paths = list_images(folder)
    if paths:
        return paths, {folder.name: len(paths)}
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "good"):
        found = list_images(sub)
        if found:
            classes[sub.name] = len(found)
            paths.extend(found)
    if not paths:
        raise LinesideError(f"defect folder {folder} holds no images, nor class folders of images besides "
                            "`good`: give a folder of defect images or an MVTec-layout test/ folder")
    return paths, classes


def existing_folder(folder: str | Path, option: str) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise LinesideError(f"{option} {folder} is not a folder: give a folder of images")
    return folder


def score_images(scorer: Scorer, paths: list[Path], label: str, keep_maps: bool = False) -> ScoreSet:
    """Score images in the backend's batches, with a progress bar on stderr."""
    from tqdm import tqdm

    # an infinite threshold makes every readable image OK, so ERROR means unreadable or non-finite
    scorer.thresholds = Thresholds(image=float("inf"))
    scores, sources, maps, errors = [], [], [], []
    bar = tqdm(total=len(paths), desc=f"scoring {label}", unit="img", file=sys.stderr, mininterval=0.5,
               dynamic_ncols=True)
    with bar:
        for scored in scorer.score_paths(paths, batch=scorer.backend.max_batch, keep_maps=keep_maps):
            bar.update(1)
            if scored.verdict.status == "ERROR":
                errors.append((scored.source, scored.verdict.reason))
                continue
            scores.append(scored.verdict.score)
            sources.append(scored.source)
            if keep_maps:
                maps.append(scored.anomaly_map.reshape(scored.anomaly_map.shape[-2:]).astype(np.float32))
    if errors:
        print(f"calibrate: {len(errors)} {label} images could not be scored and are left out, e.g. "
              f"{errors[0][0]}: {errors[0][1]}", file=sys.stderr)
    if not scores:
        raise LinesideError(f"none of the {len(paths)} {label} images could be scored (first: {errors[0][0]}: "
                            f"{errors[0][1]}): check the files with `lineside score`")
    return ScoreSet(np.asarray(scores, dtype=np.float64), sources, maps, errors)


def write_scores(path: Path, sets: dict[str, ScoreSet | None]) -> None:
    """Every image's score as CSV (set, source, score): which good image scored highest, and why."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["set", "source", "score"])
        for name, scored in sets.items():
            for source, score in zip(scored.sources, scored.scores) if scored else ():
                writer.writerow([name, source, repr(float(score))])


def read_scores(path: Path) -> dict[str, np.ndarray]:
    """scores.csv (from write_scores) → {'good': scores, 'defect': scores}."""
    if not path.is_file():
        raise LinesideError(f"{path} does not exist: give the --out folder of an earlier `lineside calibrate` run")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    try:
        return {name: np.array([float(r["score"]) for r in rows if r["set"] == name]) for name in ("good", "defect")}
    except (KeyError, ValueError) as exc:
        raise LinesideError(f"{path} is not a calibration scores file ({exc}): score the images again") from None
