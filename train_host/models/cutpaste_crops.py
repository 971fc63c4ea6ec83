"""Real defect crops as a third Cut&Paste source (``--defect-crops DIR``).

DIR holds defect images with masks in the MVTec convention the data loaders read: an image
``X.png`` with its mask ``X_mask.png`` beside it, or, when DIR is an MVTec AD category's
``test/<defect>/`` folder, the mask ``ground_truth/<defect>/X_mask.png`` (or ``X.png``)
of that category. Each crop is the image preprocessed to the model's input spec (the data
loader's `edge_infer.preprocess` path) and its mask in the same geometry (`read_mask`'s).
Images without a mask, unreadable ones and ones whose mask vanishes at the input size are
reported by path and skipped.

A crop file that is also in the run's test set or its ``--val-defects`` is refused: pasting
it into training would teach the network the very images it is evaluated or validated on.

`crop_bank` turns each crop into the patches the synthesis pastes: the crop's own mask and
pixels, turned by each footprint angle and scaled so the turned mask's long side matches
each footprint scale (the same meaning the ellipses' scale has).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from edge_infer.errors import LinesideError
from edge_infer.imageio import list_images
from edge_infer.preprocess import InputSpec

from ..data.mvtec import MASK_SUFFIXES, find_mask
from ..data.records import Sample, Split

KEEP_COVERAGE = 0.25  # a resampled pixel is defect where its coverage is ≥ this share of the strongest one


@dataclass
class DefectCrops:
    images: torch.Tensor  # uint8 M×C×H×W, in the model's input geometry
    masks: torch.Tensor  # bool M×1×H×W, the same geometry
    paths: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def record(self, folder: str | Path) -> dict:
        return {"folder": str(folder), "used": len(self.paths), "skipped": len(self.skipped),
                "skipped_files": [f"{p} ({r})" for p, r in self.skipped[:20]]}


def load_defect_crops(folder: str | Path, spec: InputSpec, split: Split, log=print) -> DefectCrops:
    """The usable crops of ``folder``, in the model's geometry; refuses test / validation images."""
    from train_host.data.loader import make_loader

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise LinesideError(f"--defect-crops {folder} is not a folder: give a folder of defect images with "
                            "masks (X.png + X_mask.png, or an MVTec category's test/<defect>/)")
    samples, skipped = crop_samples(folder)
    refuse_leakage(samples, split)
    images, masks, paths = [], [], []
    loader = make_loader(samples, spec, batch_size=32)
    try:
        batches = list(loader)
    except LinesideError:  # every image unreadable: loader.skipped names them, the error below the fix
        batches = []
    skipped += loader.skipped
    for batch in batches:
        for image, mask, index in zip(batch["image"], batch["mask"], batch["index"]):
            path = str(samples[int(index)].path)
            if not mask.any():
                skipped.append((path, f"its mask is empty at the model's input size {spec.height}x{spec.width}"))
                continue
            images.append(image)
            masks.append(mask.bool())
            paths.append(path)
    for path, reason in skipped:
        log(f"cutpaste: defect crop skipped: {path}: {reason}")
    if not images:
        raise LinesideError(
            f"--defect-crops {folder}: no usable defect crop ({len(skipped)} skipped"
            + (f", first: {skipped[0][0]}: {skipped[0][1]}" if skipped else ", no images found") + "): "
            "put defect images there with a mask each (X.png + X_mask.png, white = defect), or point at an "
            "MVTec AD category's test/<defect>/ folder (masks in ground_truth/<defect>/)")
    return DefectCrops(torch.stack(images), torch.stack(masks), paths, skipped)


def crop_samples(folder: Path) -> tuple[list[Sample], list[tuple[str, str]]]:
    """(defect samples with their masks, (path, reason) for images without one)."""
    # an MVTec AD category's test/<defect>/: masks live in the category's ground_truth/<defect>/
    ground_truth = folder.parent.parent / "ground_truth" / folder.name if folder.parent.name == "test" else None
    samples, skipped = [], []
    for path in list_images(folder):
        if path.stem.endswith("_mask"):
            continue  # a mask beside its image
        mask = next((m for m in (folder / f"{path.stem}_mask{s}" for s in MASK_SUFFIXES) if m.is_file()), None)
        if mask is None and ground_truth is not None:
            mask = find_mask(ground_truth, path.stem)
        if mask is None:
            where = f" or {ground_truth}/{path.stem}_mask.png" if ground_truth is not None else ""
            skipped.append((str(path), f"no mask: expected {folder}/{path.stem}_mask.png{where}"))
            continue
        samples.append(Sample(path, 1, folder.name, mask))
    return samples, skipped


