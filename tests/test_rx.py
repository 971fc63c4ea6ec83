"""The rx detector, training runs, evaluation and export through the CLI's code paths."""

import json

import numpy as np
import pytest
import torch

from edge_infer.bundle import Bundle
from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from mvtec_fixture import make_mvtec
from train_host.data import load_split, make_loader
from train_host.models import rx

SMALL = {"feature_dim": 24, "sigma": 1.0}
SPEC = InputSpec(64, 64, 3)


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "cells")


@pytest.fixture(scope="module")
def run(category, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rx"
    assert cli(["train", "rx", "--data", str(category), "--out", str(out), "--size", "64",
                "--feature-dim", "24", "--sigma", "1", "--threads", "2"]) == 0
    return out


def fitted(split, batch_size):
    class Context:
        log = staticmethod(lambda *_: None)
        def loader(self, samples, progress="", **_):
            return iter(make_loader(samples, SPEC, batch_size=batch_size))
    context = Context()
    context.split = split
    model = rx.build(SMALL, SPEC)
    rx.fit_gaussians(model, context)
    return model


def test_streaming_fit_does_not_depend_on_batching(category):
    split = load_split(category)
    a, b = fitted(split, 3), fitted(split, 16)
    assert torch.allclose(a.mean, b.mean, atol=1e-5)
    assert torch.allclose(a.whiten, b.whiten, rtol=1e-3, atol=1e-4)


def test_distance_is_mahalanobis_under_the_shrunk_covariance(category):
    model = fitted(load_split(category), 8)
    x = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8)
    feats = model.features(x)  # N×L×d
    precision = model.whiten @ model.whiten.transpose(1, 2)  # L×d×d
    diff = feats - model.mean
    direct = torch.einsum("nld,lde,nle->nl", diff, precision, diff).sqrt()
    centred = diff.transpose(0, 1)
    ours = torch.bmm(centred, model.whiten).pow(2).sum(-1).sqrt().transpose(0, 1)
    assert torch.allclose(direct, ours, rtol=1e-3)


