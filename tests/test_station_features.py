"""Station-learned features for rx and dinov2-knn: the pretext, --features random|station|FILE, the choice."""

import json

import numpy as np
import pytest
import torch

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec
from lineside.cli import main as cli
from mvtec_fixture import make_mvtec
from train_host.context import TrainContext
from train_host.data import load_split
from train_host.features.choice import BACKBONE_FILE, RULE, build_validation, choose
from train_host.features.pretext import train_pretext
from train_host.models import dinov2_knn, rx
from train_host.run import load_run
from train_host.validation import CONFIDENCE, TOLERANCE, Validation

SPEC = InputSpec(64, 64, 3)
RX = ["--size", "64", "--feature-dim", "24", "--sigma", "1", "--threads", "2"]


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "cells", n_train=30)


@pytest.fixture(scope="module")
def station_run(category, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "station"
    assert cli(["train", "rx", "--data", str(category), "--out", str(out), *RX, "--features", "station",
                "--pretext-steps", "3", "--batch-size", "8"]) == 0
    return out


def features_record(run) -> dict:
    return json.loads((run / "run.json").read_text())["training"]["features"]


def backbone_copy(model) -> dict:
    return {k: v.clone() for k, v in model.backbone.state_dict().items()}


def test_pretext_trains_the_backbone_in_place(category):
    spec = InputSpec(128, 128, 3)  # a CNN trains on crops: half the side, 64 px
    model = rx.build({"feature_dim": 24}, spec)
    before = backbone_copy(model)
    context = TrainContext(load_split(category), spec, {"batch_size": 4}, log=lambda *_: None)
    record = train_pretext(model, context, minutes=0, steps=3)
    assert record["crop"] == 64
    after = model.backbone.state_dict()
    changed = [k for k, v in before.items() if v.is_floating_point() and not torch.equal(v, after[k])]
    assert any(k.endswith("conv1.weight") for k in changed)  # weights learned, not only BN statistics
    assert record["steps"] == 3 and len(record["loss_curve"]) == 3 and record["images_per_step"] == 12
    assert not model.training  # left in eval mode for the closed-form fit


def test_station_features_record_their_provenance(station_run):
    features = features_record(station_run)
    assert features["source"] == "station" and features["kept"] in ("random", "station")
    assert set(features["validation_auroc"]) == {"random", "station"}
    for side in ("random", "station"):
        parts = features["validation_parts"][side]
        assert parts["validation_auroc"] == features["validation_auroc"][side] and "auroc_synthetic" in parts
        assert set(parts["per_kind"]) == {"texture", "structural", "confetti"}  # none the pretext makes
    assert features["pretext"]["steps"] == 3 and features["pretext"]["pretext"] == "cutpaste-3way"
    assert "(texture, structural, confetti, train_host.synth)" in features["validation_signal"]
    assert (station_run / BACKBONE_FILE).is_file() and features["backbone_file"].endswith(BACKBONE_FILE)


def test_the_kept_features_are_the_ones_validation_chose(station_run, category):
    """The saved model scores, on the same validation set, the AUROC recorded for the side that was kept."""
    features = features_record(station_run)
    aurocs = features["validation_auroc"]
    won = aurocs["station"] > aurocs["random"] + TOLERANCE and (features["bootstrap_share"] or 0) >= CONFIDENCE
    assert features["kept"] == ("station" if won else "random") and features["rule"] == RULE
    model, record = load_run(station_run)
    context = TrainContext(load_split(category, seed=0), SPEC, {"batch_size": 16, "seed": 0}, log=lambda *_: None)
    rescored = build_validation(context, 0).evaluate(model)["validation_auroc"]
    training = json.loads((station_run / "run.json").read_text())["training"]
    assert training["validation_auroc"] == rescored
    # the features were compared at the default settings; rx then chose its settings on the kept backbone, on the
    # same validation set: its default candidate is the kept side's model
    settings = training["settings"]
    default = [row for row in settings["tried"] if {k: row[k] for k in settings["default"]} == settings["default"]]
    assert default[0]["validation_auroc"] == pytest.approx(aurocs[features["kept"]], abs=1e-4)


def test_learned_features_are_kept_only_when_they_win_by_the_shared_rule():
    """A lead inside the tolerance keeps the random features (a strict `>` kept the station ones); a clear lead,
    won in nearly every bootstrap resample, keeps the station ones."""
    rng = np.random.default_rng(0)
    parts = np.array(["good"] * 40 + ["texture"] * 40 + ["structural"] * 40)
    validation = Validation(torch.zeros(len(parts), 1, 8, 8, dtype=torch.uint8), parts, ("texture", "structural"),
                            (), "test")
    random_scores = np.where(parts == "good", 0.0, 1.0) + rng.normal(0, 1.0, len(parts))
    nudged = random_scores.copy()
    nudged[np.flatnonzero(parts != "good")[:2]] += 0.3  # ahead, but by less than the tolerance
    kept, results, share = choose(validation, random_scores, nudged, seed=0)
    assert results["station"]["validation_auroc"] > results["random"]["validation_auroc"]
    assert kept == "random" and share is None
    clear = np.where(parts == "good", 0.0, 3.0) + rng.normal(0, 1.0, len(parts))
    kept, results, share = choose(validation, random_scores, clear, seed=0)
    assert kept == "station" and share >= CONFIDENCE


def test_a_station_backbone_file_round_trips_into_another_run(station_run, category, tmp_path):
    learned = load_run(station_run)[0] if features_record(station_run)["kept"] == "station" else None
    out = tmp_path / "shared"
    assert cli(["train", "rx", "--data", str(category), "--out", str(out), *RX, "--features",
                str(station_run / BACKBONE_FILE), "--seed", "1"]) == 0
    features = features_record(out)
    assert features["source"] == "file" and features["origin"]["pretext"]["steps"] == 3
    assert "file" in features["validation_auroc"]
    from safetensors.torch import load_file

    saved = load_file(str(station_run / BACKBONE_FILE))
    model = load_run(out)[0]
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, saved[key]), key
    if learned is not None:  # the station run kept it: its own backbone is the file's
        assert all(torch.equal(v, saved[k]) for k, v in learned.backbone.state_dict().items())
    random = rx.build({"feature_dim": 24, "seed": 1}, SPEC)  # what --seed 1 alone would have scored
    assert not torch.equal(random.backbone.state_dict()["conv1.weight"], saved["conv1.weight"])


