"""rddpm: robust losses on known inputs, few-step DDIM reconstruction, unrolled export, end to end."""

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
from train_host.data import load_split
from train_host.models import rddpm
from train_host.models.rddpm_select import choose_inference
from train_host.models.robust_losses import (RobustLoss, huber_loss, lts_loss, mse_loss, tukey_loss, tukey_rho,
                                             tukey_weight)

SPEC = InputSpec(32, 32, 1)
TINY = {"unet": "tiny", "t0": 100, "steps": 3, "sigma": 1.0, "score": "max"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core box, two spin-waiting threads per op run many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "cells", n_train=24, n_good=4, n_defect=4)


@pytest.fixture(scope="module")
def run(category, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "rddpm"
    assert cli(["train", "rddpm", "--data", str(category), "--out", str(out), "--size", "32", "--channels", "1",
                "--unet", "tiny", "--loss", "huber", "--t0", "100", "--steps", "2", "--seeds", "2", "--epochs", "10", "--lr", "3e-3",
                "--max-minutes", "3", "--crop", "0", "--batch-size", "8", "--sigma", "1", "--threads", "1"]) == 0
    return out


def test_huber_is_quadratic_below_delta_and_linear_above():
    delta = 0.2
    assert huber_loss(torch.tensor([0.1]), delta).item() == pytest.approx(0.5 * 0.1**2)
    assert huber_loss(torch.tensor([1.0]), delta).item() == pytest.approx(delta * (1.0 - delta / 2))
    r = torch.tensor([0.1, 1.0, 5.0], requires_grad=True)
    huber_loss(r, delta).backward()
    assert r.grad.tolist() == pytest.approx([0.1 / 3, delta / 3, delta / 3])  # slope r below δ, δ beyond


def test_lts_keeps_the_lowest_share_of_per_image_losses():
    per_image = torch.tensor([1.0, 2.0, 3.0, 100.0, 4.0])
    assert lts_loss(per_image, keep=0.8).item() == pytest.approx(2.5)  # 100 dropped
    # ranked against a per-timestep reference: the large loss at a hard timestep is kept
    reference = torch.tensor([1.0, 1.0, 1.0, 100.0, 0.5])
    assert lts_loss(per_image, keep=0.8, reference=reference).item() == pytest.approx((1 + 2 + 3 + 100) / 4)


def test_tukey_weight_is_zero_beyond_its_cutoff():
    u = torch.tensor([0.0, 2.0, 4.6, 4.8, 50.0], requires_grad=True)
    assert tukey_weight(u.detach()).tolist()[3:] == [0.0, 0.0]
    assert tukey_weight(u.detach())[1] > 0
    tukey_rho(u).sum().backward()
    assert u.grad[1] > 0 and u.grad[3] == 0 and u.grad[4] == 0
    assert tukey_rho(torch.tensor([4.8])).item() == pytest.approx(tukey_rho(torch.tensor([50.0])).item())


@pytest.mark.parametrize("name", ["huber", "lts", "tukey"])
def test_one_huge_outlier_moves_the_robust_gradient_far_less_than_mse(name):
    g = torch.Generator().manual_seed(0)
    clean = 0.1 * torch.randn(10, 1, 8, 8, generator=g)
    dirty = clean.clone()
    dirty[0] += 20.0  # one training image far off what the rest of the batch says
    t = torch.full((10,), 100)

    def grad(loss, r):
        r = r.clone().requires_grad_(True)
        loss(r, t).backward()
        return r.grad

    mse = RobustLoss("mse")
    shift_mse = (grad(mse, dirty) - grad(mse, clean)).norm()
    robust = RobustLoss(name)
    shift_robust = (grad(robust, dirty) - grad(RobustLoss(name), clean)).norm()
    assert shift_robust < 0.05 * shift_mse


def test_losses_agree_with_mse_on_small_residuals():
    r = 0.01 * torch.randn(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # seeded: the Tukey ratio is a sample statistic
    assert huber_loss(r).item() == pytest.approx(0.5 * mse_loss(r).item(), rel=1e-5)
    # standardised by their own robust scale, normal residuals sit at |u| ~ 1 < c: Tukey's ρ is
    # u²/2 − u⁴/2c² + …, about 11% below the quadratic there, and never above it
    assert 0.8 * 0.5 * mse_loss(r).item() < tukey_loss(r).item() <= 0.5 * mse_loss(r).item()


def test_ddim_timesteps_and_bad_config():
    assert rddpm.ddim_timesteps(250, 4) == [250, 188, 125, 62]
    assert rddpm.ddim_timesteps(100, 1) == [100]
    with pytest.raises(LinesideError, match="--t0"):
        rddpm.build({"t0": 2000}, SPEC)
    with pytest.raises(LinesideError, match="multiple of"):
        rddpm.build({"unet": "nano"}, InputSpec(30, 30, 1))


def test_few_step_ddim_reconstructs_a_training_image_better_than_a_corrupted_one(run, category):
    from train_host.data import make_loader
    from train_host.run import load_run

    model, record = load_run(run)
    assert record["config"]["t0"] == 100 and record["config"]["steps"] == 2
    images = next(iter(make_loader(load_split(category).train, SPEC, batch_size=8)))["image"]
    corrupted = images.clone()
    corrupted[:, :, 10:16, 8:24] = 230  # a bright bar the good images never have (below the clamp at 255)
    with torch.no_grad():
        x, y = model.to_unit(images), model.to_unit(corrupted)
        err_clean = (model.reconstruct(x) - x).abs()[:, :, 10:16, 8:24].mean()
        err_bar = (model.reconstruct(y) - y).abs()[:, :, 10:16, 8:24].mean()
        assert err_bar > 2 * err_clean
        assert model(corrupted)[1].mean() > model(images)[1].mean()


def test_validation_chooses_t0_and_steps_on_the_shared_validation_set(category):
    from train_host.context import TrainContext
    from train_host.validation import POOL, build_validation

    torch.manual_seed(0)
    context = TrainContext(load_split(category, val_share=0.25), SPEC, {"seed": 0, "batch_size": 8},
                           log=lambda *_: None)
    validation = build_validation(context, rddpm.trains_on(rddpm.RDDPMConfig()))
    assert validation.kinds == POOL  # rddpm trains on no synthetic anomaly: every kind is held out
    images = validation.images[validation.parts == "good"]
    model = rddpm.build({"unet": "tiny"}, SPEC)
    chosen = choose_inference(model, validation, images, log=lambda *_: None)
    assert chosen["t0"] in (50, 100, 175, 250, 350) and chosen["steps"] in (2, 4, 8)
    assert (model.t0, model.steps) == (chosen["t0"], chosen["steps"])
    assert all(0 <= t["auroc"] <= 1 for t in chosen["tried"])
    assert chosen["kept"]["validation_auroc"] == max(t["auroc"] for t in chosen["tried"] if t["t0"] == chosen["t0"]
                                                     and t["steps"] == chosen["steps"])
    fixed = rddpm.build({"unet": "tiny", "t0": 150}, SPEC)
    assert choose_inference(fixed, validation, images, log=lambda *_: None)["t0"] == 150
    untouched = rddpm.build({"unet": "tiny"}, SPEC)  # no validation images: defaults, said so
    assert choose_inference(untouched, None, images, log=lambda *_: None)["method"].startswith("defaults")
    assert (untouched.t0, untouched.steps) == (rddpm.DEFAULT_T0, rddpm.DEFAULT_STEPS)


def test_map_statistics_silence_what_every_good_image_reconstructs_badly_and_ignore_hidden_defects():
    """A strip that no reconstruction gets right (texture differs per image) dominates the raw map; standardised by
    the good images' per-pixel median/MAD it no longer does, and a few defective images among them change nothing."""
    from train_host.models.layers import GaussianBlur

    rng = np.random.default_rng(0)

    def cells(n, dot):
        x = 128.0 + rng.normal(0, 3, (n, 1, 32, 32))  # sensor noise everywhere
        x[:, :, :, :6] += rng.normal(0, 40, (n, 1, 32, 6))  # texture a smoothing denoiser cannot reproduce
        if dot:
            x[:, :, 14:17, 18:21] += 40  # a small defect in the flat part
        return torch.from_numpy(np.clip(x, 0, 255).astype(np.uint8))

    good, defective = cells(16, False), cells(16, True)
    train = torch.cat([cells(36, False), cells(4, True)])  # 10% hidden defects
    class Blurring(rddpm.RDDPMDetector):  # a fixed, imperfect denoiser: what the test is about is the map
        def reconstruct(self, x):
            return GaussianBlur(2.0)(x)

    raw = Blurring(rddpm.RDDPMConfig.from_dict({**TINY, "feature_weight": 0, "normalize": False}), SPEC).eval()
    z = Blurring(rddpm.RDDPMConfig.from_dict({**TINY, "feature_weight": 0}), SPEC).eval()
    z.fit_map_statistics(train)
    with torch.no_grad():
        def auroc(model):
            from sklearn.metrics import roc_auc_score

            s = np.r_[model(good)[1].numpy(), model(defective)[1].numpy()]
            return roc_auc_score(np.r_[np.zeros(16), np.ones(16)], s)

        assert auroc(raw) < 0.8  # the strip's residual hides the dot
        assert auroc(z) == 1.0
        amap = z(good)[0]
        assert amap[..., :6].mean() < 3 * amap[..., 8:].mean()  # the strip is no louder than the rest


def test_feature_term_adds_a_map_channel_and_exports_as_part_of_the_graph():
    model = rddpm.build({**TINY, "feature_weight": 1.0}, SPEC)
    assert model.map_center.shape == (1, 2, 32, 32)  # residual of the one channel + feature distance
    images = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (2, 1, 32, 32)).astype(np.uint8))
    with torch.no_grad():
        x = model.to_unit(images)
        assert float(model.feature_distance(x, x).abs().max()) == 0.0
        assert float(model.feature_distance(x, x.flip(-1)).mean()) > 0.0
    assert model.feature_input == (128, 128)  # small inputs are scaled up to feature_size for the ResNet's strides


