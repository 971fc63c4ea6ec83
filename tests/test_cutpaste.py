"""cutpaste: exact masks, hypergradients through the relaxed placement, and the CLI end to end."""

import json

import numpy as np
import pytest
import torch

from edge_infer.bundle import Bundle
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from mvtec_fixture import make_mvtec
from train_host.data import load_split
from train_host.models import cutpaste
from train_host.models.cutpaste_bilevel import upper_step
from train_host.models.cutpaste_synthesis import CutPasteSynthesis, validation_defects

SPEC = InputSpec(64, 64, 1)


def good_images(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.avg_pool2d(torch.rand(n, 1, 64, 64, generator=g), 5, 1, 2)
    return (smooth * 255).round().to(torch.uint8)


def synthesis(blend: str | None = None) -> CutPasteSynthesis:
    synth = CutPasteSynthesis(1, seed=1)
    synth.defect_share = 1.0
    if blend:  # make one blend mode all but certain
        with torch.no_grad():
            synth.logits["blend"].copy_(torch.tensor([40.0, -40.0] if blend == "alpha" else [-40.0, 40.0]))
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
    val_x, val_m = validation_defects(good_images(seed=1), seed=2)
    opt = torch.optim.Adam(synth.parameters(), lr=0.05)
    loss = upper_step(model, synth, opt, good_images(), val_x, val_m, inner_lr=0.05)
    assert np.isfinite(loss)
    head = synth.placement.head.weight.grad
    assert head is not None and torch.isfinite(head).all() and head.abs().sum() > 0
    assert synth.placement.enc1[0].weight.grad.abs().sum() > 0  # reaches through the U-Net
    for name in ("scale", "blend", "strength"):
        assert synth.logits[name].grad.abs().sum() > 0
    moved = [k for k, v in synth.named_parameters() if not torch.equal(v, before[k])]
    assert "placement.head.weight" in moved and "logits.scale" in moved


def test_validation_defects_are_drawn_with_their_masks():
    images = good_images(9)
    out, mask = validation_defects(images, seed=3)
    assert (mask.flatten(1).sum(1) > 0).all()
    outside = mask == 0
    assert torch.equal(out[outside], images.float()[outside])


@pytest.mark.slow  # ~1 CPU-minute: two training epochs with unrolled steps, then an ONNX export
def test_train_evaluate_export_score_end_to_end(tmp_path):
    data = make_mvtec(tmp_path / "cells", n_train=10, n_good=4, n_defect=4)
    run, synth_dir, bundle_dir = tmp_path / "run", tmp_path / "synth", tmp_path / "bundle"
    assert cli(["train", "cutpaste", "--data", str(data), "--out", str(run), "--size", "64", "--channels", "1",
                "--base-channels", "4", "--epochs", "2", "--batch-size", "8", "--learned-synthesis",
                "--upper-every", "1", "--synth-out", str(synth_dir), "--threads", "2"]) == 0
    training = json.loads((run / "run.json").read_text())["training"]
    assert training["upper_steps"] >= 1 and training["synthesis"].startswith("learned")
    assert {"samples_before.png", "samples_after.png", "placement_after.png"} <= {p.name for p in synth_dir.iterdir()}
    metrics_path = tmp_path / "metrics.json"
    assert cli(["evaluate", str(run), "--json", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert 0 <= metrics["image_auroc"] <= 1 and "pixel_auroc" in metrics
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