def test_a_backbone_file_of_another_architecture_is_refused(station_run, category, tmp_path, capsys):
    def refused(*args) -> str:
        assert cli(["train", "rx", "--data", str(category), "--out", str(tmp_path / "x"), *RX, *args]) == 2
        return capsys.readouterr().err

    assert "holds a resnet18 backbone" in refused("--backbone", "resnet34", "--features", str(station_run))
    assert "no such file" in refused("--features", "stattion")
    assert "both set the backbone" in refused("--features", "station", "--weights", str(station_run / BACKBONE_FILE))
    assert not (tmp_path / "x").exists()


def test_dinov2_knn_learns_station_features_too(tmp_path):
    spec = InputSpec(56, 56, 3)
    split = load_split(make_mvtec(tmp_path / "cat", n_train=12, n_good=2, n_defect=2))
    model = dinov2_knn.build({"backbone": "vits14", "depth": 2, "layers": [0, 1], "bank_size": 40}, spec)
    before = backbone_copy(model)
    context = TrainContext(split, spec, {"batch_size": 4, "features": "station", "pretext_steps": 2,
                                         "out": str(tmp_path / "run")}, log=lambda *_: None)
    info = dinov2_knn.fit(model, context)
    features = info["features"]
    assert features["pretext"]["steps"] == 2 and set(features["validation_auroc"]) == {"random", "station"}
    assert features["pretext"]["crop"] is None  # a ViT's position embeddings fix its input: whole images
    learned = load_file_backbone(tmp_path / "run" / BACKBONE_FILE)
    assert any(not torch.equal(v, learned[k]) for k, v in before.items() if v.is_floating_point())
    now = model.backbone.state_dict()
    kept = learned if features["kept"] == "station" else before
    assert all(torch.equal(now[k], kept[k]) for k in now)


def load_file_backbone(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_an_elpv_cell_type_is_a_station_of_its_own():
    whole = load_split("elpv", seed=3)
    for cell_type in ("mono", "poly"):
        part = load_split(f"elpv:{cell_type}", seed=3)
        assert part.name == f"elpv-{cell_type}" and part.info["data"] == f"elpv:{cell_type}"
        for name in ("train", "val", "test"):
            mine = {s.path for s in getattr(part, name)}
            rows = {s.path for s in getattr(whole, name) if s.path in mine}
            assert mine and rows == mine  # the type's rows of the whole split, none more
        assert list(part.info["per_type"]) == [cell_type]
    assert len(load_split("elpv:mono").train) + len(load_split("elpv:poly").train) == len(load_split("elpv").train)
    with pytest.raises(LinesideError, match="mono, poly"):
        load_split("elpv:thin-film")
