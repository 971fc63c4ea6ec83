"""The one preprocessing path: host training, export, calibration and the device all call it.

An image as OpenCV decodes it (HxW gray, HxWx3 BGR, uint8) becomes the model input the
exported graph takes: uint8 CxHxW, RGB when the model has three channels. Normalisation
(mean/std) is inside the graph, so nothing else can drift between host and device.

How a frame is brought down to the model's size is decided by ``plan`` alone: a JPEG is
decoded at 1/2, 1/4 or 1/8 scale in its DCT domain when the ROI keeps at least the model's
pixels at that scale, the (scaled) ROI is cropped, an integer-factor box shrink (halvings
through OpenCV's SIMD 2x2 path, then INTER_AREA for an odd rest) takes it close to the model
size, and one last resize
makes the model size. ``read_input`` (files) and ``decode_input`` (payloads) follow the plan
from encoded bytes; ``preprocess`` follows it for an image already decoded at full size.

A spec with ``tiles`` (edge_infer/tiling.py) is brought the same way to its canvas instead:
the ROI at the scale where one tile is the model's size. ``tile_inputs`` cuts a canvas into
the tiles the graph scores; ``Backend.run_frames`` scores and stitches them back.

Decoding and resizing go through edge_infer/imaging.py: OpenCV where it imports; without it,
Pillow's scaled JPEG decode (``draft``) and a NumPy resize within 1 grey level of OpenCV's
(tested; docs/runtime.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

from .errors import ImageReadError, LinesideError
from .imageio import decode_image, jpeg_dimensions, normalise_layout, read_bytes
from .imaging import bgr_to_gray, bgr_to_rgb, gray_to_bgr, halve, resize
from .tiling import Tiling, boxes, canvas_size, cut

JPEG_SCALES = (8, 4, 2)  # the DCT-domain scales libjpeg decodes at (besides 1)


@dataclass(frozen=True)
class InputSpec:
    """What the model takes: its resolution, channel count and the crop before resizing."""

    height: int = 224
    width: int = 224
    channels: int = 3
    roi: tuple[int, int, int, int] | None = None  # x, y, width, height in source pixels
    # a graph that resizes itself (`lineside export --input native`): it takes uint8 N×H×W×C frames
    # of this (height, width) in the frame's own layout (BGR), and the CPU only crops
    native: tuple[int, int] | None = None
    # tiles for small defects (edge_infer/tiling.py): the ROI is cut into model-size tiles of this many
    # source pixels; the graph scores every tile and the maps are stitched back
    tiles: Tiling | None = None

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise LinesideError(f"input channels must be 1 or 3, got {self.channels}")
        if self.height < 8 or self.width < 8:
            raise LinesideError(f"input size {self.width}x{self.height} is too small: use at least 8x8")
        if self.roi is not None:
            object.__setattr__(self, "roi", tuple(int(v) for v in self.roi))
            if len(self.roi) != 4 or self.roi[2] <= 0 or self.roi[3] <= 0:
                raise LinesideError(f"ROI must be x, y, width, height with positive size, got {self.roi}")
        if self.native is not None:
            object.__setattr__(self, "native", tuple(int(v) for v in self.native))
            if len(self.native) != 2 or self.native[0] < self.height or self.native[1] < self.width:
                raise LinesideError(f"native input {self.native} (height, width) must be at least the model's "
                                    f"{self.height}x{self.width}: the graph only shrinks")
        if isinstance(self.tiles, dict):
            object.__setattr__(self, "tiles", Tiling(**self.tiles))
        if self.tiles is not None:
            if self.native is not None:
                raise LinesideError("a native-input graph cannot be tiled: its frames are resized inside the graph "
                                    "as a whole; export without --input native, or train without --tiles")
            if self.height != self.width:
                raise LinesideError(f"tiles are square, so the model input must be too (got {self.width}x"
                                    f"{self.height}): train with --size N")

    @property
    def cpu_size(self) -> tuple[int, int]:
        """(height, width) the CPU brings a frame to: the model's, or the native graph input's."""
        return self.native or (self.height, self.width)

    def target(self, roi_height: int, roi_width: int) -> tuple[int, int]:
        """(height, width) the CPU brings a ROI of this size to: ``cpu_size``, or the tiles' canvas."""
        if self.tiles is None:
            return self.cpu_size
        return canvas_size(roi_height, roi_width, self.tiles, (self.height, self.width))

    @property
    def graph_shape(self) -> tuple[int, int, int]:
        """One image's shape in the graph's input: C×H×W, or H×W×C for a native graph."""
        if self.native:
            return (*self.native, self.channels)
        return self.channels, self.height, self.width

    def to_dict(self) -> dict:
        d = asdict(self)
        d["roi"] = list(self.roi) if self.roi else None
        d["native"] = list(self.native) if self.native else None
        d["tiles"] = self.tiles.to_dict() if self.tiles else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        roi, native, tiles = d.get("roi"), d.get("native"), d.get("tiles")
        return cls(int(d["height"]), int(d["width"]), int(d["channels"]), tuple(roi) if roi else None,
                   tuple(native) if native else None, Tiling(**tiles) if tiles else None)


