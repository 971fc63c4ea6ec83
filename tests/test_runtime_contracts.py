"""The contracts in edge_infer: preprocessing, bundle, backend, decision, `lineside score`."""

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from tiny_bundle import gray
from edge_infer.bundle import Bundle, Thresholds
from edge_infer.decide import decide
from edge_infer.errors import ImageReadError, LinesideError
from edge_infer.imageio import decode_image, read_image
from edge_infer.preprocess import InputSpec, preprocess
from edge_infer.score import Scorer


def test_preprocess_gray_to_rgb_nchw():
    out = preprocess(gray(7, (50, 60)), InputSpec(32, 40, 3))
    assert out.shape == (3, 32, 40) and out.dtype == np.uint8 and (out == 7).all()


def test_preprocess_bgr_becomes_rgb_and_gray_model_gets_one_channel():
    bgr = np.zeros((10, 10, 3), np.uint8)
    bgr[..., 0] = 200  # blue
    rgb = preprocess(bgr, InputSpec(8, 8, 3))
    assert rgb[2].min() == 200 and rgb[0].max() == 0
    assert preprocess(bgr, InputSpec(8, 8, 1)).shape == (1, 8, 8)


def test_preprocess_roi_crops_before_resize_and_rejects_roi_outside():
    image = np.zeros((100, 100), np.uint8)
    image[10:30, 20:60] = 255
    out = preprocess(image, InputSpec(8, 8, 1, roi=(20, 10, 40, 20)))
    assert out.min() == 255
    with pytest.raises(LinesideError, match="outside"):
        preprocess(image, InputSpec(8, 8, 1, roi=(90, 90, 40, 20)))


def test_decode_rejects_corrupt_payload_and_reads_16_bit(tmp_path):
    with pytest.raises(ImageReadError, match="not a decodable"):
        decode_image(b"\x89PNG not really", "x.png")
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((8, 8), 0x1234, np.uint16))
    assert read_image(path).dtype == np.uint8 and read_image(path)[0, 0] == 0x12
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_bundle_refuses_tampered_file(tiny_bundle):
    Bundle.load(tiny_bundle)
    with open(tiny_bundle / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(LinesideError, match="does not match the sha256"):
        Bundle.load(tiny_bundle)


def test_decide_thresholds_and_regions():
    amap = np.zeros((1, 20, 20), np.float32)
    amap[0, 2:5, 3:9] = 0.9
    v = decide(0.9, amap, Thresholds(image=0.5, pixel=0.5))
    assert v.status == "NG" and len(v.regions) == 1
    r = v.regions[0]
    assert (r.x, r.y, r.width, r.height, r.area) == (3, 2, 6, 3, 18) and r.peak == pytest.approx(0.9)
    assert decide(0.4, amap, Thresholds(image=0.5)).status == "OK"
    assert decide(0.4, amap, Thresholds()).status == "ERROR"
    assert decide(float("nan"), amap, Thresholds(image=0.5)).status == "ERROR"


def test_regions_of_a_noisy_map_are_the_largest_kept_ones_with_their_peaks():
    """Hundreds of specks: the regions are those of at least min_area, largest first (ties in
    label order), at most 16, each with the highest map value inside it (not its box)."""
    import cv2

    rng = np.random.default_rng(3)
    for case in range(20):
        amap = cv2.GaussianBlur(rng.random((224, 224)).astype(np.float32), (0, 0), float(rng.uniform(0.6, 3)))
        th = Thresholds(image=0.0, pixel=float(np.quantile(amap, rng.uniform(0.6, 0.9))), min_area=int(case % 4))
        _, labels, stats, _ = cv2.connectedComponentsWithStats((amap > th.pixel).astype(np.uint8), connectivity=8)
        want = sorted(((int(stats[i, 4]), i) for i in range(1, len(stats)) if stats[i, 4] >= th.min_area),
                      key=lambda t: -t[0])[:16]
        got = decide(1.0, amap[None], th).regions
        assert [(r.x, r.y, r.width, r.height, r.area) for r in got] == [tuple(int(v) for v in stats[i]) for _, i in want]
        assert [r.peak for r in got] == [float(amap[labels == i].max()) for _, i in want]


def test_scorer_gives_one_verdict_per_path_and_errors_for_corrupt(tiny_bundle, tmp_path):
    cv2.imwrite(str(tmp_path / "a_dark.png"), gray(10))
    cv2.imwrite(str(tmp_path / "b_bright.png"), gray(250))
    (tmp_path / "c_corrupt.png").write_bytes(b"garbage")
    paths = sorted(tmp_path.glob("*.png"))
    results = list(Scorer(tiny_bundle).score_paths(paths, batch=2))
    assert [r.verdict.status for r in results] == ["OK", "NG", "ERROR"]
    assert results[1].verdict.score == pytest.approx(250 / 255, rel=1e-5)
    assert set(results[0].verdict.latency_ms) == {"decode", "preprocess", "compute", "postprocess"}


def test_backend_refuses_wrong_shape(tiny_bundle):
    scorer = Scorer(tiny_bundle)
    with pytest.raises(LinesideError, match="does not match the bundle's input"):
        scorer.backend.run(np.zeros((1, 1, 32, 32), np.uint8))
    with pytest.raises(LinesideError, match="uint8"):
        scorer.backend.run(np.zeros((1, 3, 32, 32), np.float32))


def test_cli_score_json_and_clear_errors(tiny_bundle, tmp_path):
    cv2.imwrite(str(tmp_path / "bright.png"), gray(250))
    run = lambda *a: subprocess.run([sys.executable, "-m", "lineside", *a], capture_output=True, text=True)
    done = run("score", str(tiny_bundle), str(tmp_path / "bright.png"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["status"] == "NG"
    missing = run("score", str(tmp_path / "nope"), str(tmp_path / "bright.png"))
    assert missing.returncode == 2 and "not a bundle" in missing.stderr and "Traceback" not in missing.stderr


def test_run_all_splits_into_the_graph_batches_and_load_inputs_skips_unreadable(tmp_path):
    from edge_infer.preprocess import load_inputs
    from tiny_bundle import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "b", max_batch=2)
    levels = [10, 60, 110, 160, 210]
    for i, level in enumerate(levels):
        cv2.imwrite(str(tmp_path / f"{i}.png"), gray(level))
    (tmp_path / "9_corrupt.png").write_bytes(b"garbage")
    images, kept = load_inputs(sorted(tmp_path.glob("*.png")), InputSpec(32, 32, 3))
    assert images.shape == (5, 3, 32, 32) and kept == [0, 1, 2, 3, 4]
    out = Scorer(bundle).backend.run_all(images)  # 5 images through a graph that takes at most 2
    np.testing.assert_allclose(out.score, np.array(levels) / 255, rtol=1e-5)
    assert out.anomaly_map.shape == (5, 1, 32, 32)


def test_a_run_with_one_validation_score_exports_a_bundle_the_runtime_accepts():
    """q50 == q99 (one validation image) is no scale: the manifest says 'none' instead of one the runtime refuses."""
    from edge_infer.preprocess import InputSpec
    from edge_infer.score_scale import ScoreScale
    from train_host.export import make_manifest

    record = {"family": "rx", "weights_sha256": "0" * 64, "config": {}, "data": "d",
              "training": {"validation_good_scores": {"q50": 3.0, "q99": 3.0, "n": 1}}}
    manifest = make_manifest(record, InputSpec(32, 32, 3), max_batch=1)
    assert manifest.score_normalization == {"method": "none"}
    assert ScoreScale(manifest.score_normalization)(5.0) == 5.0
