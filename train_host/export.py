"""`lineside export RUN --out BUNDLE`: the ONNX graph, its manifest, and proof it agrees with PyTorch.

The graph meets the model I/O contract: ``image`` uint8 N×C×H×W in, ``anomaly_map``
float32 N×1×H×W and ``score`` float32 N out, normalisation inside. The parity check runs
onnxruntime on the CPU (the runtime's own OrtBackend) against PyTorch on real images and
refuses the export past a tolerance.

With ``--input native WxH`` the graph takes the frame itself: uint8 N×H×W×C in the frame's
own layout (BGR), and permutes and resizes inside: the CPU path's integer box shrink as an
AveragePool, then an antialiased linear Resize (opset 18 ``antialias=1``) to the model size,
so a TensorRT engine does it on the GPU. Its parity is checked against PyTorch on the
same frames resized by the CPU path (``edge_infer.preprocess``).
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edge_infer.backends.base import relative_error
from edge_infer.backends.ort import OrtBackend
from edge_infer.bundle import Bundle, InputInfo, Manifest, ModelInfo, OutputInfo, Thresholds
from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec, integer_factor, load_inputs, preprocess

from .run import load_run, run_data, run_split
from .train import set_threads, summarise

OPSET = 18


def main(args) -> int:
    from .precision.variants import VariantOptions, parse_precisions

    set_threads(args.threads)
    variants = VariantOptions(precisions=parse_precisions(args.precision), calib=args.calib,
                              calib_method=args.calib_method, calib_images=args.calib_images,
                              auroc_tolerance=args.auroc_tolerance, eval_limit=args.eval_limit,
                              int8_activations=args.int8_activations)
    from .device import resolve_device

    native = parse_native(args.input) if args.input else None
    bundle = export_bundle(args.run, Path(args.out), data=args.data, max_batch=args.max_batch,
                           parity_images=args.parity_images,
                           tolerance=args.native_tolerance if native else args.tolerance, force=args.force,
                           variants=variants, device=resolve_device(getattr(args, "device", "auto")), native=native)
    entry = bundle.manifest.files["model.onnx"]
    parity = entry.checks["parity"]
    print(f"exported {bundle.root}/model.onnx: parity on {parity['images']} images, max relative error "
          f"score {parity['score_rel_err']:.2e}, map {parity['map_rel_err']:.2e} (tolerance {parity['tolerance']:.0e})")
    for precision, name in bundle.manifest.variants.items():
        if precision != "fp32":
            print(f"variant {precision}: {bundle.root}/{name} (checks in manifest.json)")
    print(f"bundle ready: {bundle.root}; next: `lineside calibrate {bundle.root} ...` or `lineside score {bundle.root} IMAGES`")
    return 0


def parse_native(values: list[str]) -> tuple[int, int]:
    """``["native", "WxH"]`` → (height, width)."""
    kind, size = values
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        width = height = 0
    if kind != "native" or width < 8 or height < 8:
        raise LinesideError(f"--input {kind} {size}: give `--input native WIDTHxHEIGHT`, the frame's (or the ROI's) "
                            "size, e.g. `--input native 1920x1080`")
    return height, width


def export_bundle(run: str | Path, out: Path, data: str | None = None, max_batch: int = 8,
                  parity_images: int = 16, tolerance: float = 1e-3, force: bool = False,
                  variants=None, device=None, native: tuple[int, int] | None = None) -> Bundle:
    """FP32 graph + manifest + provisional thresholds; then the FP16/INT8 variants ``variants`` asks for.
    The graph is traced on the CPU; PyTorch's side of the parity check runs on ``device`` (default: CPU).
    ``native`` (height, width): the graph takes frames of that size and resizes them itself."""
    model, record = load_run(run)
    spec = InputSpec.from_dict(record["input"])
    if native:
        if variants is not None and set(variants.precisions) - {"fp32"}:
            raise LinesideError("--input native with --precision fp16/int8 is not supported yet: export the "
                                "variants from a model-size bundle")
        spec = replace(spec, native=native)
    if record["data"].get("zero_shot"):
        data = run_data(record, data, run)
        record = new_station_scale(model, record, data, spec)
    prepare_out(out, force)
    export_onnx(model, spec, out / "model.onnx", max_batch)
    images = parity_batch(data or record["data"].get("data"), record, spec, parity_images)
    parity = parity_check(model, out / "model.onnx", spec, images, tolerance, max_batch, device)
    bundle = Bundle(out, make_manifest(record, spec, max_batch))
    resize = f"with in-graph resize from {native[1]}x{native[0]} frames " if native else ""
    bundle.add_file("model.onnx", "model", f"torch.onnx.export (opset {OPSET}, torch {torch.__version__}) "
                    f"{resize}of run {Path(run).resolve()}", precision="fp32", checks={"parity": parity})
    bundle.write_thresholds(provisional_thresholds(record), "train_host.export (provisional)")
    if variants is not None:
        from .precision.variants import add_variants

        add_variants(bundle, record, data, variants)
    return bundle


def export_onnx(model: torch.nn.Module, spec: InputSpec, path: Path, max_batch: int = 8) -> None:
    """Export with a dynamic batch dimension (1..max_batch; static at 1), as one self-contained file."""
    if max_batch < 1:
        raise LinesideError(f"--max-batch {max_batch}: the graph must accept at least one image")
    example = torch.zeros(min(2, max_batch), *spec.graph_shape, dtype=torch.uint8)
    graph = NativeInput(model, spec) if spec.native else model
    name = "frame" if spec.native else "image"  # the forward's argument, which dynamic_shapes names
    dynamic = {name: {0: torch.export.Dim("batch", min=1, max=max_batch)}} if max_batch > 1 else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph.eval(), (example,), dynamo=True, opset_version=OPSET,
                                    input_names=["image"], output_names=["anomaly_map", "score"],
                                    dynamic_shapes=dynamic, external_data=False, verbose=False)
    program.save(str(path), external_data=False)
    import onnx

    onnx.checker.check_model(str(path))


class NativeInput(torch.nn.Module):
    """The model behind a resize of its own: uint8 N×H×W×C frames (BGR) in, as the CPU path
    would shrink them: the same integer box factor (AveragePool), then an antialiased linear
    Resize to the model size, rounded to uint8 as the CPU path's output is."""

    def __init__(self, model: torch.nn.Module, spec: InputSpec):
        super().__init__()
        self.model, self.channels, self.size = model, spec.channels, (spec.height, spec.width)
        self.box = integer_factor(*spec.native, spec.height, spec.width)

    def forward(self, frame: torch.Tensor):
        x = frame.permute(0, 3, 1, 2)
        if self.channels == 3:
            x = x.flip(1)  # BGR → RGB
        x = x.float()
        if self.box > 1:
            x = torch.nn.functional.avg_pool2d(x, self.box)
        if tuple(x.shape[-2:]) != self.size:
            x = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear", antialias=True,
                                                align_corners=False)
        return self.model(x.round().clamp(0, 255).to(torch.uint8))