def station_spec(spec: InputSpec, roi, tiles=None) -> InputSpec:
    """The bundle's input spec with the station's ROI (x, y, width, height), when it has one.

    The one place a station's crop is applied: `serve` (pipeline.Model) and `calibrate`
    both score through it, so thresholds are set on the crops the line scores.

    Tiling always comes from the bundle (its manifest): the model was trained on those tiles.
    ``tiles`` is what the station config declares ({size, overlap} or None when it says
    nothing); one that disagrees with the bundle is refused, never silently followed.
    """
    if tiles is not None:
        declared = tiles if isinstance(tiles, Tiling) else Tiling(**(tiles if isinstance(tiles, dict) else
                                                                     tiles.model_dump()))
        if declared != spec.tiles:
            have = f"tiles {spec.tiles.to_dict()}" if spec.tiles else "no tiles"
            raise LinesideError(f"the station config declares tiles {declared.to_dict()} but the bundle was "
                                f"trained and exported with {have}: tiling follows the bundle's manifest; "
                                "remove `tiles:` from the station config or retrain with the tiles it wants")
    return replace(spec, roi=tuple(int(v) for v in roi)) if roi else spec


@dataclass(frozen=True)
class Plan:
    """How one source image becomes the model input (see the module's docstring)."""

    source: tuple[int, int]  # (height, width) of the full-size source
    reduce: int  # JPEG decoded at 1/reduce in the DCT domain (1: full size)
    decoded: tuple[int, int]  # (height, width) the decode yields
    roi: tuple[int, int, int, int] | None  # the crop in the decoded image's pixels (x, y, w, h)
    area: int  # then an integer INTER_AREA shrink by this factor (1: none)
    size: tuple[int, int]  # (height, width) it ends at: the model's input, or a tiled spec's canvas