def test_feature_channels_are_put_on_one_scale_by_the_good_images():
    """After fitting, each feature channel's residual has RMS 1 over the fitting images (or less, for channels
    below the floor), so no channel that a random init made large dominates the distance; the scale is saved."""
    model = rddpm.build({**TINY, "feature_weight": 1.0}, SPEC)
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 255, (8, 1, 32, 32)).astype(np.uint8))
    model.fit_map_statistics(images, batch_size=4)
    with torch.no_grad():
        x = model.to_unit(images)
        residual = (model.feature_stack(x) - model.feature_stack(model.reconstruct(x))) / model.feature_scale
    rms = residual.pow(2).mean((0, 2, 3)).sqrt()
    assert float(rms.max()) == pytest.approx(1.0, rel=1e-4) and float(rms.min()) >= 0.0
    assert float((rms > 0.999).float().mean()) > 0.5  # most channels are above the floor
    assert "feature_scale" in model.state_dict() and float(model.feature_scale.std()) > 0


def test_train_evaluate_export_score_end_to_end(run, category, tmp_path):
    """The export unrolls K = 2 steps over 2 fixed noise draws; its parity check covers the whole loop."""
    import onnx

    metrics_path = tmp_path / "metrics.json"
    assert cli(["evaluate", str(run), "--json", str(metrics_path)]) == 0
    metrics = json.loads(metrics_path.read_text())
    assert metrics["family"] == "rddpm" and metrics["image_auroc"] > 0.9
    bundle_dir = tmp_path / "bundle"
    assert cli(["export", str(run), "--out", str(bundle_dir), "--parity-images", "6",
                "--precision", "fp32,fp16,int8"]) == 0
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest.model.family == "rddpm" and bundle.manifest.model.config["steps"] == 2
    parity = bundle.manifest.files["model.onnx"].checks["parity"]
    assert parity["score_rel_err"] < 1e-3 and parity["map_rel_err"] < 1e-3 and parity["images"] > 0
    # The UNet (named backbone) and the DDIM updates between its K calls run in FP16 / INT8; map and score in FP32.
    fp16 = bundle.manifest.files["model.fp16.onnx"].checks
    assert fp16["accuracy"]["finite"] and fp16["accuracy"]["score_rel_err"] < 1e-2
    assert 0 < fp16["conversion"]["fp16_nodes"] < fp16["conversion"]["nodes"]
    # INT8 of this graph used to stop in onnxruntime's quantizer (a shared bias copied under a tensor's name)
    int8 = bundle.manifest.files["model.int8.onnx"].checks
    assert int8["accuracy"]["finite"] and int8["accuracy"]["score_rel_err"] < 0.25
    assert "Conv" in int8["conversion"]["quantized_op_types"] and int8["conversion"]["qdq_pairs"] > 0
    graph = onnx.load(str(bundle_dir / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image"]  # the noise is a constant inside the graph

    from train_host.infer import predict
    from train_host.run import load_run

    model, _ = load_run(run)
    samples = load_split(category).test
    scored = list(Scorer(bundle).score_paths([s.path for s in samples], batch=4))
    onnx_scores = np.array([s.verdict.score for s in scored])
    np.testing.assert_allclose(onnx_scores, predict(model, samples, SPEC).scores, rtol=1e-3, atol=1e-5)
    defects = np.array([s.label for s in samples]) == 1
    assert onnx_scores[defects].mean() > onnx_scores[~defects].mean()


@pytest.mark.slow
def test_study_trains_at_a_fixed_step_count_and_counts_the_contaminants(category, tmp_path):
    from train_host import rddpm_study

    out = tmp_path / "study"
    assert rddpm_study.main(["--data", str(category), "--out", str(out), "--levels", "0,0.1", "--size", "32",
                             "--epochs", "2", "--batch-size", "8", "--threads", "1",
                             "--set", "unet=tiny", "--set", "t0=50", "--set", "steps=2", "--set", "crop=0"]) == 0
    results = json.loads((out / "results.json").read_text())
    runs = {(r["contamination"], r["loss"]): r for r in results["runs"]}
    assert set(runs) == {(0.0, "huber"), (0.0, "mse"), (0.1, "huber"), (0.1, "mse")}
    assert {r["train_steps"] for r in runs.values()} == {2 * 3}  # 2 epochs of 3 batches of 8, whatever the clock
    assert runs[(0.0, "huber")]["train_contaminated"] == 0
    assert runs[(0.1, "huber")]["train_contaminated"] == runs[(0.1, "mse")]["train_contaminated"] == 2
    assert "| 10% | huber | 2 |" in (out / "report.md").read_text()

    # `lineside evaluate` puts the runs side by side on the test images none of them trained on: the study's set
    table = tmp_path / "side_by_side.json"
    assert cli(["evaluate", *(str(out / r) for r in ("c0_huber", "c0_mse", "c0.1_huber", "c0.1_mse")),
                "--json", str(table), "--batch-size", "8"]) == 0
    side = json.loads(table.read_text())
    assert side["test_images"] == results["test_images"]
    for row in side["runs"]:
        study = runs[(row["contamination"], row["loss"])]
        assert row["train_defects"] == study["train_contaminated"]
        assert row["image_auroc"] == pytest.approx(study["image_auroc"], abs=1e-6)

    # --refit redoes the map statistics on the trained UNet: same weights, same scores, the refit recorded
    from train_host.run import read_record

    before = json.loads((out / "results.json").read_text())["runs"]
    weights = (out / "c0.1_mse" / "weights.safetensors").read_bytes()
    assert rddpm_study.main(["--data", str(category), "--out", str(out), "--levels", "0.1", "--losses", "mse",
                             "--size", "32", "--epochs", "2", "--batch-size", "8", "--threads", "1", "--refit",
                             "--set", "unet=tiny", "--set", "t0=50", "--set", "steps=2", "--set", "crop=0"]) == 0
    assert "refit" in read_record(out / "c0.1_mse")["training"]
    assert (out / "c0.1_mse" / "weights.safetensors").read_bytes() == weights  # deterministic: nothing moved
    after = json.loads((out / "results.json").read_text())["runs"]
    assert after[0]["image_auroc"] == next(r for r in before if r["run"].endswith("c0.1_mse"))["image_auroc"]

    # a level run alone still scores on the common test set when told where it comes from
    assert rddpm_study.main(["--data", str(category), "--out", str(out), "--levels", "0", "--losses", "huber",
                             "--test-contamination", "0.1", "--size", "32", "--epochs", "2", "--batch-size", "8",
                             "--threads", "1", "--set", "unet=tiny", "--set", "t0=50", "--set", "steps=2",
                             "--set", "crop=0"]) == 0
    alone = json.loads((out / "results.json").read_text())
    assert alone["test_images"] == results["test_images"] < len(load_split(category).test)
    assert alone["runs"][0]["image_auroc"] == runs[(0.0, "huber")]["image_auroc"]
