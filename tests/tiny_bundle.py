"""A torch-free bundle for tests whose model meets the I/O contract:
its anomaly map is the image's brightness (0..1) and its score the map's maximum, so a
test knows exactly which verdict each image must get."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_tiny_bundle(root: Path, height: int = 32, width: int = 32, channels: int = 3,
                     image_threshold: float | None = 0.5, max_batch: int = 8, ballast_mb: int = 0,
                     stall_per_level: int | None = None, tiles: dict | None = None, ramp: bool = False) -> Path:
    """``ballast_mb``: about that many MB of convolution weights whose result adds 0 to the score,
    for tests that need a model whose loading costs memory as a real one's does (slow to run).
    ``stall_per_level``: the graph also runs an ONNX Loop of (brightest pixel x this) empty
    iterations, so a black frame scores at once and a bright one keeps the worker busy for
    minutes: a real model whose scoring hangs, for the watchdog test.
    ``tiles``: {size, overlap} recorded in the manifest: the runtime then scores the frame's tiles.
    ``ramp``: the map is the brightness times a ramp over the input's pixels (1/(h*w) .. 1), so the
    same frame pixel gets a different value in each overlapping tile (stitching tests)."""
    import onnx
    from onnx import TensorProto, helper

    from edge_infer.bundle import Bundle, InputInfo, Manifest, ModelInfo, OutputInfo, Thresholds

    root.mkdir(parents=True, exist_ok=True)
    map_name = "anomaly_map" if stall_per_level is None else "plain_map"
    nodes = [
        helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["f", "axes1"], ["m"], keepdims=1),
        helper.make_node("Div", ["m", "c255"], ["flat_map" if ramp else map_name]),
        *([helper.make_node("Mul", ["flat_map", "ramp"], [map_name])] if ramp else []),
        helper.make_node("ReduceMax", ["anomaly_map", "axes123"], ["score"] if not ballast_mb else ["peak"],
                         keepdims=0),
    ]
    ballast = []
    if ballast_mb:  # 1x1 convolutions of 4 MB each, whose result is multiplied by 0 (ONNX Runtime
        # prepacks convolution weights at load, as it does a real model's: that is the memory that counts)
        width_c, layers, x = 1024, max(1, ballast_mb // 4), "f"
        rng = np.random.default_rng(0)
        for i in range(layers):
            c_in = channels if i == 0 else width_c
            w = (rng.standard_normal((width_c, c_in, 1, 1)) * 1e-3).astype(np.float32)
            ballast.append(helper.make_tensor(f"w{i}", TensorProto.FLOAT, list(w.shape), w.tobytes(), raw=True))
            nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"]))
            x = f"c{i}"
        ballast.append(helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]))
        nodes += [helper.make_node("ReduceMax", [x], ["ballast_max"], keepdims=0),
                  helper.make_node("Mul", ["ballast_max", "zero"], ["nothing"]),
                  helper.make_node("Add", ["peak", "nothing"], ["score"])]
    extra = []
    if stall_per_level is not None:
        body = helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
             helper.make_node("Add", ["v_in", "one"], ["v_out"])], "spin",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [])],
            [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
             helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [])],
            initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])])
        nodes[-1:-1] = [
            helper.make_node("ReduceMax", ["f"], ["brightest"], keepdims=0),
            helper.make_node("Mul", ["brightest", "per_level"], ["trips_f"]),
            helper.make_node("Cast", ["trips_f"], ["trips"], to=TensorProto.INT64),
            helper.make_node("Loop", ["trips", "true", "stall_zero"], ["spun"], body=body),
            helper.make_node("Mul", ["spun", "stall_zero"], ["stall_nothing"]),
            helper.make_node("Add", ["plain_map", "stall_nothing"], ["anomaly_map"]),
        ]
        extra = [helper.make_tensor("per_level", TensorProto.FLOAT, [], [float(stall_per_level)]),
                 helper.make_tensor("true", TensorProto.BOOL, [], [True]),
                 helper.make_tensor("stall_zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["N", channels, height, width])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, height, width]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])],
        initializer=[helper.make_tensor("axes1", TensorProto.INT64, [1], [1]),
                     helper.make_tensor("axes123", TensorProto.INT64, [3], [1, 2, 3]),
                     helper.make_tensor("c255", TensorProto.FLOAT, [], [255.0]), *ballast, *extra,
                     *([helper.make_tensor("ramp", TensorProto.FLOAT, [1, 1, height, width],
                                           np.arange(1, height * width + 1) / (height * width))] if ramp else [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, root / "model.onnx")

    manifest = Manifest(
        model=ModelInfo(family="tiny", name="brightness", version="test"),
        input=InputInfo(height=height, width=width, channels=channels, max_batch=max_batch, tiles=tiles),
        outputs=OutputInfo(map_height=height, map_width=width),
    )
    bundle = Bundle(root, manifest)
    bundle.add_file("model.onnx", "model", "tests/tiny_bundle.py make_tiny_bundle", precision="fp32")
    bundle.write_thresholds(Thresholds(image=image_threshold), "tests/tiny_bundle.py")
    return root


def gray(value: int, size=(40, 48)) -> np.ndarray:
    return np.full(size, value, np.uint8)
