"""cutpaste: exact masks, hypergradients through the relaxed placement, and the CLI end to end."""

import dataclasses
import json

import cv2
import numpy as np
import pytest
import torch
from mvtec_fixture import make_mvtec

from edge_infer.bundle import Bundle
from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from train_host.context import TrainContext
from train_host.data import load_split, read_mask
from train_host.models import cutpaste
from train_host.models.cutpaste_bilevel import (
    polarity_summary,
    synthesis_optimizer,
    upper_step,
)
from train_host.models.cutpaste_crops import DefectCrops, load_defect_crops
from train_host.models.cutpaste_synthesis import (
    BRIGHTNESS,
    GAINS,
    SOURCES,
    CutPasteSynthesis,
)
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


def synthesis(blend: str | None = None, crops: DefectCrops | None = None, **certain: int) -> CutPasteSynthesis:
    """Every sample a defect; ``blend`` and each ``certain`` transform (name=option index) all but fixed."""
    synth = CutPasteSynthesis(1, seed=1, crops=crops)
    synth.defect_share = 1.0
    if blend:
        certain["blend"] = 0 if blend == "alpha" else 1
    with torch.no_grad():
        for name, index in certain.items():
            synth.logits[name].fill_(-40.0)
            synth.logits[name][index] = 40.0
    return synth


def bright_crops(n=3) -> DefectCrops:
    """n 64×64 crops: a textured 14×6 (rows × columns: 6×14) bright defect (200-255) on a dark background."""
    g = torch.Generator().manual_seed(5)
    images = torch.zeros(n, 1, 64, 64, dtype=torch.uint8)
    masks = torch.zeros(n, 1, 64, 64, dtype=torch.bool)
    for i in range(n):
        y, x = 10 + 7 * i, 20 + 5 * i
        images[i, :, y:y + 6, x:x + 14] = torch.randint(200, 256, (1, 6, 14), generator=g, dtype=torch.uint8)
        masks[i, :, y:y + 6, x:x + 14] = True
    return DefectCrops(images, masks, [f"crop{i}.png" for i in range(n)])


@pytest.mark.parametrize("blend", ["alpha", "poisson"])
@pytest.mark.parametrize("with_crops", [False, True])
def test_masks_exactly_match_pasted_pixels(blend, with_crops):
    torch.manual_seed(0)
    images = good_images(8)
    out, mask = synthesis(blend, crops=bright_crops() if with_crops else None)(images)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.flatten(1).sum(1) > 0).all()  # every sample got a defect
    outside = mask == 0
    assert torch.equal(out[outside], images.float()[outside])  # nothing changes outside the mask
    changed = (out - images.float()).abs() > 0.5
    assert changed[mask.bool()].float().mean() > 0.5  # and most pixels inside it do


def test_default_synthesis_is_unchanged_without_defect_crops():
    # the same draws as before defect crops existed (values computed on the code before them, 53dcec7)
    assert SOURCES == ("other", "self")
    torch.manual_seed(0)
    synth = CutPasteSynthesis(1, seed=1)
    assert len(synth.logits["source"]) == 2 and "defect" not in synth.probabilities()["source"]
    with torch.no_grad():
        out, mask = synth(good_images(8))
        assert mask.flatten(1).sum(1).int().tolist() == [0, 347, 0, 0, 84, 0, 222, 182]
        np.testing.assert_allclose(out.flatten(1).sum(1).numpy(), [498375.0, 513470.3, 509293.0, 505401.0,
                                                                   510899.0, 505616.0, 510302.0, 505424.3], atol=1.0)
        out, mask = synth(good_images(8, seed=1))
        assert mask.flatten(1).sum(1).int().tolist() == [0, 0, 46, 75, 0, 0, 37, 0]


