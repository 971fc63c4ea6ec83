"""ADTR: the feature contract, the no-copy decoder, the L_px loss, and train → evaluate → export → runtime."""

import json
import math

import numpy as np
import pytest
import torch
from mvtec_fixture import make_mvtec

from edge_infer.bundle import Bundle
from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from train_host.data import load_split
from train_host.models import adtr
from train_host.models.adtr_losses import grid_share, l_px, pseudo_huber
from train_host.models.adtr_training import Schedule
from train_host.synth.confetti import confetti

# Small settings for the end-to-end runs: a light backbone of the same family and a thin transformer.
SMALL_ARGS = ["--size", "64", "--backbone", "tf_efficientnet_lite0", "--hidden-dim", "32", "--heads", "2",
              "--ff-dim", "64", "--encoder-layers", "1", "--decoder-layers", "1", "--sigma", "1", "--threads", "2"]
SMALL = {"hidden_dim": 32, "heads": 2, "ff_dim": 64, "encoder_layers": 1, "decoder_layers": 1, "dropout": 0.0}


def test_paper_features_are_720_channels_on_a_16x16_grid():
    model = adtr.build({}, InputSpec(256, 256, 3))
    image = torch.randint(0, 255, (1, 3, 256, 256), dtype=torch.uint8)
    with torch.no_grad():
        feats = model.features(image)
        recon = model.reconstructor(feats)
        amap, score = model(image)
    assert model.backbone.feature_info.channels() == [24, 32, 56, 160, 448]
    assert feats.shape == recon.shape == (1, 720, 16, 16)
    assert amap.shape == (1, 1, 256, 256) and score.shape == (1,)
    assert not any(p.requires_grad for p in model.backbone.parameters())


def test_sizes_the_backbone_cannot_tile_are_refused():
    with pytest.raises(LinesideError, match="divisible by 32"):
        adtr.build({"backbone": "tf_efficientnet_lite0"}, InputSpec(72, 72, 3))


def test_decoder_queries_do_not_depend_on_the_input():
    rec = adtr.FeatureReconstructor(16, 16, adtr.ADTRConfig(**SMALL)).eval()
    seen = []
    rec.decoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    with torch.no_grad():
        rec(torch.randn(2, 16, 4, 4))
        rec(torch.randn(2, 16, 4, 4) * 10)
    assert torch.equal(seen[0], seen[1])


