"""The image operations the runtime needs, through OpenCV when it imports and NumPy + Pillow otherwise.

OpenCV is optional on a device: JetPack brings its own (with GStreamer), a line PC may have
none. Training hosts always have it (the ``train`` extra), so the model's input was made
by OpenCV. Without it, the functions here reproduce OpenCV's arithmetic in NumPy:

- colour conversions are bit-exact (the same fixed-point weights);
- ``resize`` follows OpenCV's INTER_AREA / INTER_LINEAR sampling, rounded once from
  float: every pixel within 1 grey level of OpenCV's (OpenCV's own fixed-point and
  SIMD paths differ by as much between x86 and ARM builds);
- decoding goes through Pillow's libjpeg-turbo / libpng; PNG is lossless and identical, a
  JPEG decodes within a few grey levels (different IDCT builds).

tests/runtime/test_imaging.py holds these bounds against OpenCV on random images, sizes
and real JPEGs, and the score of a bundle within its stated tolerance (docs/runtime.md).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np

from .errors import LinesideError

OPENCV_HINT = ("install JetPack's OpenCV (`apt install python3-opencv`, GStreamer included) "
               "or PyPI's (`pip install \"lineside[opencv]\"`)")


@lru_cache(maxsize=1)
def opencv():
    """The cv2 module when one imports here (JetPack's or a wheel), else None."""
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def warm_up() -> None:
    """Import the codec now (OpenCV, else Pillow), so that the first frame does not pay for it."""
    if opencv() is None:
        import PIL.Image  # noqa: F401


def require_opencv(what: str):
    cv2 = opencv()
    if cv2 is None:
        raise LinesideError(f"{what} needs OpenCV, which is not installed here: {OPENCV_HINT}")
    return cv2


def opencv_builds_with(feature: str) -> bool | None:
    """Whether this OpenCV was built with ``feature`` ("GStreamer", "NVIDIA CUDA", ...), as its
    build information says; None without OpenCV or when the build information does not say."""
    cv2 = opencv()
    if cv2 is None:
        return None
    for line in cv2.getBuildInformation().splitlines():
        name, _, value = line.strip().partition(":")
        if name.strip() == feature:
            return value.strip().upper().startswith("YES")
    return None


# ---- codecs ---------------------------------------------------------------------------
def decode(data, reduce: int = 1, gray: bool = False) -> np.ndarray | None:
    """Decode an encoded image as OpenCV's IMREAD_UNCHANGED does (BGR order); None if undecodable.

    ``data``: bytes or any buffer (a memoryview of a received frame is not copied).
    ``reduce`` 2, 4 or 8 (JPEG): decode at that scale in the DCT domain, as colour BGR or, with
    ``gray``, as luma: OpenCV's IMREAD_REDUCED_* where it imports, Pillow's ``draft`` otherwise
    (both are libjpeg's scaled IDCT; EXIF orientation ignored, as IMREAD_UNCHANGED does).
    """
    if reduce not in (1, 2, 4, 8):
        raise LinesideError(f"cannot decode at 1/{reduce} scale: JPEG scales are 1/2, 1/4 and 1/8")
    cv2 = opencv()
    if cv2 is not None:
        return cv2.imdecode(np.frombuffer(data, np.uint8), _opencv_flags(cv2, reduce, gray))
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            if reduce > 1:
                return _pillow_reduced(im, reduce, gray)
            im.load()
            return _pillow_to_array(im)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        return None  # Pillow's ways to say "corrupt", "truncated" or "too many pixels to be a frame"


def _opencv_flags(cv2, reduce: int, gray: bool) -> int:
    if reduce == 1:
        return cv2.IMREAD_UNCHANGED
    name = f"IMREAD_REDUCED_{'GRAYSCALE' if gray else 'COLOR'}_{reduce}"
    return getattr(cv2, name) | cv2.IMREAD_IGNORE_ORIENTATION


def _pillow_reduced(im, reduce: int, gray: bool) -> np.ndarray:
    """libjpeg's scaled decode through ``draft`` (a size of w//reduce x h//reduce makes it pick
    exactly 1/reduce); other formats decode whole and shrink, as OpenCV does (its sizes)."""
    w, h = im.size
    if im.format == "JPEG" and w >= reduce and h >= reduce:
        im.draft("L" if gray else "RGB", (w // reduce, h // reduce))
        im.load()
        image = _pillow_to_array(im)
    else:
        im.load()
        image = _pillow_to_array(im)
        image = resize(image, w // reduce, h // reduce, area=False)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[..., :3]
    if gray and image.ndim == 3:
        return bgr_to_gray(image)
    if not gray and image.ndim == 2:
        return gray_to_bgr(image)
    return image


def _pillow_to_array(im) -> np.ndarray:
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im).astype(np.uint16)
    if im.mode in ("L", "I", "F"):  # 32-bit int and float stay as they are: normalise_layout refuses them
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    if im.mode in ("LA", "La"):  # OpenCV makes gray + alpha a colour image, alpha dropped below
        im = im.convert("RGB")
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode not in ("RGB", "RGBA"):  # CMYK, YCbCr, RGBX, ...
        im = im.convert("RGB")
    array = np.asarray(im)
    return np.ascontiguousarray(array[..., [2, 1, 0, 3]] if im.mode == "RGBA" else array[..., ::-1])


def encode(image: np.ndarray, kind: str, quality: int = 90) -> bytes:
    """A uint8 HxW or HxWx3 (BGR) image as JPEG or PNG bytes."""
    if kind not in ("jpeg", "png"):
        raise LinesideError(f"unknown image encoding {kind!r}: choose jpeg or png")
    cv2 = opencv()
    if cv2 is not None:
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if kind == "jpeg" else []
        ok, buf = cv2.imencode(".jpg" if kind == "jpeg" else ".png", image, params)
        if not ok:
            raise LinesideError(f"OpenCV could not encode a {image.dtype} {image.shape} image as {kind}")
        return buf.tobytes()
    from PIL import Image

    rgb = image if image.ndim == 2 else np.ascontiguousarray(image[..., ::-1])
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG" if kind == "jpeg" else "PNG",
                              **({"quality": int(quality)} if kind == "jpeg" else {}))
    return out.getvalue()


# ---- colour ---------------------------------------------------------------------------
# OpenCV's cvtColor where it imports: bit-exact with the NumPy twins below, and 30-50x faster
# on a model-size image (one SIMD pass instead of NumPy's strided copies; docs/runtime.md).
def bgr_to_rgb(image: np.ndarray) -> np.ndarray:
    cv2 = opencv()
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if cv2 is not None else bgr_to_rgb_numpy(image)


def gray_to_bgr(image: np.ndarray) -> np.ndarray:
    cv2 = opencv()
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if cv2 is not None else gray_to_bgr_numpy(image)


def bgr_to_gray(image: np.ndarray) -> np.ndarray:
    cv2 = opencv()
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if cv2 is not None else bgr_to_gray_numpy(image)


def bgr_to_rgb_numpy(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(image[..., ::-1])


def gray_to_bgr_numpy(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[..., None], 3, axis=2)


def bgr_to_gray_numpy(image: np.ndarray) -> np.ndarray:
    """OpenCV's COLOR_BGR2GRAY for uint8, bit-exact: its 15-bit fixed-point BT.601 weights."""
    b, g, r = (image[..., i].astype(np.int32) for i in range(3))
    return ((b * 3735 + g * 19235 + r * 9798 + (1 << 14)) >> 15).astype(np.uint8)


# ---- resize ---------------------------------------------------------------------------
def resize(image: np.ndarray, width: int, height: int, area: bool) -> np.ndarray:
    """OpenCV's ``resize`` with INTER_AREA (``area``) or INTER_LINEAR, for uint8 HxW or HxWxC images."""
    cv2 = opencv()
    if cv2 is not None:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    return resize_numpy(image, width, height, area)


def halve(image: np.ndarray) -> np.ndarray:
    """Each 2x2 block's mean, rounded half up: OpenCV's INTER_AREA for an exact factor of 2 (its
    SIMD fast path, (a+b+c+d+2)>>2), and the same integers in NumPy without it. Sides must be even."""
    h, w = image.shape[:2]
    cv2 = opencv()
    if cv2 is not None:
        return cv2.resize(image, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    s = image.astype(np.uint16)
    s = s[0::2] + s[1::2]
    s = s[:, 0::2] + s[:, 1::2]
    return ((s + 2) >> 2).astype(np.uint8)


def resize_numpy(image: np.ndarray, width: int, height: int, area: bool) -> np.ndarray:
    """The NumPy twin of OpenCV's resize (see the module docstring for how close it is)."""
    src_h, src_w = image.shape[:2]
    out = image
    # OpenCV filters boxes only when it shrinks along both axes; otherwise INTER_AREA is a 2-tap filter
    boxes = area and src_h >= height and src_w >= width
    for axis, (src, dst) in enumerate(((src_h, height), (src_w, width))):
        if src == dst:
            continue
        out = _box_axis(out, axis, src, dst) if boxes else _two_tap_axis(out, axis, src, dst, area)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8) if out is not image else image.copy()


def _box_axis(x: np.ndarray, axis: int, src: int, dst: int) -> np.ndarray:
    """Area average of each destination pixel's footprint: the whole source pixels inside it plus
    the covered fractions of the two at its edges (boxes are at least one pixel: src >= dst)."""
    scale = src / dst
    k = np.arange(dst + 1, dtype=np.int64)
    whole, frac = (k * src) // dst, (k * src) % dst / dst  # the edges k*src/dst, exactly
    inside = np.add.reduceat(x, whole[:-1], axis=axis, dtype=np.float64)  # [whole_k, whole_k+1)
    shape = [1] * x.ndim
    shape[axis] = dst + 1
    partial = np.take(x, np.minimum(whole, src - 1), axis=axis) * frac.reshape(shape)
    head = [slice(None)] * x.ndim
    tail = list(head)
    head[axis], tail[axis] = slice(1, None), slice(None, -1)
    return (inside + partial[tuple(head)] - partial[tuple(tail)]) / scale


def _two_tap_axis(x: np.ndarray, axis: int, src: int, dst: int, area: bool) -> np.ndarray:
    """OpenCV's linear sampling (half-pixel centres, clamped); INTER_AREA's variant when enlarging."""
    # OpenCV's own double/float steps, so positions at exact boundaries fall on the same side
    inv_scale = dst / src
    scale = 1.0 / inv_scale
    d = np.arange(dst, dtype=np.float64)
    if area:
        left = np.floor(d * scale).astype(np.int64)
        f = ((d + 1) - (left + 1) * inv_scale).astype(np.float32)
        f = np.where(f <= 0, np.float32(0), f - np.floor(f)).astype(np.float64)
    else:
        pos = ((d + 0.5) * scale - 0.5).astype(np.float32)
        left = np.floor(pos).astype(np.int64)
        f = (pos - left).astype(np.float64)
    f = np.where(left < 0, 0.0, f)
    left = np.clip(left, 0, src - 1)
    f = np.where(left >= src - 1, 0.0, f)
    right = np.minimum(left + 1, src - 1)
    shape = [1] * x.ndim
    shape[axis] = dst
    f = f.reshape(shape)
    return np.take(x, left, axis=axis) * (1 - f) + np.take(x, right, axis=axis) * f


# ---- regions --------------------------------------------------------------------------
def connected_components(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected components of a 0/1 uint8 mask: (labels, stats) as OpenCV's
    connectedComponentsWithStats gives them (label 0 = background; stats rows x, y, w, h, area)."""
    cv2 = opencv()
    if cv2 is not None:
        _, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        return labels, stats
    return connected_components_numpy(mask)


def connected_components_numpy(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over each row's runs (anomaly masks have few): labels in raster order of first pixel."""
    h, w = mask.shape
    padded = np.zeros((h, w + 2), np.int8)
    padded[:, 1:-1] = mask != 0
    rows, cols = np.nonzero(np.diff(padded, axis=1))
    starts, ends, run_rows = cols[0::2], cols[1::2], rows[0::2]  # [start, end) per run, in raster order
    parent = list(range(len(starts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(run_rows, np.arange(h + 1))
    for r in range(1, h):
        above = range(row_first[r - 1], row_first[r])
        j0 = above.start
        for i in range(row_first[r], row_first[r + 1]):
            for j in range(j0, above.stop):  # runs of the row above touching this one (diagonals too)
                if ends[j] < starts[i]:
                    j0 = j + 1
                    continue
                if starts[j] > ends[i]:
                    break
                a, b = root(i), root(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the smaller index comes first in raster order
    roots = np.array([root(i) for i in range(len(starts))], np.int64)
    unique, run_label = np.unique(roots, return_inverse=True)
    run_label = run_label.reshape(-1) + 1
    labels = np.zeros((h, w), np.int32)
    stats = np.zeros((len(unique) + 1, 5), np.int32)
    background = padded[:, 1:-1] == 0
    if background.any():
        ys, xs = np.nonzero(background.any(axis=1))[0], np.nonzero(background.any(axis=0))[0]
        stats[0] = (xs[0], ys[0], xs[-1] - xs[0] + 1, ys[-1] - ys[0] + 1, int(background.sum()))
    for k in range(1, len(unique) + 1):
        mine = run_label == k
        r, s, e = run_rows[mine], starts[mine], ends[mine]
        x0, y0 = int(s.min()), int(r.min())
        stats[k] = (x0, y0, int(e.max()) - x0, int(r.max()) - y0 + 1, int((e - s).sum()))
    for r, s, e, k in zip(run_rows, starts, ends, run_label):
        labels[r, s:e] = k
    return labels, stats


# ---- pictures for people ----------------------------------------------------------------
def colormap_jet(gray: np.ndarray) -> np.ndarray:
    """A uint8 map in JET colours (BGR), as OpenCV's COLORMAP_JET paints it."""
    cv2 = opencv()
    if cv2 is not None:
        return cv2.applyColorMap(gray, cv2.COLORMAP_JET)
    v = gray.astype(np.float32) / 255.0
    r = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
    g = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
    b = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
    return (np.stack([b, g, r], axis=-1) * 255 + 0.5).astype(np.uint8)