def test_defect_source_pastes_the_crops_own_mask_and_pixels():
    crops = bright_crops()
    # source "defect" (index 2), scale 0.22 (14 px at 64: the crops' own size), angle 0, gain 1, no shift,
    # no blur, full strength, alpha blend: the crop's defect pixels copied exactly
    synth = synthesis("alpha", crops=crops, source=2, scale=2, angle=0, gain=2, brightness=2, blur=0, strength=2)
    assert synth.probabilities()["source"]["defect"] > 0.99
    images = good_images(8) // 3  # ≤ 85: every pasted (≥ 200) pixel differs from what it covers
    torch.manual_seed(0)
    with torch.no_grad():
        out, mask = synth(images)
    changed = (out != images.float()).any(1, keepdim=True)
    assert torch.equal(changed, mask.bool())  # the mask is exactly the pixels pasted
    crop_blocks = {tuple(c[m].tolist()) for c, m in zip(crops.images[:, 0], crops.masks[:, 0])}
    inside = 0
    for o, m in zip(out[:, 0], mask[:, 0].bool()):
        assert 0 < m.sum() <= 84
        assert set(o[m].round().tolist()) <= {v for b in crop_blocks for v in b}  # only the crops' pixel values
        if m.sum() == 84:  # pasted whole (not cut at the border): a 6×14 block equal to one crop's block
            ys, xs = torch.nonzero(m, as_tuple=True)
            assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == (6, 14)
            assert tuple(o[m].round().to(torch.uint8).tolist()) in crop_blocks
            inside += 1
    assert inside > 0
    # turned 90° and scaled to 0.32 (20 px): still only the crop's footprint changes, now upright
    turned = synthesis("alpha", crops=crops, source=2, scale=3, angle=2, gain=2, brightness=2, blur=0, strength=2)
    with torch.no_grad():
        out, mask = turned(images)
    assert torch.equal((out != images.float()).any(1, keepdim=True), mask.bool())
    ys, xs = torch.nonzero(mask[0, 0], as_tuple=True)
    assert ys.max() - ys.min() + 1 > xs.max() - xs.min() + 1 and out[mask.bool()].min() >= 199


def test_defect_source_weight_gets_the_hypergradient():
    torch.manual_seed(0)
    model = cutpaste.build({"base_channels": 4}, SPEC).train()
    synth = synthesis(crops=bright_crops())
    val_x, val_m = synthetic_family(good_images(seed=1), seed=2)
    vset = ValidationSet(val_x, torch.ones(len(val_x)), val_m, "synthetic family")
    upper_step(model, synth, torch.optim.Adam(synth.parameters(), lr=0.05), good_images(), vset, inner_lr=0.05)
    assert synth.logits["source"].grad.shape == (3,) and synth.logits["source"].grad[2] != 0


def write_crop_folder(folder, n=3):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image, mask = rng.integers(0, 120, (48, 48), dtype=np.uint8), np.zeros((48, 48), np.uint8)
        image[10 + i:20 + i, 8:30], mask[10 + i:20 + i, 8:30] = 250, 255
        cv2.imwrite(str(folder / f"d{i}.png"), image)
        cv2.imwrite(str(folder / f"d{i}_mask.png"), mask)
    cv2.imwrite(str(folder / "lonely.png"), image)  # no mask
    (folder / "broken.png").write_bytes(b"not a png")  # unreadable, with a mask
    cv2.imwrite(str(folder / "broken_mask.png"), mask)
    return folder