@torch.no_grad()
def parity_check(model: torch.nn.Module, onnx_path: Path, spec: InputSpec, images: np.ndarray,
                 tolerance: float, max_batch: int = 8, device=None) -> dict:
    """Max relative error of the ONNX graph against PyTorch on real images; raises past ``tolerance``.
    For a native graph, ``images`` are frames, and PyTorch gets them resized by the CPU path."""
    ort_out = OrtBackend(onnx_path, spec, max_batch=max_batch).run_all(images)
    reference = images
    if spec.native:
        cpu = replace(spec, native=None, roi=None)  # the frames are the ROI already
        reference = np.stack([preprocess(frame, cpu) for frame in images])
    ref_map, ref_score = reference_outputs(model, reference, device)
    result = {
        "images": int(len(images)),
        "score_rel_err": relative_error(ort_out.score, ref_score),
        "map_rel_err": relative_error(ort_out.anomaly_map, ref_map),
        "tolerance": tolerance,
        "backend": "onnxruntime CPUExecutionProvider",
        "torch_device": str(device or "cpu"),
        **({"against": "PyTorch on the frames resized by edge_infer.preprocess (CPU path)"} if spec.native else {}),
    }
    worst = max(result["score_rel_err"], result["map_rel_err"])
    if not worst <= tolerance:
        raise LinesideError(
            f"{onnx_path} disagrees with PyTorch: max relative error {worst:.3g} > tolerance {tolerance:g}. "
            "The export is refused; report this with the run, or raise --tolerance if the difference is understood"
        )
    return result


