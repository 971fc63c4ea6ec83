"""Tiles for small defects in large images: the grid, cutting, and stitching the maps back.

A defect of 0.1-1 % of a 1-5 MP frame vanishes when the whole ROI is squashed to 224 px. A
station (and its training run) may declare ``tiles: {size, overlap}``: the ROI is brought to
the scale at which a ``size``-pixel square of the source becomes one model input (the
"canvas", edge_infer.preprocess.plan decides how), cut into model-size tiles on an even grid,
the tiles are scored as one batch of the same graph, and the tiles' maps are stitched back
into one map of the ROI. The image score is the max over the tiles' scores.

Where tiles overlap, the stitched map takes the MAX of the tiles' maps, not their mean. The
verdict is the max over tiles, so the map must show what the deciding tile saw: a defect seen
whole by one tile and cut at the border of its neighbour would be halved by a mean, and its
region could fall under the pixel threshold while the image is NG. Max also keeps the
stitched map's peak equal to the largest tile map's peak.

Sizes and overlaps are in source pixels (the ROI at full resolution); nothing here imports
anything but NumPy, so the grid math is the same everywhere it is used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import LinesideError


@dataclass(frozen=True)
class Tiling:
    """Square tiles of ``size`` source pixels, neighbours overlapping by at least ``overlap``."""

    size: int
    overlap: int = 0

    def __post_init__(self):
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "overlap", int(self.overlap))
        if self.size < 8:
            raise LinesideError(f"tiles of {self.size} px are too small: use tiles of at least 8 px")
        if not 0 <= self.overlap < self.size:
            raise LinesideError(f"tile overlap {self.overlap} must be at least 0 and less than the tile size "
                                f"{self.size}: e.g. tiles: {{size: {self.size}, overlap: {self.size // 8}}}")

    def to_dict(self) -> dict:
        return {"size": self.size, "overlap": self.overlap}

    @classmethod
    def parse(cls, text: str) -> "Tiling":
        """``SIZE`` or ``SIZE,OVERLAP`` (the --tiles option)."""
        try:
            values = [int(v) for v in str(text).split(",")]
        except ValueError:
            values = []
        if len(values) not in (1, 2):
            raise LinesideError(f"--tiles {text!r}: give SIZE or SIZE,OVERLAP in source pixels, e.g. --tiles 256,32")
        return cls(*values)


def grid(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, neighbours overlapping >= ``overlap``.

    The fewest tiles that do, spread evenly from one edge to the other: the first starts at 0,
    the last ends at ``length``, and a length that the stride does not divide gets slightly larger
    overlaps rather than a last tile hanging past the edge (no padding is ever scored).
    """
    if tile > length:
        raise LinesideError(f"a tile of {tile} px does not fit in {length} px: use tiles no larger than the ROI")
    if length == tile:
        return [0]
    count = -(-(length - overlap) // (tile - overlap))  # ceil: the fewest tiles with at least that overlap (>= 2)
    span = length - tile
    return [round(i * span / (count - 1)) for i in range(count)]


def canvas_size(roi_height: int, roi_width: int, tiling: Tiling, model: tuple[int, int]) -> tuple[int, int]:
    """(height, width) the ROI is brought to so that a ``tiling.size`` source square becomes the model's
    input (``model``: height, width, square). Refuses a ROI smaller than one tile."""
    if roi_height < tiling.size or roi_width < tiling.size:
        raise LinesideError(f"tiles of {tiling.size} px do not fit in the {roi_width}x{roi_height} ROI: "
                            f"use tiles of at most {min(roi_height, roi_width)} px, or no tiles")
    scale = model[0] / tiling.size
    return max(model[0], round(roi_height * scale)), max(model[1], round(roi_width * scale))


def boxes(canvas: tuple[int, int], tiling: Tiling, model: tuple[int, int]) -> list[tuple[int, int]]:
    """(y, x) of each tile in the canvas, row by row; every tile is ``model`` (height, width)."""
    overlap = round(tiling.overlap * model[0] / tiling.size)  # in canvas pixels
    ys, xs = grid(canvas[0], model[0], overlap), grid(canvas[1], model[1], overlap)
    return [(y, x) for y in ys for x in xs]


def cut(canvas: np.ndarray, tiles: list[tuple[int, int]], model: tuple[int, int]) -> np.ndarray:
    """T×C×h×w tiles of a C×H×W canvas (a copy: the graph's input is contiguous)."""
    h, w = model
    return np.stack([canvas[:, y : y + h, x : x + w] for y, x in tiles])


def stitch(maps: np.ndarray, tiles: list[tuple[int, int]], canvas: tuple[int, int],
           model: tuple[int, int]) -> np.ndarray:
    """1×H×W map of the canvas from T×1×h×w tile maps: each tile's map in its place, the max where
    tiles overlap (see the module's docstring). A map smaller than the model's input (a graph whose
    map is coarser) is placed at its own scale, offsets rounded to the nearest map pixel."""
    mh, mw = maps.shape[-2:]
    sy, sx = mh / model[0], mw / model[1]
    out = np.full((round(canvas[0] * sy), round(canvas[1] * sx)), -np.inf, np.float32)
    for tile_map, (y, x) in zip(maps, tiles):
        y0, x0 = round(y * sy), round(x * sx)
        view = out[y0 : y0 + mh, x0 : x0 + mw]
        np.maximum(view, tile_map.reshape(mh, mw), out=view)
    return out[None]


def score_canvases(run, canvases, tiling: Tiling, model: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per frame: (stitched 1×H×W maps, scores = the max of its tiles' scores), for canvases (C×H×W each).

    ``run`` scores all the frames' tiles at once (K×C×h×w → K×1×mh×mw maps, K scores), N frames × T
    tiles together: the backend splits them into batches of its max_batch (Backend.run_all).
    """
    shapes = [canvas.shape[1:] for canvas in canvases]
    places = [boxes(shape, tiling, model) for shape in shapes]
    maps, scores = run(np.concatenate([cut(canvas, p, model) for canvas, p in zip(canvases, places)]))
    return merge(maps, scores, shapes, tiling, model)


def merge(maps: np.ndarray, scores: np.ndarray, canvases: list[tuple[int, int]], tiling: Tiling,
          model: tuple[int, int]) -> tuple[list[np.ndarray], np.ndarray]:
    """Tiles' outputs, frame after frame in grid order, back to one (stitched map, max score) per frame
    of the given canvas (height, width): the device's rule, which training's evaluation follows too."""
    stitched, best, start = [], [], 0
    for canvas in canvases:
        places = boxes(tuple(canvas), tiling, model)
        end = start + len(places)
        stitched.append(stitch(maps[start:end], places, tuple(canvas), model))
        best.append(scores[start:end].max())
        start = end
    if start != len(scores):
        raise LinesideError(f"{len(scores)} tile outputs for canvases that hold {start} tiles: score every tile")
    return stitched, np.asarray(best, np.float32)