def refuse_leakage(samples: list[Sample], split: Split) -> None:
    """LinesideError when a crop file is also a test or validation-defect image of the run."""
    held = {Path(s.path).resolve(): "test set" for s in split.test}
    held.update({Path(s.path).resolve(): "--val-defects" for s in split.val_defects})
    leaks = [(s.path, held[Path(s.path).resolve()]) for s in samples if Path(s.path).resolve() in held]
    if leaks:
        listed = "; ".join(f"{p} (in the {where})" for p, where in leaks[:5])
        raise LinesideError(
            f"--defect-crops: {len(leaks)} crop image(s) are also images this run is evaluated or validated on "
            f"({listed}): pasting them into training would leak them into the model. Point --defect-crops at "
            "defects outside --data's test set (e.g. a separate folder of labelled defects)")


def crop_bank(crops: DefectCrops, scales, angles, side: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pixels uint8 M×S×A×C×K×K, masks bool M×S×A×K×K): each crop turned by every angle and scaled
    so its mask's long side is round(scale × side), centred in a K×K patch; pixels are 0 outside the mask."""
    m, c = crops.images.shape[:2]
    pixels = np.zeros((m, len(scales), len(angles), c, k, k), np.uint8)
    masks = np.zeros((m, len(scales), len(angles), k, k), bool)
    for i, (image, mask) in enumerate(zip(crops.images.numpy(), crops.masks[:, 0].numpy())):
        for a, angle in enumerate(angles):
            turned = turn(image.transpose(1, 2, 0).astype(np.float32), mask.astype(np.float32), angle)
            for s, scale in enumerate(scales):
                pixels[i, s, a], masks[i, s, a] = fit_patch(*turned, max(1, round(scale * side)), k)
    return torch.from_numpy(pixels), torch.from_numpy(masks)


def turn(image: np.ndarray, mask: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """(mask-weighted pixels H×W×C, coverage H×W) of the crop's mask bounding box, turned by ``angle``°.

    Pixels are carried multiplied by the mask, so resampling never mixes in the crop image's
    background: a pasted pixel is a weighted mean of the crop's own defect pixels."""
    ys, xs = np.nonzero(mask)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    weighted = image[top:bottom, left:right] * mask[top:bottom, left:right, None]
    coverage = mask[top:bottom, left:right]
    if angle % 360 == 0:
        return weighted, coverage
    h, w = coverage.shape
    d = math.ceil(math.hypot(h, w)) + 2  # a canvas the turned box fits in
    # clockwise on screen, as cv2.ellipse turns the ellipse footprints (getRotationMatrix2D's is anticlockwise)
    matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), -angle, 1.0)
    matrix[:, 2] += ((d - w) / 2, (d - h) / 2)
    weighted = cv2.warpAffine(weighted, matrix, (d, d), flags=cv2.INTER_LINEAR).reshape(d, d, -1)
    coverage = cv2.warpAffine(coverage, matrix, (d, d), flags=cv2.INTER_LINEAR)
    return cut(weighted, coverage)


def fit_patch(weighted: np.ndarray, coverage: np.ndarray, long_side: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale so the long side is ``long_side`` and centre in K×K: (pixels uint8 C×K×K, mask bool K×K)."""
    h, w = coverage.shape
    f = long_side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    if size != (w, h):  # area resampling keeps thin defects (cracks) when shrinking
        weighted = cv2.resize(weighted, size, interpolation=cv2.INTER_AREA).reshape(size[1], size[0], -1)
        coverage = cv2.resize(coverage, size, interpolation=cv2.INTER_AREA)
    keep = coverage >= KEEP_COVERAGE * coverage.max()
    values = np.where(keep[..., None], weighted / np.maximum(coverage, 1e-6)[..., None], 0)
    pixels, mask = np.zeros((weighted.shape[2], k, k), np.uint8), np.zeros((k, k), bool)
    nh, nw = keep.shape
    top, left = k // 2 - nh // 2, k // 2 - nw // 2
    pixels[:, top:top + nh, left:left + nw] = np.clip(np.round(values), 0, 255).transpose(2, 0, 1)
    mask[top:top + nh, left:left + nw] = keep
    return pixels, mask


def cut(weighted: np.ndarray, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(coverage > 1e-3)
    box = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    return weighted[box], coverage[box]
