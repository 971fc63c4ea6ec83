"""Reading images from files and from wire payloads, with errors that name the file.

JPEG streams can be decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled
IDCT, OpenCV's ``IMREAD_REDUCED_*``); ``edge_infer.preprocess.plan`` decides when. When
nvImageCodec (``pip install nvidia-nvimgcodec-cu12``) is installed and a GPU answers, JPEGs are
decoded there instead, behind the same ``decode_image``; anything it refuses falls back
to the CPU path.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from pathlib import Path

import numpy as np

from .errors import ImageReadError
from .imaging import bgr_to_gray, bgr_to_rgb, decode, resize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def decode_image(data, source: str = "<payload>", reduce: int = 1, gray: bool = False) -> np.ndarray:
    """Decode an encoded image (PNG, JPEG, ...) as OpenCV does: HxW gray or HxWx3 BGR (edge_infer/imaging.py).

    ``data``: bytes or any buffer (a memoryview of a received ZeroMQ frame: not copied).
    ``reduce`` (JPEG only): decode at 1/2, 1/4 or 1/8 scale in the DCT domain, as colour BGR
    or, with ``gray``, as the JPEG's luma.
    """
    if not memoryview(data).nbytes:
        raise ImageReadError(source, "empty file or payload")
    if reduce not in (1, 2, 4, 8):
        raise ImageReadError(source, f"cannot decode at 1/{reduce} scale: JPEG scales are 1/2, 1/4 and 1/8")
    image = _gpu_decode(data, reduce, gray)
    if image is None:
        image = decode(data, reduce, gray)
    if image is None:
        raise ImageReadError(source, "not a decodable image (corrupt or unsupported format)")
    return normalise_layout(image, source)


def read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ImageReadError(path, exc.strerror or str(exc)) from None


def read_image(path: str | Path) -> np.ndarray:
    return decode_image(read_bytes(path), str(path))


def jpeg_dimensions(data) -> tuple[int, int] | None:
    """(height, width) a JPEG stream declares in its frame header, read without decoding;
    None when ``data`` is not a JPEG stream with a readable header."""
    data = memoryview(data).cast("B")
    if len(data) < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    for _ in range(512):  # a JPEG reaches its frame header within a few markers
        if i + 9 > len(data) or data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return h, w
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if length < 2:
            return None
        i += 2 + length
    return None


# ---- GPU JPEG decode (nvImageCodec), optional -------------------------------------------
_gpu = threading.local()
GPU_DECODE_ENV = "LINESIDE_GPU_DECODE"  # "0" keeps decoding on the CPU even with nvImageCodec installed


def gpu_decoder():
    """This thread's nvImageCodec decoder, or None when nvImageCodec or a GPU is missing (or
    LINESIDE_GPU_DECODE=0). Decided once per thread; the reason is logged once."""
    if not hasattr(_gpu, "decoder"):
        _gpu.decoder = None
        if os.environ.get(GPU_DECODE_ENV, "1") == "0":
            return None
        try:
            from nvidia import nvimgcodec

            _gpu.decoder = nvimgcodec.Decoder()
            _gpu.params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.RGB,
                                                   apply_exif_orientation=False)
        except Exception as exc:  # noqa: BLE001  not installed, no driver, no device: the CPU decodes
            logging.getLogger(__name__).debug("GPU JPEG decode unavailable (%s): decoding on the CPU", exc)
    return _gpu.decoder


def _gpu_decode(data, reduce: int, gray: bool) -> np.ndarray | None:
    """A JPEG decoded by nvJPEG (full size; then the DCT scale's box mean), as BGR or gray; None
    to let the CPU decode (no GPU decoder, not a JPEG, or a stream nvJPEG refuses)."""
    decoder = gpu_decoder()
    if decoder is None or jpeg_dimensions(data) is None:
        return None
    try:
        decoded = decoder.decode(bytes(data), params=_gpu.params)
        if decoded is None:
            return None
        rgb = np.asarray(decoded.cpu())
    except Exception:  # noqa: BLE001  nvJPEG refuses some streams (lossless, 12-bit): the CPU tries them
        return None
    image = bgr_to_rgb(rgb)  # the same channel flip turns RGB into BGR
    if gray:
        image = bgr_to_gray(image)
    if reduce > 1:  # libjpeg's scaled IDCT is close to a box mean over reduce×reduce pixels
        h, w = image.shape[:2]
        image = resize(image, -(-w // reduce), -(-h // reduce), area=True)
    return image


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