def plan(height: int, width: int, spec: InputSpec, jpeg: bool = False) -> Plan:
    """THE decision of how a ``width``x``height`` source reaches ``spec``: every caller follows it.

    ``jpeg``: the source is a JPEG stream, which can be decoded at a reduced scale. The scale
    is the smallest (1/8 first) at which the ROI still has at least the model's pixels on both
    axes, so the last resize still shrinks (or keeps) and never invents detail.
    """
    roi = spec.roi or (0, 0, width, height)
    check_roi(roi, width, height)
    th, tw = spec.target(roi[3], roi[2])
    for s in (JPEG_SCALES if jpeg else ()) + (1,):
        decoded = (-(-height // s), -(-width // s))  # libjpeg rounds the scaled size up
        scaled = _scale_roi(roi, s, decoded)
        if s == 1 or (scaled[2] >= tw and scaled[3] >= th):
            break
    area = integer_factor(scaled[3], scaled[2], th, tw)
    full = scaled == (0, 0, decoded[1], decoded[0])
    return Plan((height, width), s, decoded, None if full else scaled, area, (th, tw))


def integer_factor(h: int, w: int, th: int, tw: int) -> int:
    """The largest integer factor that divides h×w exactly and keeps at least th×tw pixels
    (trimming rows to force one would shift the image's geometry); 1 when there is none."""
    return max(k for k in range(1, max(1, min(w // tw, h // th)) + 1) if w % k == 0 and h % k == 0)


def _scale_roi(roi, s: int, decoded: tuple[int, int]) -> tuple[int, int, int, int]:
    """The ROI in a 1/s-scale image: its edges rounded to the nearest reduced pixel."""
    x, y, w, h = roi
    x0, y0 = round(x / s), round(y / s)
    x1, y1 = min(decoded[1], round((x + w) / s)), min(decoded[0], round((y + h) / s))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def preprocess(image: np.ndarray, spec: InputSpec, how: Plan | None = None) -> np.ndarray:
    """HxW or HxWx3 (BGR) uint8 → CxHxW uint8 at the spec's resolution (a tiled spec: its canvas).

    ``how``: the plan the image was decoded by (``decode_planned``); without it the image is
    the full-size source and is planned here.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise LinesideError(
            f"preprocess takes uint8 HxW or HxWx3 images, got {image.dtype} {image.shape}: "
            "decode with edge_infer.imageio first"
        )
    if how is None:
        how = plan(image.shape[0], image.shape[1], spec)
    elif image.shape[:2] != how.decoded:
        raise LinesideError(f"image of {image.shape[1]}x{image.shape[0]} pixels was planned as "
                            f"{how.decoded[1]}x{how.decoded[0]}: preprocess it with the plan it was decoded by")
    if how.roi is not None:
        image = crop(image, how.roi)
    image = area_shrink(image, how.area)
    th, tw = how.size
    if image.shape[:2] != (th, tw):
        image = resize(image, tw, th, area=image.shape[0] > th or image.shape[1] > tw)
    if spec.native:
        return native_layout(image, spec.channels)
    if spec.channels == 3:
        image = gray_to_bgr(image) if image.ndim == 2 else bgr_to_rgb(image)  # gray: the same in RGB
        return np.ascontiguousarray(image.transpose(2, 0, 1))
    if image.ndim == 3:
        image = bgr_to_gray(image)
    return np.ascontiguousarray(image[None])


def area_shrink(image: np.ndarray, k: int) -> np.ndarray:
    """Shrink by an integer factor ``k`` that divides both sides, with box means: halvings for
    each factor 2 (``imaging.halve``: OpenCV's SIMD 2x2 path), then one INTER_AREA pass for
    the odd rest. OpenCV's single pass for k=4 is a scalar loop, 3x slower on a 1080p frame
    than two halvings (3.1 vs 1.1 ms CPU here); the two round twice, so a pixel may differ by
    1 grey level from the exact 4x4 mean (docs/runtime.md, "frame path")."""
    while k % 2 == 0:
        image, k = halve(image), k // 2
    if k < 2:
        return image
    h, w = image.shape[:2]
    return resize(image, w // k, h // k, area=True)


def decode_planned(data, spec: InputSpec, source: str = "<payload>") -> tuple[np.ndarray, Plan]:
    """An encoded image (bytes or any buffer) decoded as ``plan`` says: at a reduced scale when
    it is a JPEG the model's size allows that for. Returns the image and its plan."""
    dims = jpeg_dimensions(data)
    if dims is None:  # PNG, BMP, ...: decoded at full size, planned from what it is
        image = decode_image(data, source)
        return image, plan(image.shape[0], image.shape[1], spec)
    how = plan(dims[0], dims[1], spec, jpeg=True)
    image = decode_image(data, source, reduce=how.reduce, gray=spec.channels == 1)
    if image.shape[:2] != how.decoded:
        raise ImageReadError(source, f"JPEG declares {dims[1]}x{dims[0]} pixels but decodes to "
                             f"{image.shape[1]}x{image.shape[0]} at 1/{how.reduce} scale: the stream is corrupt")
    return image, how


def decode_input(data, spec: InputSpec, source: str = "<payload>") -> np.ndarray:
    """Encoded bytes → the model input (CxHxW uint8), by the plan."""
    image, how = decode_planned(data, spec, source)
    return preprocess(image, spec, how)


def frame_image(payload, encoding: str, shape, spec: InputSpec, source: str) -> tuple[np.ndarray, Plan]:
    """A wire frame's image, decoded by the plan, without copying a raw payload: the image is a
    view of the received buffer (or of a camera's shared-memory slot, encoding "shm") until the
    resize writes the (small) model input."""
    if encoding in ("raw", "shm"):  # wire.RAW_ENCODINGS: pixels as they are, in the payload or in a slot
        image = normalise_layout(np.frombuffer(payload, np.uint8).reshape(shape), source)
        return image, plan(image.shape[0], image.shape[1], spec)
    image, how = decode_planned(payload, spec, source)
    if how.source != tuple(shape[:2]):
        raise ImageReadError(source, f"decoded image of {how.source[1]}x{how.source[0]} pixels does not "
                             f"match the header's shape {list(shape)}")
    return image, how


def read_input(path, spec: InputSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """An image file → (model input, the file's (height, width) at full size), by the plan."""
    image, how = decode_planned(read_bytes(path), spec, str(path))
    return preprocess(image, spec, how), how.source


def preprocess_batch(images: list[np.ndarray], spec: InputSpec) -> np.ndarray | list[np.ndarray]:
    """Preprocessed images: one N×C×H×W array, or a tiled spec's canvases as a list (their sizes
    follow each image's)."""
    inputs = [preprocess(im, spec) for im in images]
    return inputs if spec.tiles else np.stack(inputs)


def tile_inputs(model_input: np.ndarray, spec: InputSpec) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """What the graph takes for one preprocessed image: a tiled spec's canvas (C×H×W) cut into its
    tiles (T×C×h×w, with each tile's (y, x) in the canvas); an untiled input as a batch of one."""
    if spec.tiles is None:
        return model_input[None], [(0, 0)]
    model = (spec.height, spec.width)
    places = boxes(model_input.shape[1:], spec.tiles, model)
    return cut(model_input, places, model), places


def load_inputs(paths, spec: InputSpec) -> tuple[np.ndarray, list[int]]:
    """Graph inputs (N×C×H×W) for image files, and for each input the index of its (readable) file.

    For checks that need a handful of real images (parity, calibration sets): unreadable
    files are left out here; the data loaders are where they are reported by path. A tiled
    spec gives every tile of every image (what the graph scores), in order, each with its
    image's index; untiled, one input per readable file.
    """
    arrays, kept = [], []
    for i, path in enumerate(paths):
        try:
            tiles = tile_inputs(read_input(path, spec)[0], spec)[0]
        except LinesideError:
            continue
        arrays.extend(tiles)
        kept.extend([i] * len(tiles))
    if not arrays:
        return np.zeros((0, *spec.graph_shape), np.uint8), kept
    return np.stack(arrays), kept


def crop(image: np.ndarray, roi: tuple[int, int, int, int]) -> np.ndarray:
    check_roi(roi, image.shape[1], image.shape[0])
    x, y, w, h = roi
    return image[y : y + h, x : x + w]


def check_roi(roi: tuple[int, int, int, int], width: int, height: int) -> None:
    x, y, w, h = roi
    if x < 0 or y < 0 or x + w > width or y + h > height:
        raise LinesideError(
            f"ROI x={x} y={y} w={w} h={h} lies outside the {width}x{height} image: fix the station's ROI"
        )


def native_layout(image: np.ndarray, channels: int) -> np.ndarray:
    """H×W×C in the frame's own channel order (BGR) for a native graph, which permutes itself.
    Already in that layout (the usual case), the image is returned as it is: a view, no copy."""
    if channels == 3:
        return gray_to_bgr(image) if image.ndim == 2 else image
    return (bgr_to_gray(image) if image.ndim == 3 else image)[:, :, None]
