"""`lineside build-engine BUNDLE`: a TensorRT engine for this device, from the bundle's ONNX.

TensorRT 10 Python API. Precision lives in the ONNX (an FP16 graph, or QDQ nodes for
INT8), so the network is created STRONGLY_TYPED: TensorRT keeps the graph's types
instead of choosing its own, the only mode TensorRT 11 has (it drops the FP16/INT8
builder flags and the INT8 calibrators). ``--weakly-typed`` restores the 10.x flags
where the installed version still has them. The engine is tied to this TensorRT and
this GPU, which its sidecar JSON records; after the build its outputs are compared
with onnxruntime's on real images, and an engine that disagrees is deleted.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from edge_infer.backends import standin
from edge_infer.backends.base import relative_error
from edge_infer.backends.engine_meta import current_environment, engine_path, write_sidecar
from edge_infer.backends.tensorrt import import_tensorrt
from edge_infer.bundle import Bundle
from edge_infer.errors import LinesideError
from edge_infer.imageio import list_images
from edge_infer.preprocess import load_inputs

TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2, "int8": 0.15}  # max relative error vs onnxruntime on the CPU


def main(args) -> int:
    bundle = Bundle.load(args.bundle)
    precision = args.precision or default_precision(bundle)
    if standin.enabled():  # tests only: say so loudly, write where the real build writes
        result = standin.build(bundle, precision)
        print(f"built {result['engine']} with the TEST STAND-IN builder ({standin.ENV}=1): a copy of the ONNX graph, "
              f"run by ONNX Runtime as backend {standin.BACKEND}; not a TensorRT engine")
        return 0
    result = build_engine(bundle, precision, batch=args.batch, workspace_mib=args.workspace,
                          timing_cache=Path(args.timing_cache).expanduser(), dla_core=args.dla_core,
                          weakly_typed=args.weakly_typed, images=args.images, check_images=args.check_images,
                          tolerance=args.tolerance)
    check = result["check"]
    print(f"built {result['engine']} ({result['build_seconds']:.0f} s, TensorRT {result['tensorrt_version']}, "
          f"{result['gpu_name']} sm {result['compute_capability']}); vs onnxruntime on {check['images']} "
          f"{check['source']} images: score rel. error {check['score_rel_err']:.2e}, map {check['map_rel_err']:.2e}")
    if result.get("dla"):
        print(f"DLA core {args.dla_core}: {result['dla']['on_dla']} of {result['dla']['layers']} layers can run "
              f"on the DLA, the rest falls back to the GPU (list in {result['engine']}.layers.json)")
    print(f"next: `lineside score {bundle.root} IMAGES --backend tensorrt --precision {precision}`")
    return 0


def default_precision(bundle: Bundle) -> str:
    """fp16 when the bundle has an fp16 graph (what Jetsons run fastest), else fp32."""
    return "fp16" if "fp16" in bundle.manifest.variants else "fp32"


def build_engine(bundle: Bundle, precision: str = "fp16", batch: tuple[int, int, int] | None = None,
                 workspace_mib: int = 1024, timing_cache: Path | None = None, dla_core: int | None = None,
                 weakly_typed: bool = False, images: str | None = None, check_images: int = 16,
                 tolerance: float | None = None) -> dict:
    onnx_path = bundle.model_path(precision)
    conversion = bundle.manifest.files[onnx_path.name].checks.get("conversion", {})
    if conversion.get("symmetric_activations") is False:
        raise LinesideError(f"{onnx_path.name} has asymmetric (u8) activations, made for x86 CPUs; TensorRT needs "
                            "symmetric INT8: re-export with `--int8-activations s8`")
    trt = import_tensorrt()
    spec, max_batch = bundle.input_spec, bundle.manifest.input.max_batch
    lo, opt, hi = batch or (1, 1, max_batch)
    if not 1 <= lo <= opt <= hi <= max_batch:
        raise LinesideError(f"--batch {lo},{opt},{hi} must satisfy 1 <= min <= opt <= max <= {max_batch} "
                            "(the bundle's max batch)")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_flags(trt, weakly_typed))
    parse_onnx(trt, network, logger, onnx_path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # layer names for the inspector
    if weakly_typed:
        set_legacy_precision(trt, config, precision)
    profile = builder.create_optimization_profile()
    shape = spec.graph_shape
    profile.set_shape("image", (lo, *shape), (opt, *shape), (hi, *shape))
    config.add_optimization_profile(profile)
    cache = load_timing_cache(config, timing_cache)
    dla = use_dla(trt, builder, config, network, dla_core) if dla_core is not None else None

    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise LinesideError(f"TensorRT could not build an engine from {onnx_path} (its log above says why); try "
                            "a larger --workspace, or another --precision")
    seconds = time.monotonic() - started
    if timing_cache is not None:
        save_timing_cache(cache, timing_cache)
    engine = engine_path(bundle.root, precision)
    engine.parent.mkdir(parents=True, exist_ok=True)
    engine.write_bytes(bytes(serialized))
    layers = inspect_layers(trt, logger, serialized)
    Path(f"{engine}.layers.json").write_text(json.dumps(layers, indent=1))
    environment = current_environment()
    build = {"precision": precision, "onnx": onnx_path.name, "strongly_typed": not weakly_typed,
             "batch": [lo, opt, hi], "workspace_mib": workspace_mib, "dla_core": dla_core, "dla": dla,
             "build_seconds": round(seconds, 1), "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "built_ns": time.time_ns()}
    onnx_sha = bundle.model_sha256(precision)
    write_sidecar(engine, onnx_path, onnx_sha, environment, build)
    try:
        check = compare_with_onnxruntime(bundle, precision, engine, images, check_images,
                                         tolerance if tolerance is not None else TOLERANCE[precision])
    except LinesideError:
        engine.unlink(missing_ok=True)
        raise
    meta = write_sidecar(engine, onnx_path, onnx_sha, environment, {**build, "check": check})
    return {**meta, "engine": str(engine)}


def network_flags(trt, weakly_typed: bool) -> int:
    if weakly_typed:
        return 0  # TensorRT 10 networks are explicit-batch always; no flag needed
    if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
        raise LinesideError(f"TensorRT {trt.__version__} cannot build strongly typed networks (TensorRT >= 9 can): "
                            "upgrade TensorRT, or pass --weakly-typed")
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def parse_onnx(trt, network, logger, onnx_path: Path) -> None:
    """Parse the ONNX; every parser error is reported with the node it is about."""
    parser = trt.OnnxParser(network, logger)
    if parser.parse_from_file(str(onnx_path)):
        return
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        lines.append(f"  node {error.node()} ({error.node_name() or '?'}, {error.node_operator() or '?'}): "
                     f"{error.desc()} [{error.code()}]")
    raise LinesideError(f"TensorRT's ONNX parser rejects {onnx_path}:\n" + "\n".join(lines) +
                        "\nre-export with a supported opset, or keep the named ops out of this precision variant")


def set_legacy_precision(trt, config, precision: str) -> None:
    """The TensorRT 10 builder flags, for a weakly typed build; TensorRT 11 has none."""
    if precision == "fp32":
        return
    flag = getattr(trt.BuilderFlag, precision.upper(), None)
    if flag is None:
        raise LinesideError(f"TensorRT {trt.__version__} has no {precision.upper()} builder flag (TensorRT 11 removed "
                            "them): build strongly typed (drop --weakly-typed); the precision is in the ONNX")
    config.set_flag(flag)


def load_timing_cache(config, path: Path | None):
    """Reuse timing measurements across builds: later builds of similar networks take seconds."""
    blob = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(blob)
    config.set_timing_cache(cache, ignore_mismatch=False)
    return cache


def save_timing_cache(cache, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(cache.serialize()))


def use_dla(trt, builder, config, network, core: int) -> dict:
    """Put layers on a DLA core, the GPU taking what the DLA cannot run; report which go where."""
    if builder.num_DLA_cores == 0:
        raise LinesideError("this device has no DLA cores (Jetson AGX/NX Orin have them, Orin Nano does not): "
                            "drop --dla-core")
    if not 0 <= core < builder.num_DLA_cores:
        raise LinesideError(f"--dla-core {core} does not exist: this device has cores 0..{builder.num_DLA_cores - 1}")
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    on_gpu = [f"{layer.name} ({layer.type})" for layer in layers if not config.can_run_on_DLA(layer)]
    return {"core": core, "layers": len(layers), "on_dla": len(layers) - len(on_gpu), "gpu_fallback": on_gpu}


def inspect_layers(trt, logger, serialized) -> dict:
    """The built engine's layers, as TensorRT's engine inspector describes them."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


