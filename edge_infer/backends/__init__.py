"""Backends behind one interface, and the choice between them.

``auto`` tries, in order: a prebuilt TensorRT engine (if present and built for this
device), onnxruntime with the TensorRT provider, with the CUDA provider, and on the
CPU. It says which it chose and why each one before it was skipped. A pinned name
(``tensorrt``, ``ort-trt``, ``ort-cuda``, ``ort-cpu``) gets exactly that backend or an
error saying why not.

Precision ``auto`` (the station config's default) runs the precision of the newest engine
built for this bundle that is valid on this device, so the engine `lineside flash` built
is the one that runs; with no such engine, fp32. The opened backend carries the
precision it runs (``backend.precision``), which health and stats report.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..bundle import ENGINES_DIR, Bundle
from ..errors import LinesideError
from .base import Backend, ModelOutputs
from .ort import PROVIDERS as ORT_PROVIDERS

ORDER = ("tensorrt", "ort-trt", "ort-cuda", "ort-cpu")
BACKENDS = ("auto", *ORDER)
PRECISIONS = ("auto", "fp32", "fp16", "int8")


@dataclass
class Selection:
    """The backends worth trying, best first, and why the others were skipped."""

    candidates: list[str]
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def explain(self, chosen: str) -> str:
        why = "; ".join(f"{name} skipped: {reason}" for name, reason in self.skipped)
        return f"backend {chosen}" + (f" ({why})" if why else "")


def plan(backend: str, providers: list[str], engine_problem: Callable[[], str | None]) -> Selection:
    """Which backends to try for ``backend`` given onnxruntime's providers and the engine's state.

    ``engine_problem()`` returns None when a valid TensorRT engine for this device is
    present, else the reason it cannot be used. Pure logic: tests feed it fakes.
    """
    if backend not in BACKENDS:
        raise LinesideError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    names = ORDER if backend == "auto" else (backend,)
    selection = Selection([])
    for name in names:
        if name == "tensorrt":
            reason = engine_problem()
        elif ORT_PROVIDERS[name] not in providers:
            reason = f"onnxruntime here has no {ORT_PROVIDERS[name]} (it has {', '.join(providers) or 'none'})"
        else:
            reason = None
        if reason is None:
            selection.candidates.append(name)
        else:
            selection.skipped.append((name, reason))
    if not selection.candidates:
        raise LinesideError(f"backend {backend} is not usable here: " +
                            "; ".join(reason for _, reason in selection.skipped))
    return selection


def resolve_precision(bundle: Bundle, backend: str, precision: str) -> tuple[str, str]:
    """The precision to run and why: ``auto`` follows the newest engine valid here, else fp32."""
    if precision not in PRECISIONS:
        raise LinesideError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision, "as configured"
    if backend in ("auto", "tensorrt"):
        from .engine_meta import built_engines

        for meta in built_engines(bundle.root):
            p = meta["precision"]
            if p in bundle.manifest.variants and engine_problem(bundle, p) is None:
                return p, f"auto: the {p} engine built {meta.get('built', '?')} is valid here"
    fallback = "fp32" if "fp32" in bundle.manifest.variants else sorted(bundle.manifest.variants)[0]
    return fallback, "auto: no engine built for this bundle is valid here"


def open_backend(bundle: Bundle, backend: str = "auto", precision: str = "fp32", threads: int | None = None,
                 log: Callable[[str], None] | None = None, cuda_graph: bool = False) -> Backend:
    """Load the bundle's model on the chosen backend ("auto": the best one available here)."""
    from .ort import available_providers

    log = log or (lambda line: print(line, file=sys.stderr))
    precision, why = resolve_precision(bundle, backend, precision)
    selection = plan(backend, _providers_or_none(available_providers),
                     lambda: engine_problem(bundle, precision))
    for name in selection.candidates:
        try:
            opened = _open(name, bundle, precision, threads, cuda_graph)
        except LinesideError as exc:
            if backend != "auto" or name == selection.candidates[-1]:
                raise
            selection.skipped.append((name, str(exc)))
            continue
        opened.selection = selection.explain(name) + f", precision {precision} ({why})"
        opened.precision = precision
        if backend == "auto":
            log(opened.selection)
        if cuda_graph and name != "tensorrt":
            log(f"cuda_graph applies to the tensorrt backend only: {name} runs without CUDA graphs")
        return opened
    raise LinesideError(f"no backend could be opened: {selection.explain('none')}")


def engine_problem(bundle: Bundle, precision: str) -> str | None:
    """None when the bundle has a TensorRT engine for ``precision`` valid on this device; else why not."""
    from .engine_meta import check_engine, current_environment, engine_path, read_sidecar

    from . import standin

    engine = engine_path(bundle.root, precision)
    if not engine.is_file():
        return f"no engine at {engine} (build one with `lineside build-engine {bundle.root} --precision {precision}`)"
    try:
        if read_sidecar(engine).get("backend") == standin.BACKEND:
            if not standin.enabled():
                return standin.refusal(engine)
            check_engine(engine, bundle.model_sha256(precision), standin.ENVIRONMENT)
            return None
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "the tensorrt Python package is not installed"
        check_engine(engine, bundle.model_sha256(precision), current_environment())
    except LinesideError as exc:
        return str(exc)
    return None


def _open(name: str, bundle: Bundle, precision: str, threads: int | None, cuda_graph: bool) -> Backend:
    max_batch = bundle.manifest.input.max_batch
    if name == "tensorrt":
        from . import standin
        from .engine_meta import engine_path, read_sidecar

        engine = engine_path(bundle.root, precision)
        meta = read_sidecar(engine)
        if meta.get("backend") == standin.BACKEND:  # engine_problem let it through: the variable is set
            return standin.StandinEngineBackend(engine, meta, bundle.input_spec, max_batch, threads)
        from .tensorrt import TensorRTBackend

        return TensorRTBackend(engine, bundle.model_sha256(precision), bundle.input_spec, max_batch,
                               cuda_graph=cuda_graph)
    from .ort import OrtBackend

    return OrtBackend(bundle.model_path(precision), bundle.input_spec, max_batch, provider=name, threads=threads,
                      cache_dir=Path(bundle.root) / ENGINES_DIR / "ort-trt")


def _providers_or_none(probe) -> list[str]:
    try:
        return probe()
    except LinesideError:
        return []


__all__ = ["Backend", "ModelOutputs", "open_backend", "resolve_precision", "plan", "Selection", "BACKENDS", "ORDER",
           "PRECISIONS"]
