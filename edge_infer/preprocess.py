"""The one preprocessing function: host training and the device both call it.

An image as OpenCV decodes it (HxW gray, HxWx3 BGR, uint8) becomes the model input the
exported graph takes: uint8 CxHxW, RGB when the model has three channels. Normalisation
(mean/std) is inside the graph, so nothing else can drift between host and device.
OpenCV does the resizing where it imports; without it, edge_infer/imaging.py's NumPy twin
gives every pixel within 1 grey level of OpenCV's (tested; docs/runtime.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import LinesideError
from .imageio import read_image
from .imaging import bgr_to_gray, bgr_to_rgb, gray_to_bgr, resize


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: its resolution, channel count and the crop before resizing."""

    height: int = 224
    width: int = 224
    channels: int = 3
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in source pixels

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise LinesideError(f"input channels must be 1 or 3, got {self.channels}")
        if self.height < 8 or self.width < 8:
            raise LinesideError(f"input size {self.width}x{self.height} is too small: use at least 8x8")
        if self.roi is not None:
            object.__setattr__(self, "roi", tuple(int(v) for v in self.roi))
            if len(self.roi) != 4 or self.roi[2] <= 0 or self.roi[3] <= 0:
                raise LinesideError(f"ROI must be x, y, width, height with positive size, got {self.roi}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["roi"] = list(self.roi) if self.roi else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        roi = d.get("roi")
        return cls(int(d["height"]), int(d["width"]), int(d["channels"]), tuple(roi) if roi else None)


def station_spec(spec: InputSpec, roi) -> InputSpec:
    """The bundle's input spec with the station's ROI (x, y, width, height), when it has one.

    The one place a station's crop is applied: `serve` (pipeline.Model) and `calibrate`
    both score through it, so thresholds are set on the crops the line scores.
    """
    return replace(spec, roi=tuple(int(v) for v in roi)) if roi else spec


def preprocess(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HxW or HxWx3 (BGR) uint8 → CxHxW uint8 at the spec's resolution."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise LinesideError(
            f"preprocess takes uint8 HxW or HxWx3 images, got {image.dtype} {image.shape}: "
            "decode with edge_infer.imageio first"
        )
    if spec.roi is not None:
        image = crop(image, spec.roi)
    image = resize(image, spec.width, spec.height, area=_shrinking(image, spec))
    if spec.channels == 3:
        image = gray_to_bgr(image) if image.ndim == 2 else bgr_to_rgb(image)  # gray: the same in RGB
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    if image.ndim == 3:
        image = bgr_to_gray(image)
    return np.ascontiguousarray(image[None])


def preprocess_batch(images: list[np.ndarray], spec: InputSpec) -> np.ndarray:
    return np.stack([preprocess(im, spec) for im in images])


def load_inputs(paths, spec: InputSpec) -> tuple[np.ndarray, list[int]]:
    """Model inputs (N×C×H×W) for image files, and the indices of those that were readable.

    For checks that need a handful of real images (parity, calibration sets): unreadable
    files are left out here; the data loaders are where they are reported by path.
    """
    arrays, kept = [], []
    for i, path in enumerate(paths):
        try:
            arrays.append(preprocess(read_image(path), spec))
        except LinesideError:
            continue
        kept.append(i)
    if not arrays:
        return np.zeros((0, spec.channels, spec.height, spec.width), np.uint8), kept
    return np.stack(arrays), kept


def crop(image: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = roi
    H, W = image.shape[:2]
    if x < 0 or y < 0 or x + w > W or y + h > H:
        raise LinesideError(
            f"ROI x={x} y={y} w={w} h={h} lies outside the {W}x{H} image: fix the station's ROI"
        )
    return image[y : y + h, x : x + w]


def _shrinking(image: np.ndarray, spec: InputSpec) -> bool:
    """INTER_AREA when shrinking along either axis (no aliasing), INTER_LINEAR otherwise."""
    return image.shape[0] > spec.height or image.shape[1] > spec.width
