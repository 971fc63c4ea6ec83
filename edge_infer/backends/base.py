"""The backend interface: a uint8 NCHW batch in, raw anomaly maps and scores out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ..errors import LinesideError
from ..preprocess import InputSpec
from ..tiling import score_canvases


@dataclass
class ModelOutputs:
    anomaly_map: np.ndarray | list  # float32, N×1×h×w; per frame of a tiled bundle: a list when sizes differ
    score: np.ndarray  # float32, N


def stack_maps(maps: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """Frames' maps as one N×1×h×w array when they share a size (frames of one camera), else the list."""
    return np.stack(maps) if len({m.shape for m in maps}) == 1 else maps


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's largest magnitude (parity checks)."""
    scale = float(np.abs(reference).max()) or 1.0
    return float(np.abs(value.astype(np.float64) - reference).max() / scale)


class Backend(ABC):
    """One loaded model on one device. Implementations: OrtBackend, TensorRTBackend."""

    name: str = "backend"
    precision: str = "fp32"  # the model variant it runs; open_backend sets it

    def __init__(self, spec: InputSpec, max_batch: int):
        self.spec = spec
        self.max_batch = max_batch

    def run(self, images: np.ndarray) -> ModelOutputs:
        """Score a batch; refuses inputs that do not match the bundle's input spec."""
        self.check_input(images)
        return self._run(images)

    def run_all(self, images: np.ndarray) -> ModelOutputs:
        """Outputs for any number of images, run in batches of at most ``max_batch``."""
        outs = [self.run(images[i : i + self.max_batch]) for i in range(0, len(images), self.max_batch)]
        return ModelOutputs(np.concatenate([o.anomaly_map for o in outs]), np.concatenate([o.score for o in outs]))

    def run_frames(self, inputs) -> ModelOutputs:
        """One output per preprocessed frame (an N×C×H×W batch, or a list of them).

        A tiled bundle's inputs are canvases (edge_infer.preprocess): every frame's tiles go to the
        graph together, N frames × T tiles in batches of at most ``max_batch``; each frame's map is
        its tiles' maps stitched (edge_infer.tiling.stitch) and its score the max of its tiles'.
        """
        if self.spec.tiles is None:
            return self.run_all(inputs if isinstance(inputs, np.ndarray) else np.stack(inputs))
        def run(tiles):
            out = self.run_all(tiles)
            return out.anomaly_map, out.score

        maps, scores = score_canvases(run, inputs, self.spec.tiles, (self.spec.height, self.spec.width))
        return ModelOutputs(stack_maps(maps), scores)

    @abstractmethod
    def _run(self, images: np.ndarray) -> ModelOutputs:
        """Run the model on a validated uint8 N×C×H×W batch."""

    def close(self) -> None:
        """Release device memory; the default holds nothing that needs it."""

    def describe(self) -> dict:
        return {"backend": self.name, "precision": self.precision, "max_batch": self.max_batch}

    def check_input(self, images: np.ndarray) -> None:
        want = self.spec.graph_shape
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
            got = f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}"
            raise LinesideError(f"the model takes uint8 N×{want[0]}×{want[1]}×{want[2]} batches, got {got}: "
                                "pass images through edge_infer.preprocess first")
        if images.shape[1:] != want:
            raise LinesideError(
                f"image batch of shape {images.shape[1:]} does not match the bundle's input {want}: "
                "preprocess with the bundle's input spec"
            )
        if not 1 <= images.shape[0] <= self.max_batch:
            raise LinesideError(f"batch of {images.shape[0]} is outside 1..{self.max_batch}: split it")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