def test_decoder_cannot_copy_inputs_it_was_not_trained_on():
    """Trained on one family of feature maps, it reconstructs those far better than new ones.

    A model that copies its input through (identity) would reconstruct both equally well.
    """
    torch.manual_seed(0)
    rec = adtr.FeatureReconstructor(16, 16, adtr.ADTRConfig(**SMALL))
    pattern = torch.randn(1, 16, 4, 4)

    def normal(n):
        return pattern * torch.empty(n, 1, 1, 1).uniform_(0.5, 1.5) + 0.05 * torch.randn(n, 16, 4, 4)

    opt = torch.optim.AdamW(rec.parameters(), lr=3e-3)
    for _ in range(150):
        x = normal(32)
        loss = torch.nn.functional.mse_loss(rec(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    rec.eval()
    with torch.no_grad():
        x_in = normal(64)
        x_out = torch.randn(64, 16, 4, 4) * pattern.std()  # new maps, same scale
        err_in = (rec(x_in) - x_in).pow(2).mean()
        err_out = (rec(x_out) - x_out).pow(2).mean()
    assert err_in < 0.05 * x_in.pow(2).mean()  # it did learn the normal maps
    assert err_out > 5 * err_in


def test_l_px_matches_a_hand_computation():
    feats = torch.tensor([[[[1.0, -2.0]], [[3.0, 0.5]]]])  # N=1, C=2, h=1, w=2
    recon = torch.zeros_like(feats)
    y = torch.tensor([[[0.0, 1.0]]])
    phi = [math.sqrt(((1 + 3) / 2) ** 2 + 1) - 1, math.sqrt(((2 + 0.5) / 2) ** 2 + 1) - 1]
    alpha = 0.003
    expected = (phi[0] * 1 + phi[1] * 0) / 2 - alpha * math.log(1 - math.exp(-(phi[1] / 2)))
    assert torch.allclose(pseudo_huber(feats, recon)[0, 0], torch.tensor(phi))
    assert l_px(feats, recon, y, alpha).item() == pytest.approx(expected, rel=1e-6)
    # an image without anomalous locations keeps only the normal term (no −log 0)
    assert l_px(feats, recon, torch.zeros_like(y), alpha).item() == pytest.approx(sum(phi) / 2, rel=1e-6)


def test_l_px_training_lowers_the_loss_and_separates_masked_locations():
    torch.manual_seed(0)
    rec = adtr.FeatureReconstructor(16, 16, adtr.ADTRConfig(**SMALL))
    feats = torch.randn(8, 16, 4, 4)
    masks = torch.zeros(8, 1, 16, 16)
    masks[:, :, 4:8, 8:16] = 1  # two grid cells per image
    y = grid_share(masks, (4, 4))
    assert y[0, 1, 2] == 1 and y[0, 0, 0] == 0
    opt = torch.optim.AdamW(rec.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = l_px(feats, rec(feats), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    with torch.no_grad():
        phi = pseudo_huber(feats, rec(feats))
    assert phi[y > 0].mean() > phi[y == 0].mean()


def test_confetti_changes_exactly_its_mask_and_is_reproducible():
    image = np.full((3, 64, 64), 120, np.uint8)
    a, mask = confetti(image, np.random.default_rng(3))
    b, _ = confetti(image, np.random.default_rng(3))
    assert a.dtype == np.uint8 and a.shape == image.shape and mask.dtype == bool
    assert mask.any() and np.array_equal(mask, (a != image).any(axis=0))
    assert np.array_equal(a, b)
    with pytest.raises(ValueError, match="uint8"):
        confetti(image.astype(np.float32), np.random.default_rng(0))


def test_schedule_scales_the_run_and_keeps_the_drop_at_80_percent():
    import time

    full = Schedule(500, 1e-4, 0.8, None)
    full.plan(10.0)
    assert full.planned == 500 and full.lr_at(399) == 1e-4 and full.lr_at(400) == pytest.approx(1e-5)
    short = Schedule(500, 1e-4, 0.8, time.monotonic() + 100.0)
    short.plan(10.0)  # about ten epochs fit in the time left
    assert 5 <= short.planned <= 11
    drop = round(0.8 * short.planned)
    assert short.lr_at(drop - 1) == 1e-4 and short.lr_at(drop) == pytest.approx(1e-5)
    late = Schedule(500, 1e-4, 0.8, time.monotonic() - 1)
    late.plan(10.0)
    assert late.planned == 1 and late.lr_at(0) == 1e-4


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "cells", n_train=12, n_good=4, n_defect=4)


@pytest.fixture(scope="module")
def runs(category, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    normal, anomaly = root / "normal", root / "anomaly"
    assert cli(["train", "adtr", "--data", str(category), "--out", str(normal), "--epochs", "4", *SMALL_ARGS]) == 0
    assert cli(["train", "adtr", "--data", str(category), "--out", str(anomaly), "--anomaly-available",
                "--init", str(normal), "--px-epochs", "3", "--pool-refresh", "2", *SMALL_ARGS]) == 0
    return normal, anomaly


def test_runs_record_both_phases(runs):
    normal, anomaly = (json.loads((r / "run.json").read_text()) for r in runs)
    assert normal["family"] == "adtr" and normal["training"]["normal"]["epochs_run"] == 4
    assert "anomaly" not in normal["training"] and normal["training"]["backbone_weights"]["weights"] is None
    px = anomaly["training"]["anomaly"]
    assert px["epochs_run"] == 3 and "normal" not in anomaly["training"]
    assert anomaly["training"]["init_weights_sha256"] == normal["weights_sha256"]


def test_init_refuses_a_run_of_another_size(runs, category, tmp_path):
    args = [a if a != "64" else "96" for a in SMALL_ARGS]
    assert cli(["train", "adtr", "--data", str(category), "--out", str(tmp_path / "r"), "--anomaly-available",
                "--init", str(runs[0]), *args]) == 2


def test_train_evaluate_export_score_agree(runs, category, tmp_path):
    run = runs[1]
    metrics_path = tmp_path / "metrics.json"
    assert cli(["evaluate", str(run), "--json", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0 <= metrics["image_auroc"] <= 1 and 0 <= metrics["pixel_auroc"] <= 1

    bundle_dir = tmp_path / "bundle"
    assert cli(["export", str(run), "--out", str(bundle_dir), "--parity-images", "4"]) == 0
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest.model.family == "adtr"
    assert bundle.manifest.files["model.onnx"].checks["parity"]["score_rel_err"] < 1e-3

    from train_host.infer import predict
    from train_host.run import load_run

    model, _ = load_run(run)
    samples = load_split(category).test
    torch_scores = predict(model, samples, InputSpec(64, 64, 3)).scores
    scored = list(Scorer(bundle).score_paths([s.path for s in samples], batch=4))
    np.testing.assert_allclose([s.verdict.score for s in scored], torch_scores, rtol=1e-4)


def test_the_checkpoint_kept_is_chosen_on_validation(runs, category):
    """Each phase is scored on the shared validation ~10 times and at its end; the last checkpoint is kept unless
    an earlier one beats it by more than the tolerance, and the saved model scores what the record says."""
    from train_host.context import TrainContext
    from train_host.run import load_run
    from train_host.validation import TOLERANCE, build_validation

    for run, phase, epochs in ((runs[0], "L_norm", 4), (runs[1], "L_px", 3)):
        model, record = load_run(run)
        training = record["training"]
        per = {c["checkpoint"]: c["validation_auroc"] for c in training["validation_per_checkpoint"]}
        assert list(per) == [f"{phase} epoch {e}" for e in range(1, epochs + 1)]
        last, kept = f"{phase} epoch {epochs}", training["checkpoint_kept"]
        assert kept == max(per, key=per.get) if per[kept] > per[last] + TOLERANCE else kept == last
        assert training["validation_auroc"] == per[kept] and training["validation_used_for"].startswith("choosing")
        context = TrainContext(load_split(category), InputSpec(64, 64, 3), {"seed": 0}, log=lambda *_: None)
        validation = build_validation(context, adtr.trains_on(model.config))
        assert validation.evaluate(model)["validation_auroc"] == pytest.approx(per[kept], abs=1e-4)
