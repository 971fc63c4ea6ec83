"""Scoring images with a bundle: preprocess, run the backend, decide. One path for all callers.

`lineside score`, calibration, the demo and the benchmarks use this; the server (serve)
uses the same three steps on frames from the wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .backends import Backend, ModelOutputs, open_backend
from .bundle import Bundle, Thresholds
from .decide import Verdict, decide
from .errors import ImageReadError, LinesideError
from .imageio import IMAGE_SUFFIXES, list_images, read_bytes
from .imaging import warm_up
from .preprocess import decode_planned, preprocess, preprocess_batch, station_spec


@dataclass
class Scored:
    source: str
    verdict: Verdict
    anomaly_map: np.ndarray | None = None


class Scorer:
    """A bundle loaded on a backend, with the station's thresholds."""

    def __init__(self, bundle: Bundle | str | Path, backend: str = "auto", precision: str = "fp32",
                 threads: int | None = None, thresholds: Thresholds | None = None, roi=None,
                 cuda_graph: bool = False, tiles=None):
        warm_up()  # the codec is imported while the model loads, not on the first frame
        self.bundle = bundle if isinstance(bundle, Bundle) else Bundle.load(bundle)
        self.backend: Backend = open_backend(self.bundle, backend, precision, threads, cuda_graph=cuda_graph)
        self.thresholds = thresholds if thresholds is not None else self.bundle.thresholds
        # the station's crop, as serve applies it; ``tiles``: what the station declares, checked against the bundle
        self.spec = station_spec(self.bundle.input_spec, roi, tiles)

    def run(self, images: list[np.ndarray]) -> ModelOutputs:
        """Raw outputs for decoded images of any count (split into the backend's batches)."""
        return self.backend.run_frames(preprocess_batch(images, self.spec))

    def score_paths(self, paths: Iterable[Path], batch: int = 1, keep_maps: bool = False) -> Iterator[Scored]:
        """One Scored per path, in order; unreadable images become ERROR verdicts, never a crash."""
        pending: list[tuple[Path, tuple, float]] = []
        for path in paths:
            t0 = time.perf_counter()
            try:
                decoded = decode_planned(read_bytes(path), self.spec, str(path))  # at the size the model needs
            except ImageReadError as exc:
                yield Scored(str(path), Verdict("ERROR", reason=exc.reason))
                continue
            pending.append((path, decoded, (time.perf_counter() - t0) * 1e3))
            if len(pending) >= min(batch, self.backend.max_batch):
                yield from self._score_pending(pending, keep_maps)
                pending = []
        if pending:
            yield from self._score_pending(pending, keep_maps)

    def judge(self, batch) -> tuple[ModelOutputs, list[Verdict]]:
        """Run preprocessed images (an array, or a list: a tiled bundle's canvases) and decide each image;
        verdicts carry compute and postprocess ms (compute: per frame, all its tiles included).

        The one model-and-decision step: `score_paths` here and the server's pipeline both use it.
        """
        t0 = time.perf_counter()
        out = self.backend.run_frames(batch)
        compute_ms = round((time.perf_counter() - t0) * 1e3 / len(batch), 3)
        thresholds, verdicts = self.thresholds, []
        for i in range(len(batch)):
            t1 = time.perf_counter()
            verdict = decide(float(out.score[i]), out.anomaly_map[i], thresholds)
            verdict.latency_ms = {"compute": compute_ms, "postprocess": round((time.perf_counter() - t1) * 1e3, 3)}
            verdicts.append(verdict)
        return out, verdicts

    def _score_pending(self, pending, keep_maps: bool) -> Iterator[Scored]:
        t0 = time.perf_counter()
        batch = [preprocess(image, self.spec, how) for _, (image, how), _ in pending]
        preprocess_ms = round((time.perf_counter() - t0) * 1e3 / len(pending), 3)
        out, verdicts = self.judge(batch)
        for i, ((path, _, decode_ms), verdict) in enumerate(zip(pending, verdicts)):
            verdict.latency_ms = {"decode": round(decode_ms, 3), "preprocess": preprocess_ms, **verdict.latency_ms}
            yield Scored(str(path), verdict, out.anomaly_map[i] if keep_maps else None)

    def close(self) -> None:
        self.backend.close()


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files and folders (their images, sorted) → a list of image paths."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise LinesideError(f"folder {p} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            raise LinesideError(f"{p} does not exist: give image files or folders of images")
    return paths
