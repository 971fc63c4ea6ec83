"""Reading images from files and from wire payloads, with errors that name the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ImageReadError
from .imaging import decode

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def decode_image(data: bytes, source: str = "<payload>") -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...) as OpenCV does: HxW gray or HxWx3 BGR (edge_infer/imaging.py)."""
    if not data:
        raise ImageReadError(source, "empty file or payload")
    image = decode(data)
    if image is None:
        raise ImageReadError(source, "not a decodable image (corrupt or unsupported format)")
    return normalise_layout(image, source)


def read_image(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from None
    return decode_image(data, str(path))


def normalise_layout(image: np.ndarray, source: str = "<array>") -> np.ndarray:
    """Bring any decoded image to uint8 HxW (gray) or HxWx3 (BGR).

    16-bit images keep their top 8 bits; an alpha channel is dropped. Anything else
    (2 channels, float data, 1-D arrays) is refused with the reason.
    """
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ImageReadError(source, f"unsupported shape {image.shape}: expected HxW gray or HxWx3 colour")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.dtype != np.uint8:
        raise ImageReadError(source, f"unsupported pixel type {image.dtype}: expected 8- or 16-bit")
    if min(image.shape[:2]) < 2:
        raise ImageReadError(source, f"image of {image.shape[1]}x{image.shape[0]} pixels is too small")
    return image


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside a folder, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
