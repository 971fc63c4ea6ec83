"""Add FP16 / INT8 variants to a freshly exported bundle, each with its accuracy checks.

Called by ``lineside export --precision fp32,fp16,int8``. The calibration images are
the station's own good images (the training split of the run's data, or a folder the
user gives) and never the evaluation images the variants are judged on.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_infer.bundle import Bundle
from edge_infer.errors import LinesideError
from edge_infer.imageio import list_images
from edge_infer.preprocess import InputSpec, load_inputs

from . import PRECISIONS, VARIANT_FILES
from .accuracy import EvalSet, check_variant, compare, format_result, score_graph


@dataclass
class VariantOptions:
    precisions: tuple[str, ...] = ("fp32",)
    calib: str | None = None  # folder of good images, or a dataset ('elpv', MVTec folder); default: the run's data
    calib_method: str = "percentile"
    calib_images: int = 128
    per_channel: bool = True
    int8_activations: str = "s8"  # s8: symmetric, for TensorRT; u8: asymmetric, faster on x86 CPUs
    auroc_tolerance: float = 1.0  # AUROC points a variant may lose against FP32
    eval_limit: int | None = None  # evaluation images per class part (quick checks)


def parse_precisions(text: str) -> tuple[str, ...]:
    wanted = tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip()))
    unknown = [p for p in wanted if p not in PRECISIONS]
    if unknown or not wanted:
        raise LinesideError(f"unknown precision {', '.join(unknown) or '(none)'}: give a comma-separated list of "
                            f"{', '.join(PRECISIONS)}, e.g. --precision fp32,fp16,int8")
    return tuple(p for p in PRECISIONS if p in wanted or p == "fp32")  # FP32 is always the reference


def add_variants(bundle: Bundle, record: dict, data: str | None, options: VariantOptions, log=print) -> dict:
    """Write, check and record each lower-precision variant; returns the accuracy results by precision."""
    from .fp16 import convert_fp16
    from .int8 import quantize_int8

    spec = bundle.input_spec
    wanted = [p for p in options.precisions if p != "fp32"]
    if not wanted:
        return {}
    evalset = evaluation_set(data, record, spec, options.eval_limit)
    reference = evalset.per_image(score_graph(bundle.root / VARIANT_FILES["fp32"], spec, evalset.images))
    results, refused = {}, []
    for precision in wanted:
        path = bundle.root / VARIANT_FILES[precision]
        if precision == "fp16":
            how, produced_by = convert_fp16(bundle.root / VARIANT_FILES["fp32"], path), "onnxruntime float16 conversion"
        else:
            calib, provenance = calibration_set(options.calib or data or record["data"].get("data"), record, spec,
                                                options.calib_images)
            how = quantize_int8(bundle.root / VARIANT_FILES["fp32"], path, calib, options.calib_method,
                                options.per_channel, activations=options.int8_activations)
            how["calibration"] = provenance
            produced_by = "onnxruntime.quantization QDQ static quantization"
        result = compare(evalset.per_image(score_graph(path, spec, evalset.images)), reference, evalset.labels)
        result.update(images=int(len(evalset.labels)), defective=int(evalset.labels.sum()), split=evalset.source,
                      backend="onnxruntime CPUExecutionProvider", tolerance_auroc_points=options.auroc_tolerance)
        log(format_result(precision, result))
        try:
            check_variant(precision, result, options.auroc_tolerance, path)
        except LinesideError as exc:
            path.unlink(missing_ok=True)
            refused.append(str(exc))
            continue
        bundle.add_file(path.name, "model", f"{produced_by} of {VARIANT_FILES['fp32']}", precision=precision,
                        checks={"accuracy": result, "conversion": how})
        results[precision] = result
    bundle.save()
    if refused:
        kept = ", ".join(sorted(bundle.manifest.variants))
        raise LinesideError("\n".join(refused) + f"\nthe bundle {bundle.root} keeps: {kept}")
    return results


def evaluation_set(data: str | None, record: dict, spec: InputSpec, limit: int | None) -> EvalSet:
    """The run's test split (good and defective images), preprocessed as the runtime does."""
    from ..run import run_split

    data = data or record["data"].get("data")
    if not data:
        raise LinesideError("the run does not say where its images are: give --data for the accuracy checks")
    split = run_split(record, data, limit)
    images, kept = load_inputs([s.path for s in split.test], spec)
    if not len(images):
        raise LinesideError(f"no readable test image in {data}: the variants cannot be checked; give --data")
    readable = list(dict.fromkeys(kept))  # each image once (a tiled spec repeats it for each tile)
    labels = np.asarray([int(split.test[i].label) for i in readable])
    image_of = np.searchsorted(readable, kept) if spec.tiles else None
    return EvalSet(images, labels, f"{data}: test split ({len(labels)} images)", image_of)


def calibration_set(source: str, record: dict, spec: InputSpec, count: int) -> tuple[np.ndarray, dict]:
    """Up to ``count`` good images, evenly spread over the source, and where they came from."""
    if count < 1:
        raise LinesideError(f"--calib-images must be at least 1 (got {count})")
    folder = Path(source)
    if folder.is_dir() and not (folder / "train").is_dir():
        paths = list_images(folder)
        kind = "folder of good images"
    else:
        from ..run import run_split

        split = run_split(record, source)
        paths = [s.path for s in split.train if s.label == 0]
        kind = "training split (good images)"
    chosen = paths[:: max(1, len(paths) // count)][:count]
    images, _ = load_inputs(chosen, spec)  # a tiled spec: every tile, as the graph sees them
    if not len(images):
        raise LinesideError(f"no readable image in {source} for INT8 calibration: give --calib a folder of the "
                            "station's good images")
    digest = hashlib.sha256("\n".join(Path(p).name for p in chosen).encode()).hexdigest()
    return images, {"source": str(source), "kind": kind, "images": int(len(images)), "available": len(paths),
                    "selection": "evenly spaced", "names_sha256": digest}
