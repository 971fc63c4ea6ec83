"""draem: seeded Perlin/texture anomalies, joint training that learns, validation on another family, export."""

import json

import numpy as np
import pytest
import torch
from mvtec_fixture import make_mvtec

from edge_infer.bundle import Bundle
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from train_host.data import load_split
from train_host.models import draem
from train_host.models.draem_training import draem_loss, ssim
from train_host.synth.perlin_anomaly import perlin_anomaly, perlin_mask
from train_host.synth.textures import KINDS, procedural_texture
from train_host.validation import held_out

SPEC = InputSpec(32, 32, 1)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors on a shared 2-core CPU: a second thread only adds contention
    yield
    torch.set_num_threads(before)


def smooth_images(n=8, size=32, channels=1, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.avg_pool2d(torch.rand(n, channels, size, size, generator=g), 5, 1, 2)
    return (64 + x * 128).round().to(torch.uint8)


def test_perlin_masks_cover_the_intended_area_and_repeat_under_a_seed():
    shares = [perlin_mask((64, 80), np.random.default_rng(s), area=(0.02, 0.1)).mean() for s in range(30)]
    assert min(shares) >= 0.02 - 1 / (64 * 80) and max(shares) <= 0.1 + 1 / (64 * 80)
    assert np.ptp(shares) > 0.03  # the area is drawn across the range, not fixed
    image = smooth_images(1, 48, 3)[0].numpy()
    first = perlin_anomaly(image, np.random.default_rng(7))
    again = perlin_anomaly(image, np.random.default_rng(7))
    other = perlin_anomaly(image, np.random.default_rng(8))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    anomalous, mask = first
    assert np.array_equal(anomalous[:, ~mask], image[:, ~mask].astype(float))  # nothing changes outside the mask


@pytest.mark.parametrize("kind", KINDS)
def test_every_texture_is_seeded_in_range_and_gray_on_a_gray_station(kind):
    gray_rgb = np.repeat(smooth_images(1, 40, 1)[0].numpy(), 3, axis=0)
    a = procedural_texture(gray_rgb, np.random.default_rng(3), kind)
    b = procedural_texture(gray_rgb, np.random.default_rng(3), kind)
    assert np.array_equal(a, b) and a.shape == gray_rgb.shape
    assert a.min() >= 0 and a.max() <= 255 and a.std() > 1
    assert np.array_equal(a[0], a[1]) and np.array_equal(a[1], a[2])  # no colour a gray camera cannot see


def test_ssim_is_one_for_equal_images_and_lower_for_noise():
    x = smooth_images(2).float() / 255
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, (x + 0.2 * torch.randn_like(x)).clamp(0, 1))) < 0.6


def test_joint_training_on_a_fixed_batch_lowers_the_loss():
    torch.manual_seed(0)
    model = draem.build({"base_channels": 4}, SPEC).train()
    images = smooth_images(8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = draem_loss(model, images, np.random.default_rng(0), share=0.5)  # the same anomalies every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])
    # both networks learn: gradients reach the reconstruction through the focal loss too
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_graph_outputs_and_the_score_is_the_max_of_the_pooled_map():
    model = draem.build({"base_channels": 4, "score_pool": 0.2}, SPEC)
    amap, score = model(smooth_images(3))
    assert amap.shape == (3, 1, 32, 32) and score.shape == (3,) and model.pool == 7
    pooled = torch.nn.functional.avg_pool2d(amap, 7, 1, 3, count_include_pad=False)
    assert torch.allclose(score, pooled.flatten(1).max(1).values)
    assert "texture" not in held_out(draem.trains_on(model.config))  # validation never uses the training family


def test_train_validates_on_another_family_and_exports_fp32_and_fp16(tmp_path):
    data = make_mvtec(tmp_path / "cells", n_train=24, n_good=4, n_defect=4)
    run, bundle_dir = tmp_path / "run", tmp_path / "bundle"
    # ~30 steps: enough for a map with contrast, which INT8 must keep (an untrained map is flat)
    assert cli(["train", "draem", "--data", str(data), "--out", str(run), "--size", "32", "--channels", "1",
                "--base-channels", "4", "--epochs", "6", "--batch-size", "4", "--lr", "3e-3", "--threads", "1",
                "--val-share", "0.2", "--val-defects", "2"]) == 0
    training = json.loads((run / "run.json").read_text())["training"]
    assert "structural, confetti, contextual, cutpaste" in training["validation_signal"]
    assert "2 real labelled defects" in training["validation_signal"]
    assert training["validation"]["trained_on"] == ["texture"] and "texture" not in training["validation"]["kinds"]
    assert len(training["validation_per_epoch"]) == 6 and 1 <= training["epoch_kept"] <= 6
    kept = training["validation_per_epoch"][training["epoch_kept"] - 1]
    assert training["validation_auroc"] == kept["validation_auroc"] and {"auroc_synthetic", "auroc_real"} <= set(kept)
    assert cli(["evaluate", str(run), "--json", str(tmp_path / "m.json")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["family"] == "draem" and metrics["images"] == 4 + 4 - 2  # validation defects left the test
    assert cli(["export", str(run), "--out", str(bundle_dir), "--parity-images", "6", "--precision", "fp32,fp16"]) == 0
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest.model.family == "draem"
    parity = bundle.manifest.files["model.onnx"].checks["parity"]
    assert parity["score_rel_err"] < 1e-3 and parity["map_rel_err"] < 1e-3
    # both networks (named backbone) run in FP16; normalisation, the FP32 logit head, pooling and the max do not
    fp16 = bundle.manifest.files["model.fp16.onnx"].checks
    assert fp16["accuracy"]["finite"] and fp16["accuracy"]["score_rel_err"] < 1e-2
    assert fp16["accuracy"]["auroc"] == pytest.approx(fp16["accuracy"]["auroc_fp32"], abs=0.01)
    assert 0 < fp16["conversion"]["fp16_nodes"] < fp16["conversion"]["nodes"]

    from train_host.infer import predict
    from train_host.run import load_run

    model, _ = load_run(run)
    samples = load_split(data, val_defects=2).test
    scored = list(Scorer(bundle).score_paths([s.path for s in samples], batch=4))
    np.testing.assert_allclose([s.verdict.score for s in scored], predict(model, samples, SPEC).scores,
                               rtol=1e-4, atol=1e-6)
