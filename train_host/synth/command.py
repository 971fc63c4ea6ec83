"""`lineside synth`: write synthetic anomalies and their masks to a folder for a person to look at."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge_infer.errors import LinesideError
from edge_infer.preprocess import read_input

from . import KINDS, synthesize_set


def main(args) -> int:
    from ..data import load_split
    from ..train import input_spec

    spec = input_spec(args)
    kinds = tuple(args.kinds.split(",")) if args.kinds else tuple(k for k in KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise LinesideError(f"unknown anomaly kind(s) {unknown}: choose from {', '.join(KINDS)}")
    split = load_split(args.data, seed=args.seed)
    images = [read_input(s.path, spec)[0] for s in split.train[: args.sources]]
    samples = synthesize_set(images, per_kind=args.per_kind, kinds=kinds, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for s in samples:
        n = counts[s.kind] = counts.get(s.kind, -1) + 1
        stem = out / f"{s.kind}_{n:03d}"
        write(stem.with_suffix(".png"), s.image)
        cv2.imwrite(f"{stem}_mask.png", s.mask.astype(np.uint8) * 255)
        write(Path(f"{stem}_overlay.png"), overlay(s.image, s.mask))
    print(f"wrote {len(samples)} anomalies ({', '.join(f'{k}: {v + 1}' for k, v in counts.items())}) "
          f"with masks and overlays to {out}, made from {len(images)} good images of {split.name}")
    return 0


def write(path: Path, chw: np.ndarray) -> None:
    hwc = chw.transpose(1, 2, 0)
    cv2.imwrite(str(path), cv2.cvtColor(hwc, cv2.COLOR_RGB2BGR) if hwc.shape[2] == 3 else hwc[..., 0])


def overlay(chw: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask's outline drawn in red, so the mask can be checked by eye."""
    rgb = np.repeat(chw, 3, axis=0) if chw.shape[0] == 1 else chw.copy()
    hwc = np.ascontiguousarray(rgb.transpose(1, 2, 0))
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(hwc, contours, -1, (255, 0, 0), 1)
    return hwc.transpose(2, 0, 1)