@torch.no_grad()
def reference_outputs(model: torch.nn.Module, images: np.ndarray, device=None) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's map and score for ``images`` on ``device``, in true FP32 (no TF32 on a GPU), back on the CPU."""
    device = device or torch.device("cpu")
    if device.type == "cpu":
        return tuple(t.numpy() for t in model(torch.from_numpy(images)))
    matmul = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            model.to(device)
            outs = model(torch.from_numpy(images).to(device))
            return tuple(t.float().cpu().numpy() for t in outs)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        model.cpu()


def parity_batch(data: str | None, record: dict, spec: InputSpec, count: int) -> np.ndarray:
    """Real images for the parity check: validation (good) and test images of the run's data."""
    if not data:
        raise LinesideError("the run does not say where its images are: give --data DIR for the parity check")
    split = run_split(record, data)
    samples = split.val[: count // 2] + split.test[:: max(1, len(split.test) // max(1, count - count // 2))]
    # frames at the native size for a native graph; every tile of each image for a tiled one
    images, _ = load_inputs([s.path for s in samples[:count]], spec)
    if not len(images):
        raise LinesideError(f"no readable image in {data} for the parity check: give --data with real images")
    return images


def new_station_scale(model: torch.nn.Module, record: dict, data: str, spec: InputSpec, count: int = 200) -> dict:
    """A zero-shot run's record with the score scale of the station it is exported for.

    The normalisation and the provisional threshold come from the validation good scores;
    for a run trained on other stations those would be the wrong station's. They are
    replaced by the scores of the new station's own good images (train and validation
    parts, up to ``count``, evenly spaced), which the run never trained on.
    """
    from .infer import predict

    split = run_split(record, data)
    goods = [s for s in split.train + split.val if s.label == 0]
    goods = goods[:: max(1, len(goods) // count)][:count]
    scores = predict(model, goods, spec, progress="good images of the new station").scores
    if not len(scores):
        raise LinesideError(f"no readable good image in {data}: a zero-shot bundle takes its threshold from the "
                            "new station's good images; give --data with the station's train/good images")
    training = dict(record["training"])
    training["training_stations_good_scores"] = training.pop("validation_good_scores", None)
    training["validation_good_scores"] = {**summarise(scores), "source": f"good images of {data} (the new station, "
                                          "not trained on)"}
    return {**record, "training": training}


def make_manifest(record: dict, spec: InputSpec, max_batch: int) -> Manifest:
    from lineside import __version__

    good = record["training"].get("validation_good_scores", {})
    # A scale needs a spread of good scores: with one validation image (or all alike) q50 == q99,
    # which the runtime's ScoreScale refuses, so such a bundle publishes raw scores instead.
    spread = bool(good) and good["q99"] > good["q50"]
    normalization = ({"method": "good_quantiles", "q50": good["q50"], "q99": good["q99"], "n": good["n"]}
                     if spread else {"method": "none"})
    return Manifest(
        lineside_version=__version__,
        model=ModelInfo(family=record["family"], name=f"{record['family']}-{spec.height}x{spec.width}",
                        version=record["weights_sha256"][:12], config=record["config"],
                        training={"data": record["data"], **{k: v for k, v in record["training"].items()
                                                              if k != "skipped_images"}}),
        input=InputInfo(height=spec.height, width=spec.width, channels=spec.channels,
                        roi=list(spec.roi) if spec.roi else None, max_batch=max_batch,
                        layout="NHWC" if spec.native else "NCHW", native=list(spec.native) if spec.native else None,
                        tiles=spec.tiles.to_dict() if spec.tiles else None),
        outputs=OutputInfo(map_height=spec.height, map_width=spec.width),
        score_normalization=normalization,
    )


def provisional_thresholds(record: dict) -> Thresholds:
    """A first threshold (99th percentile of validation good scores) until `lineside calibrate` sets one."""
    good = record["training"].get("validation_good_scores")
    if not good:
        return Thresholds(provenance={"method": "none", "note": "no validation images: run `lineside calibrate`"})
    return Thresholds(image=good["q99"], provenance={
        "method": f"provisional: 99th percentile of {good.get('source', 'validation good scores')}",
        "images": good["n"],
        "note": "set the station's threshold with `lineside calibrate`"})


def prepare_out(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()):
        if not force:
            raise LinesideError(f"{out} exists and is not empty: choose another --out or pass --force to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

