"""Backends behind one interface, and the choice between them."""

from __future__ import annotations

from ..bundle import Bundle
from ..errors import LinesideError
from .base import Backend, ModelOutputs

BACKENDS = ("auto", "ort-cpu")


def open_backend(bundle: Bundle, backend: str = "auto", precision: str = "fp32",
                 threads: int | None = None) -> Backend:
    """Load the bundle's model on the chosen backend ("auto": the best one available here)."""
    if backend not in BACKENDS:
        raise LinesideError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    from .ort import OrtBackend

    return OrtBackend(bundle.model_path(precision), bundle.input_spec, bundle.manifest.input.max_batch,
                      provider="ort-cpu", threads=threads)


__all__ = ["Backend", "ModelOutputs", "open_backend", "BACKENDS"]