def compare_with_onnxruntime(bundle: Bundle, precision: str, engine: Path, images: str | None, count: int,
                             tolerance: float) -> dict:
    """Run the engine and onnxruntime (CPU) on the same images; refuse past ``tolerance``."""
    from edge_infer.backends.ort import OrtBackend
    from edge_infer.backends.tensorrt import TensorRTBackend

    batch, source = check_batch(bundle, images, count)
    max_batch = bundle.manifest.input.max_batch
    reference = OrtBackend(bundle.model_path(precision), bundle.input_spec, max_batch)
    with TensorRTBackend(engine, bundle.model_sha256(precision), bundle.input_spec, max_batch) as trt_backend:
        got = trt_backend.run_all(batch)
    ref = reference.run_all(batch)
    check = {"images": int(len(batch)), "source": source, "reference": "onnxruntime CPUExecutionProvider",
             "score_rel_err": relative_error(got.score, ref.score),
             "map_rel_err": relative_error(got.anomaly_map, ref.anomaly_map), "tolerance": tolerance}
    if not max(check["score_rel_err"], check["map_rel_err"]) <= tolerance:
        raise LinesideError(f"the {precision} engine disagrees with onnxruntime on {check['images']} images (score "
                            f"rel. error {check['score_rel_err']:.3g}, map {check['map_rel_err']:.3g} > {tolerance:g}): "
                            "the engine was deleted. Try another --precision or --weakly-typed, or report it with the bundle")
    return check


def check_batch(bundle: Bundle, images: str | None, count: int) -> tuple[np.ndarray, str]:
    """Real images from ``images`` (a folder of the station's images), else labelled synthetic ones."""
    spec = bundle.input_spec
    if images:
        arrays, _ = load_inputs(list_images(images)[:count], spec)
        if not len(arrays):
            raise LinesideError(f"no images in {images} for the engine check: give --images a folder of station images")
        return arrays, f"station ({images})"
    rng = np.random.default_rng(0)  # without station images: flat greys and smooth noise, said as such
    shape = spec.graph_shape
    arrays = [np.full(shape, v, np.uint8) for v in (0, 64, 128, 192, 255)]
    arrays += [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(max(0, count - len(arrays)))]
    return np.stack(arrays[:max(count, 1)]), "synthetic (no --images given)"


