"""cutpaste: exact masks, hypergradients through the relaxed placement, and the CLI end to end."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from mvtec_fixture import make_mvtec

from edge_infer.bundle import Bundle
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from train_host.context import TrainContext
from train_host.data import load_split
from train_host.models import cutpaste
from train_host.models.cutpaste_bilevel import (
    polarity_summary,
    synthesis_optimizer,
    upper_step,
)
from train_host.models.cutpaste_synthesis import BRIGHTNESS, GAINS, CutPasteSynthesis
from train_host.models.cutpaste_validation import (
    ValidationSet,
    build_validation,
    synthetic_family,
)

SPEC = InputSpec(64, 64, 1)


@pytest.fixture(autouse=True)
def one_thread():
    # small tensors: on a shared 2-core CPU a second torch thread only adds contention
    # (12 upper steps: ~2 s with one thread, ~160 s with two under load 4)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def good_images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 64, 64, generator=g), 5, 1, 2)
    return (smooth * 255).round().to(torch.uint8)


def synthesis(blend: str | None = None, **certain: int) -> CutPasteSynthesis:
    """Every sample a defect; ``blend`` and each ``certain`` transform (name=option index) all but fixed."""
    synth = CutPasteSynthesis(1, seed=1)
    synth.defect_share = 1.0
    if blend:
        certain["blend"] = 0 if blend == "alpha" else 1
    with torch.no_grad():
        for name, index in certain.items():
            synth.logits[name].fill_(-40.0)
            synth.logits[name][index] = 40.0
    return synth


@pytest.mark.parametrize("blend", ["alpha", "poisson"])
def test_masks_exactly_match_pasted_pixels(blend):
    torch.manual_seed(0)
    images = good_images()
    out, mask = synthesis(blend)(images)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.flatten(1).sum(1) > 0).all()  # every sample got a defect
    outside = mask == 0
    assert torch.equal(out[outside], images.float()[outside])  # nothing changes outside the mask
    changed = (out - images.float()).abs() > 0.5
    assert changed[mask.bool()].float().mean() > 0.5  # and most pixels inside it do


def test_no_defect_samples_are_left_untouched():
    synth = synthesis()
    synth.defect_share = 0.0
    images = good_images()
    out, mask = synth(images)
    assert mask.sum() == 0 and torch.equal(out, images.float())


def test_placement_map_gets_the_validation_hypergradient_and_one_step_changes_synthesis():
    torch.manual_seed(0)
    model = cutpaste.build({"base_channels": 4}, SPEC).train()
    synth = synthesis()
    before = {k: v.detach().clone() for k, v in synth.named_parameters()}
    val_x, val_m = synthetic_family(good_images(seed=1), seed=2)
    vset = ValidationSet(val_x, torch.ones(len(val_x)), val_m, "synthetic family")
    opt = torch.optim.Adam(synth.parameters(), lr=0.05)
    loss = upper_step(model, synth, opt, good_images(), vset, inner_lr=0.05)
    assert np.isfinite(loss)
    head = synth.placement.head.weight.grad
    assert head is not None and torch.isfinite(head).all() and head.abs().sum() > 0
    assert synth.placement.enc1[0].weight.grad.abs().sum() > 0  # reaches through the U-Net
    for name in ("scale", "blend", "strength"):
        assert synth.logits[name].grad.abs().sum() > 0
    moved = [k for k, v in synth.named_parameters() if not torch.equal(v, before[k])]
    assert "placement.head.weight" in moved and "logits.scale" in moved


def test_placement_stays_alive_over_upper_steps_at_the_default_learning_rates():
    # at Adam lr 0.05 the bounded placement logits saturated within ~10 steps: exactly uniform, no gradient
    torch.manual_seed(0)
    model, synth = cutpaste.build({"base_channels": 4}, SPEC).train(), synthesis()
    vset = ValidationSet(good_images(4, seed=3).float(), torch.tensor([0.0, 0.0, 1.0, 1.0]), None, "real defects")
    opt = synthesis_optimizer(synth, {})
    assert [g["lr"] for g in opt.param_groups] == [0.005, 0.05]
    for _ in range(12):
        upper_step(model, synth, opt, good_images(4), vset, inner_lr=0.01)
    logits = synth.placement(good_images(4).float())
    assert logits.flatten(1).std(1).min() > 1e-4 and logits.abs().max() < 2.9


def test_synthetic_validation_family_comes_from_train_host_synth_with_exact_masks():
    images = good_images(9)
    out, mask = synthetic_family(images, seed=3)
    assert (mask.flatten(1).sum(1) > 0).all()
    outside = mask.expand_as(out) == 0
    assert torch.equal(out[outside], images.float()[outside])
    assert ((out != images.float()).any(1, keepdim=True) == mask.bool()).all()  # the mask is what changed


def test_transforms_are_symmetric_and_a_dimmed_region_is_possible():
    # the uniform (fixed) synthesis has no polarity: as much darkening as brightening
    assert np.allclose(np.array(GAINS) - 1, -(np.array(GAINS) - 1)[::-1]) and min(GAINS) < 1 < max(GAINS)
    assert BRIGHTNESS == tuple(-b for b in reversed(BRIGHTNESS))
    fixed = polarity_summary(synthesis(), good_images())
    assert fixed["expected_gain"] == 1.0 and fixed["expected_brightness_shift"] == 0
    images = good_images() // 2 + 60  # mid-grey content, no clipping either way
    # source "self" (index 1) with gain 0.5, no shift, no blur, full strength: the region itself, dimmed
    dim = synthesis("alpha", source=1, gain=0, brightness=2, blur=0, strength=2)
    out, mask = dim(images)
    inside = mask.bool().expand_as(out)
    assert torch.allclose(out[inside], images.float()[inside] * 0.5, atol=1e-3)
    assert polarity_summary(dim, images)["darker_share"] == 1.0
    bright = synthesis("alpha", source=1, gain=4, brightness=2, blur=0, strength=2)
    assert polarity_summary(bright, images)["darker_share"] == 0.0


def context_for(split, options=None) -> TrainContext:
    return TrainContext(split, SPEC, {"batch_size": 8, "seed": 0, **(options or {})}, log=lambda *_: None)


def test_real_val_defects_become_the_validation_signal(tmp_path):
    data = make_mvtec(tmp_path / "cells", n_train=10, n_good=4, n_defect=4)
    synthetic = build_validation(context_for(load_split(data, val_share=0.3)), seed=0)
    assert synthetic.signal.startswith("synthetic family") and not synthetic.real
    split = load_split(data, val_share=0.3, val_defects=2)
    vset = build_validation(context_for(split), seed=0)
    assert vset.real and vset.signal.startswith("real defects, pixel")
    assert vset.labels.tolist() == [0.0] * len(split.val) + [1.0, 1.0]
    assert vset.masks[:len(split.val)].sum() == 0 and (vset.masks[len(split.val):].flatten(1).sum(1) > 0).all()
    # a defect without a mask: the loss becomes image-level, and it still drives the synthesis
    split.val_defects[0] = dataclasses.replace(split.val_defects[0], mask_path=None)
    vset = build_validation(context_for(split), seed=0)
    assert vset.masks is None and "image-level" in vset.signal
    torch.manual_seed(0)
    model, synth = cutpaste.build({"base_channels": 4}, SPEC).train(), synthesis()
    loss = upper_step(model, synth, torch.optim.Adam(synth.parameters()), good_images(), vset, inner_lr=0.05)
    assert np.isfinite(loss) and synth.placement.head.weight.grad.abs().sum() > 0
    assert synth.logits["gain"].grad.abs().sum() > 0


@pytest.mark.slow  # ~1 CPU-minute: two training epochs with unrolled steps, then an ONNX export
def test_train_evaluate_export_score_end_to_end(tmp_path):
    data = make_mvtec(tmp_path / "cells", n_train=10, n_good=4, n_defect=4)
    run, synth_dir, bundle_dir = tmp_path / "run", tmp_path / "synth", tmp_path / "bundle"
    assert cli(["train", "cutpaste", "--data", str(data), "--out", str(run), "--size", "64", "--channels", "1",
                "--base-channels", "4", "--epochs", "2", "--batch-size", "8", "--learned-synthesis",
                "--upper-every", "1", "--synth-out", str(synth_dir), "--threads", "1", "--val-defects", "2"]) == 0
    record = json.loads((run / "run.json").read_text())
    training = record["training"]
    assert training["upper_steps"] >= 1 and training["synthesis"].startswith("learned")
    assert training["validation_signal"].startswith("real defects") and record["data"]["val_defects"] == 2
    assert len(training["validation_auroc_per_epoch"]) == 2 and training["epoch_kept"] in (1, 2)
    assert {"samples_before.png", "samples_after.png", "placement_after.png"} <= {p.name for p in synth_dir.iterdir()}
    metrics_path = tmp_path / "metrics.json"
    assert cli(["evaluate", str(run), "--json", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0 <= metrics["image_auroc"] <= 1 and "pixel_auroc" in metrics
    assert metrics["images"] == 4 + 4 - 2  # the two validation defects are not in the test set
    assert cli(["export", str(run), "--out", str(bundle_dir)]) == 0
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest.model.family == "cutpaste"

    from train_host.infer import predict
    from train_host.run import load_run

    model, _ = load_run(run)
    samples = load_split(data).test
    torch_scores = predict(model, samples, SPEC).scores
    scored = list(Scorer(bundle).score_paths([s.path for s in samples], batch=4))
    np.testing.assert_allclose([s.verdict.score for s in scored], torch_scores, rtol=1e-4, atol=1e-6)