def test_defect_crops_load_with_their_masks_and_report_what_they_skip(tmp_path):
    split = load_split(make_mvtec(tmp_path / "cells", n_train=4, n_good=2, n_defect=2), val_share=0.25)
    folder = write_crop_folder(tmp_path / "crops")
    logged = []
    crops = load_defect_crops(folder, SPEC, split, logged.append)
    assert [p.rsplit("/", 1)[1] for p in crops.paths] == ["d0.png", "d1.png", "d2.png"]
    assert crops.images.shape == (3, 1, 64, 64) and crops.images.dtype == torch.uint8
    for image, mask, path in zip(crops.images, crops.masks, crops.paths):
        assert torch.equal(mask[0], torch.from_numpy(read_mask(path.replace(".png", "_mask.png"), SPEC)))
        assert image[mask].float().mean() > 225 and image[~mask].float().mean() < 130
    skipped = dict(crops.skipped)
    assert set(skipped) == {str(folder / "lonely.png"), str(folder / "broken.png")}
    assert "no mask" in skipped[str(folder / "lonely.png")]
    assert any("lonely.png" in line for line in logged) and any("broken.png" in line for line in logged)
    # an MVTec category's test/<defect>/: masks from its ground_truth/<defect>/
    other = make_mvtec(tmp_path / "other", n_train=2, n_good=1, n_defect=3, seed=1)
    crops = load_defect_crops(other / "test" / "scratch", SPEC, split, logged.append)
    assert len(crops.paths) == 3 and not crops.skipped
    gt = other / "ground_truth" / "scratch" / "000_mask.png"
    assert torch.equal(crops.masks[0, 0], torch.from_numpy(read_mask(gt, SPEC)))
    empty = tmp_path / "empty"
    empty.mkdir()
    cv2.imwrite(str(empty / "x.png"), np.zeros((8, 8), np.uint8))  # no mask
    (empty / "y.png").write_bytes(b"not a png")  # unreadable
    cv2.imwrite(str(empty / "y_mask.png"), np.full((8, 8), 255, np.uint8))
    with pytest.raises(LinesideError, match="no usable defect crop.*2 skipped.*X_mask.png"):
        load_defect_crops(empty, SPEC, split, logged.append)
    assert any(str(empty / "y.png") in line for line in logged)


def test_defect_crops_from_the_runs_test_or_validation_defects_are_refused(tmp_path):
    data = make_mvtec(tmp_path / "cells", n_train=4, n_good=2, n_defect=4)
    split = load_split(data, val_share=0.25, val_defects=2)
    with pytest.raises(LinesideError, match=r"4 crop image\(s\).*test set.*--val-defects.*leak"):
        load_defect_crops(data / "test" / "scratch", SPEC, split, print)
    held = tmp_path / "held"  # the validation defects alone, reached through another path
    held.mkdir()
    for s in split.val_defects:
        (held / s.path.name).symlink_to(s.path)
        (held / f"{s.path.stem}_mask.png").symlink_to(s.mask_path)
    with pytest.raises(LinesideError, match=r"2 crop image\(s\).*--val-defects"):
        load_defect_crops(held, SPEC, split, print)


def test_train_with_defect_crops_records_them(tmp_path):
    data = make_mvtec(tmp_path / "cells", n_train=10, n_good=2, n_defect=2)
    crops_dir = make_mvtec(tmp_path / "other", n_train=2, n_good=1, n_defect=3, seed=1) / "test" / "scratch"
    run = tmp_path / "run"
    args = ["train", "cutpaste", "--data", str(data), "--out", str(run), "--size", "64", "--channels", "1",
            "--base-channels", "4", "--epochs", "1", "--batch-size", "8", "--learned-synthesis", "--upper-every", "1",
            "--threads", "1", "--synth-out", str(tmp_path / "synth"), "--defect-crops"]
    assert cli(args + [str(crops_dir)]) == 0
    assert (tmp_path / "synth" / "samples_after.png").is_file()
    training = json.loads((run / "run.json").read_text())["training"]
    assert training["upper_steps"] >= 1
    record = training["defect_crops"]
    assert record["used"] == 3 and record["skipped"] == 0 and record["folder"] == str(crops_dir)
    weights = training["transform_probabilities"]["source"]
    assert set(weights) == {"other", "self", "defect"} and record["source_weight"] == weights["defect"]
    assert weights["defect"] != round(1 / 3, 3)  # learned: moved from the uniform start
    assert cli(args + [str(data / "test" / "scratch")]) == 2  # the run's own test defects: refused


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