def test_trained_rx_finds_synthetic_defects(run, category, tmp_path):
    out = tmp_path / "metrics.json"
    assert cli(["evaluate", str(run), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["image_auroc"] > 0.9
    assert metrics["pixel_auroc"] > 0.9 and 0 < metrics["au_pro_30"] <= 1
    record = json.loads((run / "run.json").read_text())
    assert record["training"]["backbone_weights"]["weights"] is None  # random init is recorded


def test_export_scores_the_same_verdicts_as_pytorch(run, category, tmp_path):
    bundle_dir = tmp_path / "bundle"
    assert cli(["export", str(run), "--out", str(bundle_dir)]) == 0
    bundle = Bundle.load(bundle_dir)
    parity = bundle.manifest.files["model.onnx"].checks["parity"]
    assert parity["score_rel_err"] < 1e-3 and parity["images"] > 0
    assert bundle.manifest.model.family == "rx" and bundle.thresholds.image is not None

    from train_host.infer import predict
    from train_host.run import load_run

    model, _ = load_run(run)
    samples = load_split(category).test
    torch_scores = predict(model, samples, SPEC).scores
    scored = list(Scorer(bundle).score_paths([s.path for s in samples], batch=4))
    onnx_scores = np.array([s.verdict.score for s in scored])
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4)
    threshold = bundle.thresholds.image
    assert [s.verdict.status == "NG" for s in scored] == list(torch_scores > threshold)


def test_export_refuses_existing_folder_without_force(run, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("x")
    with pytest.raises(LinesideError, match="--force"):
        from train_host.export import export_bundle
        export_bundle(run, tmp_path / "b")


def test_bad_data_gets_clear_errors(tmp_path, capsys):
    assert cli(["train", "rx", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "missing" in capsys.readouterr().err
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)
    (tmp_path / "empty" / "test" / "good").mkdir(parents=True)
    assert cli(["train", "rx", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "train/good" in capsys.readouterr().err


def test_corrupt_training_image_is_reported_not_fatal(tmp_path):
    root = make_mvtec(tmp_path / "cat", n_train=6, n_good=2, n_defect=2)
    (root / "train/good/999.png").write_bytes(b"not a png")
    out = tmp_path / "run"
    assert cli(["train", "rx", "--data", str(root), "--out", str(out), "--size", "64",
                "--feature-dim", "16", "--val-share", "0"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert any(p.endswith("999.png") for p in record["training"]["skipped_images"])


def test_backbone_weights_load_from_official_layout_and_refuse_others(tmp_path):
    import timm
    from safetensors.torch import save_file

    from train_host.backbones import feature_extractor, load_backbone_weights

    full = timm.create_model("resnet18", pretrained=False)  # torchvision/timm key layout, with fc
    torch.nn.init.normal_(full.conv1.weight)
    save_file(full.state_dict(), str(tmp_path / "resnet18.safetensors"))
    backbone = feature_extractor("resnet18", (1, 2, 3))
    info = load_backbone_weights(backbone, tmp_path / "resnet18.safetensors")
    # stages past the last feature stage are not in the extractor: reported, not loaded
    assert info["unexpected_keys_ignored"] and all(k.startswith("layer4.") for k in info["unexpected_keys_ignored"])
    assert torch.equal(backbone.conv1.weight, full.conv1.weight)
    save_file({"foo.weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(LinesideError, match="no key"):
        load_backbone_weights(backbone, tmp_path / "other.safetensors")


def test_export_with_a_batch_of_one_and_seed_reaches_the_model(run, tmp_path):
    from train_host.export import export_bundle

    bundle = export_bundle(run, tmp_path / "b1", max_batch=1, parity_images=4)
    assert bundle.manifest.input.max_batch == 1
    with pytest.raises(LinesideError, match="outside 1..1"):
        Scorer(bundle).backend.run(np.zeros((2, 3, 64, 64), np.uint8))
    assert json.loads((run / "run.json").read_text())["config"]["seed"] == 0


def test_train_seed_sets_the_random_backbone(category, tmp_path):
    from train_host.run import load_run

    runs = []
    for seed in (0, 1):
        out = tmp_path / f"s{seed}"
        assert cli(["train", "rx", "--data", str(category), "--out", str(out), "--size", "64",
                    "--feature-dim", "8", "--seed", str(seed), "--limit", "4", "--val-share", "0"]) == 0
        runs.append(load_run(out)[0])
    assert not torch.equal(runs[0].backbone.conv1.weight, runs[1].backbone.conv1.weight)


def test_export_native_input_resizes_inside_the_graph(run, category, tmp_path):
    """`--input native WxH`: the graph takes BGR frames of that size and resizes them itself (box
    AveragePool, then an antialiased Resize); parity against the CPU path is checked at export
    and the runtime feeds it frames without resizing on the CPU."""
    import onnx

    native_dir, plain_dir = tmp_path / "native", tmp_path / "plain"
    assert cli(["export", str(run), "--out", str(native_dir), "--input", "native", "256x192", "--parity-images", "4"]) == 0
    assert cli(["export", str(run), "--out", str(plain_dir), "--parity-images", "2"]) == 0
    bundle = Bundle.load(native_dir)
    assert bundle.manifest.input.layout == "NHWC" and bundle.manifest.input.native == [192, 256]
    assert bundle.input_spec.graph_shape == (192, 256, 3)
    parity = bundle.manifest.files["model.onnx"].checks["parity"]
    assert parity["score_rel_err"] <= parity["tolerance"] and "CPU path" in parity["against"]
    graph = onnx.load(str(native_dir / "model.onnx")).graph
    resize = [n for n in graph.node if n.op_type == "Resize"]
    assert resize and {a.name: a.i for a in resize[0].attribute}["antialias"] == 1
    assert any(n.op_type == "AveragePool" for n in graph.node)  # 256x192 → 128x96 by a 2x2 box first
    paths = [s.path for s in load_split(category).test]
    native = [s.verdict.score for s in Scorer(bundle).score_paths(paths, batch=4)]
    plain = [s.verdict.score for s in Scorer(Bundle.load(plain_dir)).score_paths(paths, batch=4)]
    print(f"\nnative vs CPU-resized scores: max relative difference "
          f"{np.max(np.abs(np.subtract(native, plain))) / np.max(np.abs(plain)):.2e}")
    np.testing.assert_allclose(native, plain, rtol=0.05, atol=0.02 * float(np.max(np.abs(plain))))
    from train_host.export import parse_native

    with pytest.raises(LinesideError, match="give `--input native WIDTHxHEIGHT`"):
        parse_native(["native", "12x"])
    with pytest.raises(LinesideError, match="must be at least the model's 64x64"):
        InputSpec(64, 64, 3, native=(48, 640))
