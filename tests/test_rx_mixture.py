"""rx-mix: one set of rx Gaussians per cluster of the good images, K and the assignment chosen on validation."""

import json

import numpy as np
import onnx
import pytest
import torch

from edge_infer.bundle import Bundle
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from train_host.context import TrainContext
from train_host.data import load_split
from train_host.models import rx, rx_mixture
from twomode_fixture import blobs, make_station

SMALL = {"feature_dim": 24, "sigma": 1.0}
SPEC = InputSpec(64, 64, 3)
ARGS = ["--size", "64", "--feature-dim", "24", "--sigma", "1", "--threads", "2", "--val-share", "0.2"]


@pytest.fixture(scope="module")
def two_modes(tmp_path_factory):
    return make_station(tmp_path_factory.mktemp("data") / "two")


@pytest.fixture(scope="module")
def mixed_run(two_modes, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "mix"
    assert cli(["train", "rx-mix", "--data", str(two_modes), "--out", str(out), *ARGS]) == 0
    return out


def test_two_kinds_of_normal_choose_two_clusters_on_validation(two_modes, mixed_run, tmp_path):
    record = json.loads((mixed_run / "run.json").read_text())
    training = record["training"]
    assert training["clusters"] == 2 == record["config"]["clusters"]
    assert sum(training["cluster_sizes"]["2"]) == training["images"]
    by = {(c["clusters"], c["assign"]): c["validation_auroc"] for c in training["candidates"]}
    assert by[(2, training["assign"])] > by[(1, "score")] + 0.05  # chosen on validation, not on the test split
    assert training["validation_used_for"] == "the number of clusters and the assignment rule"
    # and the test split, which the choice never saw, agrees: one Gaussian per location misses the swapped squares
    single = tmp_path / "k1"
    assert cli(["train", "rx-mix", "--data", str(two_modes), "--out", str(single), "--clusters", "1", *ARGS]) == 0
    auroc = {}
    for name, run in (("mix", mixed_run), ("single", single)):
        assert cli(["evaluate", str(run), "--json", str(tmp_path / f"{name}.json")]) == 0
        auroc[name] = json.loads((tmp_path / f"{name}.json").read_text())["image_auroc"]
    assert auroc["mix"] > 0.9 and auroc["mix"] > auroc["single"] + 0.1, auroc


def test_one_kind_of_normal_keeps_one_cluster(tmp_path):
    data = make_station(tmp_path / "one", modes=(blobs,))
    out = tmp_path / "run"
    assert cli(["train", "rx-mix", "--data", str(data), "--out", str(out), *ARGS]) == 0
    training = json.loads((out / "run.json").read_text())["training"]
    assert training["clusters"] == 1
    assert all("silhouette" in reason for reason in training["refused"].values()) and training["refused"]


def test_one_cluster_is_plain_rx(two_modes):
    split = load_split(two_modes, val_share=0.2)
    context = TrainContext(split, SPEC, {"seed": 0, "batch_size": 8}, log=lambda *_: None)
    plain, mix = rx.build({**SMALL, "choose": ()}, SPEC), rx_mixture.build({**SMALL, "clusters": 1}, SPEC)
    assert plain.config.choose == mix.config.choose == ()  # rx at the same settings: nothing chosen
    rx.fit(plain, context)
    rx_mixture.fit(mix, context)
    assert torch.equal(plain.mean, mix.mean[0]) and torch.equal(plain.whiten, mix.whiten[0])
    x = torch.from_numpy(np.stack(load_images(split.test[:6])))
    with torch.no_grad():
        (map_a, score_a), (map_b, score_b) = plain(x), mix(x)
    assert torch.equal(score_a, score_b) and torch.equal(map_a, map_b)


def test_export_selects_inside_the_graph_with_parity_in_fp32_and_fp16(two_modes, mixed_run, tmp_path):
    bundle_dir = tmp_path / "bundle"
    assert cli(["export", str(mixed_run), "--out", str(bundle_dir), "--precision", "fp32,fp16",
                "--threads", "2"]) == 0
    bundle = Bundle.load(bundle_dir)
    parity = bundle.manifest.files["model.onnx"].checks["parity"]
    assert parity["score_rel_err"] < 1e-3 and parity["map_rel_err"] < 1e-3
    assert bundle.manifest.model.family == "rx-mix" and bundle.manifest.variants["fp16"] == "model.fp16.onnx"
    assert bundle.manifest.files["model.fp16.onnx"].checks["accuracy"]["score_rel_err"] < 1e-2
    ops = {n.op_type for n in onnx.load(str(bundle_dir / "model.onnx")).graph.node}
    assert "ArgMin" in ops  # every cluster's map is computed, the choice is made per image in the graph

    from train_host.infer import predict
    from train_host.run import load_run

    model, _ = load_run(mixed_run)
    samples = load_split(two_modes, val_share=0.2).test
    torch_scores = predict(model, samples, SPEC).scores
    onnx_scores = [s.verdict.score for s in Scorer(bundle).score_paths([s.path for s in samples], batch=4)]
    np.testing.assert_allclose(onnx_scores, torch_scores, rtol=1e-4)


def test_weights_of_another_cluster_count_load_with_their_rule(mixed_run):
    """``--features station`` keeps the random side's state while the station side fitted another K."""
    from train_host.run import load_run

    model, _ = load_run(mixed_run)
    other = rx_mixture.build({**SMALL, "clusters": 3, "assign": "nearest"}, SPEC)
    other.load_state_dict(model.state_dict())
    assert other.clusters == 2 and other.config.assign == model.config.assign
    x = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(other(x)[1], model(x)[1])


def load_images(samples):
    from edge_infer.imageio import read_image
    from edge_infer.preprocess import preprocess

    return [preprocess(read_image(s.path), SPEC) for s in samples]



def test_train_auto_plans_rx_mix_as_a_closed_form_fit_of_two_passes(two_modes, monkeypatch):
    """`--families rx,rx-mix`: rx-mix is estimated at two passes over the training images, and planned (or
    skipped) as a closed-form family, not given a gradient family's epochs."""
    import train_host.schedule
    from train_host.auto import Candidate, estimate, plan
    from train_host.context import cpu_hardware

    monkeypatch.setattr(train_host.schedule, "time_step", lambda fn: 0.08)  # the same forward time for both
    split = load_split(two_modes, val_share=0.2)
    options = {"seed": 0, "batch_size": 8}
    plain, mix = (estimate(f, SPEC, split, options, cpu_hardware()) for f in ("rx", "rx-mix"))
    one_pass = plain.estimate["forward_seconds"] * len(split.train) / 60
    assert mix.estimate["full"] == pytest.approx(plain.estimate["full"] + one_pass, abs=0.011)  # rounded to 0.01
    fits, over = (Candidate("rx-mix", estimate=dict(mix.estimate)) for _ in range(2))
    plan([fits], budget=mix.estimate["full"] + 1)
    plan([over], budget=mix.estimate["full"] / 2)
    assert fits.status == "planned" and fits.estimate["planned"] == mix.estimate["full"]
    assert over.status == "skipped" and "2 passes over the training images" in over.reason


def test_groups_the_station_knows_replace_k_means(two_modes, tmp_path, capsys):
    """``--groups CSV``: one cluster per named group (e.g. the product variant), not chosen by k-means."""
    train = sorted((two_modes / "train" / "good").glob("*.png"))
    groups = tmp_path / "groups.csv"
    groups.write_text("".join(f"{p.name},{'stripes' if int(p.stem) % 2 == 0 else 'blobs'}\n" for p in train))
    out = tmp_path / "run"
    assert cli(["train", "rx-mix", "--data", str(two_modes), "--out", str(out), "--groups", str(groups), *ARGS]) == 0
    training = json.loads((out / "run.json").read_text())["training"]
    assert training["clusters"] == 2 and [c["clusters"] for c in training["candidates"]] == [2, 2]
    assert sum(training["cluster_sizes"]["2"]) == training["images"]
    assert cli(["evaluate", str(out), "--json", str(tmp_path / "m.json")]) == 0  # the run rebuilds from its config
    groups.write_text(f"{train[0].name},stripes\n")  # the other training images have no group: refused
    assert cli(["train", "rx-mix", "--data", str(two_modes), "--out", str(tmp_path / "bad"), "--groups", str(groups),
                *ARGS]) == 2
    assert "have no group" in capsys.readouterr().err


def test_evaluate_reports_each_group_named_by_its_path(two_modes, mixed_run, tmp_path, capsys):
    """``evaluate --groups``: the same CSV as training's; in an MVTec folder file names repeat across the parts
    (test/good/000.png, test/swap/000.png), so rows name the end of the path, and a shared name is refused."""
    test = sorted((two_modes / "test").glob("*/*.png"))
    mode = {p: "stripes" if int(p.stem) % 2 == 0 else "blobs" for p in test}  # make_station's modes, in turn
    groups = tmp_path / "groups.csv"
    groups.write_text("".join(f"{p.parent.name}/{p.name},{mode[p]}\n" for p in test))
    out = tmp_path / "m.json"
    assert cli(["evaluate", str(mixed_run), "--groups", str(groups), "--json", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert {name: (g["n_good"], g["n_defect"]) for name, g in metrics["per_group"].items()} == {
        "blobs": (8, 12), "stripes": (8, 12)}
    assert all(0.5 < g["image_auroc"] <= 1.0 for g in metrics["per_group"].values())
    assert "per group (its images alone):" in capsys.readouterr().out
    groups.write_text("".join(f"{p.name},{mode[p]}\n" for p in test))  # 000.png is a good and a defect
    assert cli(["evaluate", str(mixed_run), "--groups", str(groups)]) == 2
    assert "name each by the end of its path" in capsys.readouterr().err
