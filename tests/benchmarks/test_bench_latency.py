"""`lineside bench latency` on the torch-free tiny bundle: every combination is either
measured or listed with its reason, and the reports are well-formed. No timing asserts."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from tiny_bundle import make_tiny_bundle

from benchmarks.images import load_images
from benchmarks.latency import parse_batches, parse_list
from edge_infer.errors import LinesideError
from lineside.cli import main as lineside

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def image_dir(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        cv2.imwrite(str(folder / f"im{i}.png"), rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    return folder


def run_bench(bundle, out, *extra) -> dict:
    code = lineside(["bench", "latency", str(bundle), "--iterations", "5", "--warmup", "0",
                     "--out", str(out), *extra])
    assert code == 0
    return json.loads((out / "latency.json").read_text())


def test_latency_report_is_complete(tmp_path, image_dir, capsys):
    bundle = make_tiny_bundle(tmp_path / "bundle", max_batch=4)
    doc = run_bench(bundle, tmp_path / "out", "--images", str(image_dir), "--batch", "1,4,8")

    for field in ("schema", "kind", "created", "command", "argv", "machine", "bundle", "images", "settings"):
        assert field in doc
    assert doc["command"].startswith(f"lineside bench latency {bundle} ")
    assert "--iterations 5" in doc["command"] and "--duration" not in doc["command"]
    m = doc["machine"]
    assert m["cpu"]["model"] and m["cpu"]["logical_cores"] >= 1
    assert "onnxruntime" in m["libraries"] and "numpy" in m["libraries"]
    assert "devices" in m["gpu"] and "jetson" in m
    assert doc["images"]["count"] == 6

    results = {r["key"]: r for r in doc["results"]}
    # 5 backends × 3 precisions × 3 batches, each measured or skipped — none silently missing
    assert len(results) == 45
    for b in (1, 4):
        r = results[f"ort-cpu/fp32/b{b}"]
        assert r["status"] == "ok" and r["iterations"] == 5 and r["images"] == 5 * b
        assert len(r["samples_ms"]["total"]) == 5
        assert r["latency_ms"]["min"] <= r["latency_ms"]["p50"] <= r["latency_ms"]["p99"] <= r["latency_ms"]["max"]
        assert r["throughput_ips"] > 0
        stages = r["stages_ms"]
        assert list(stages) == ["decode", "preprocess", "h2d", "compute", "d2h", "postprocess"]
        assert stages["h2d"]["status"].startswith("not applicable")  # CPU: no invented copy times
        assert stages["compute"]["count"] == 5
        assert r["threshold"]["source"] == "bundle"
    assert "max_batch 4" in results["ort-cpu/fp32/b8"]["reason"]
    assert "no int8 variant" in results["ort-cpu/int8/b1"]["reason"]
    assert "--run" in results["torch/fp32/b1"]["reason"]
    assert "fp32 model only" in results["torch/fp16/b1"]["reason"]
    if "CUDAExecutionProvider" not in m["libraries"]["onnxruntime_providers"]:
        assert "onnxruntime-gpu" in results["ort-cuda/fp32/b1"]["reason"]

    png = tmp_path / "out" / "latency.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "ort-cpu/fp32/b1" in out and "not run here:" in out and "n/a" in out


def test_bundle_without_threshold_times_postprocess_at_the_median(tmp_path, image_dir):
    bundle = make_tiny_bundle(tmp_path / "bundle", image_threshold=None)
    doc = run_bench(bundle, tmp_path / "out", "--images", str(image_dir), "--backend", "ort-cpu",
                    "--precision", "fp32", "--batch", "1")
    r = doc["results"][0]
    assert r["status"] == "ok" and "median of warm-up" in r["threshold"]["source"]
    assert r["threshold"]["image"] is not None


def test_nothing_runnable_exits_1_with_reasons(tmp_path, image_dir, capsys):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    code = lineside(["bench", "latency", str(bundle), "--images", str(image_dir), "--precision", "int8",
                     "--iterations", "2", "--out", str(tmp_path / "out")])
    assert code == 1
    assert "no int8 variant" in capsys.readouterr().out
    assert (tmp_path / "out" / "latency.png").is_file()


def test_bad_options_are_named():
    with pytest.raises(LinesideError, match="cuda"):
        parse_list("ort-cpu,cuda", ("ort-cpu", "ort-cuda"), "--backend")
    with pytest.raises(LinesideError, match="positive integers"):
        parse_batches("1,0")
    assert parse_batches("8,1,8") == [8, 1]
    with pytest.raises(LinesideError, match="not a folder"):
        load_images("/nonexistent/folder")


def test_images_rotate_and_bad_files_are_named(image_dir):
    images = load_images(image_dir, limit=4)
    assert len(images.payloads) == 4 and images.names[0] == "im0.png" and images.names[-1] == "im5.png"
    first = images.take(3) + images.take(3)
    assert first[:4] == images.payloads and first[4:] == images.payloads[:2]
    (image_dir / "im9.png").write_bytes(b"not a png")
    with pytest.raises(LinesideError, match="im9.png"):
        load_images(image_dir)


def test_default_images_are_elpv_and_torch_is_never_imported(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "bundle")
    code = (
        "import sys\n"
        "from lineside.cli import main\n"
        f"rc = main(['bench', 'latency', {str(bundle)!r}, '--backend', 'ort-cpu', '--precision', 'fp32', "
        f"'--batch', '1', '--iterations', '3', '--warmup', '0', '--max-images', '8', '--out', {str(tmp_path / 'o')!r}])\n"
        "assert rc == 0, rc\n"
        "assert 'torch' not in sys.modules, 'benchmarks imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "o" / "latency.json").read_text())
    assert doc["images"]["source"].startswith("ELPV") and "non-commercial" in doc["images"]["licence"]


def test_latency_of_a_tiled_bundle_counts_every_tile_of_a_frame(tmp_path, capsys):
    """A tiled bundle is timed per frame as serve scores it: 2 frames × 6 tiles, in graph batches of 4."""
    folder = tmp_path / "frames"
    folder.mkdir()
    cv2.imwrite(str(folder / "f.png"), np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8))
    bundle = make_tiny_bundle(tmp_path / "bundle", max_batch=4, tiles={"size": 32, "overlap": 4})
    doc = run_bench(bundle, tmp_path / "out", "--images", str(folder), "--batch", "2", "--backend", "ort-cpu",
                    "--precision", "fp32")
    assert doc["bundle"]["input"]["tiles"] == {"size": 32, "overlap": 4}
    (result,) = doc["results"]
    assert result["status"] == "ok" and result["images"] == 5 * 2  # frames, not tiles
    assert "tiles of 32 px overlapping 4 px" in capsys.readouterr().out
