"""rx chooses its feature stages, map smoothing and image score on validation (train_host/models/rx_select.py):
the best candidate wins when it beats the default by more than the tolerance, near-ties keep the default, every
candidate is recorded, and the saved run and its exported graph score as the chosen candidate did."""

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch
from mvtec_fixture import make_mvtec
from validation_cases import assert_exported_graph_scores_as_saved, small_defects

from edge_infer.bundle import Bundle
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from lineside.cli import main as cli
from train_host.context import TrainContext
from train_host.data import load_split
from train_host.models import rx
from train_host.models.rx_select import candidate_grid, fit_choosing
from train_host.run import load_run, save_run
from train_host.validation import TOLERANCE, choose_setting

SPEC = InputSpec(64, 64, 1)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "cells", n_train=24, n_good=2, n_defect=2)


def context_for(split) -> TrainContext:
    return TrainContext(split, SPEC, {"seed": 0, "batch_size": 8}, log=lambda *_: None)


@pytest.fixture(scope="module")
def chosen(data, tmp_path_factory):
    """rx whose given default score is the mean of the top half of the map, choosing score and smoothing."""
    torch.set_num_threads(2)
    split = load_split(data, val_share=0.2)
    model = rx.build({"feature_dim": 24, "score": "topk:0.5", "layers": [1, 2], "choose": ["score", "sigma"]}, SPEC)
    validation = small_defects(64)
    record = fit_choosing(model, context_for(split), validation)
    out = tmp_path_factory.mktemp("runs") / "rx"
    save_run(out, "rx", asdict(model.config), SPEC, model, split.info, record)
    return model, record, validation, out


def test_the_candidate_that_catches_small_defects_beats_the_default(chosen):
    model, record, _, _ = chosen
    settings = record["settings"]
    tried = {(row["score"], row["sigma"]): row["validation_auroc"] for row in settings["tried"]}
    assert len(tried) == 3 * 3  # score: topk:0.5, max, topk:0.01; sigma: 4, 2, 8
    default = tried["topk:0.5", 4.0]
    best = max(tried, key=tried.get)
    assert tried[best] > default + TOLERANCE  # the constructed case: the default must lose
    assert (settings["chosen"]["score"], settings["chosen"]["sigma"]) == best != ("topk:0.5", 4.0)
    assert (model.config.score, model.config.sigma) == best and model.image_score.rule == best[0]
    assert settings["default"] == {"layers": [1, 2], "sigma": 4.0, "score": "topk:0.5"}
    assert record["validation_auroc"] == pytest.approx(tried[best], abs=1e-4)  # the model as kept scores it
    assert "choosing" in record["validation_used_for"]


def test_the_saved_run_and_its_exported_graph_score_the_chosen_setting(chosen, tmp_path):
    model, record, validation, out = chosen
    loaded, saved = load_run(out)
    assert (saved["config"]["score"], saved["config"]["sigma"]) == (model.config.score, model.config.sigma)
    graph = assert_exported_graph_scores_as_saved(out, loaded, validation, record, tmp_path / "b")
    assert validation.summarise(graph)["validation_auroc"] == pytest.approx(record["validation_auroc"], abs=1e-3)


def test_a_stage_set_choice_drops_the_unused_stage_from_the_graph(data):
    model = rx.build({"feature_dim": 24}, SPEC)
    mean, whiten = model.mean.clone(), model.whiten.clone()
    assert "layer3.0.conv1.weight" in model.backbone.state_dict()
    conv1 = model.backbone.conv1.weight.clone()
    model.use_settings((1, 2), 2.0, "max")
    assert "layer3.0.conv1.weight" not in model.backbone.state_dict()
    assert torch.equal(model.backbone.conv1.weight, conv1)  # the backbone keeps its weights
    assert torch.equal(model.channels, rx.build({"feature_dim": 24, "layers": [1, 2]}, SPEC).channels)
    assert model.mean.shape == mean.shape and model.whiten.shape == whiten.shape
    assert model.config.layers == (1, 2) and model.smooth.sigma == 2.0


def test_near_ties_keep_the_default_and_clear_wins_do_not():
    results = {"default": {"validation_auroc": 0.80}, "a": {"validation_auroc": 0.80 + TOLERANCE / 2},
               "b": {"validation_auroc": 0.79}}
    assert choose_setting(results, "default") == "default"
    results["c"] = {"validation_auroc": 0.80 + 2 * TOLERANCE}
    results["d"] = {"validation_auroc": 0.80 + 2 * TOLERANCE}
    assert choose_setting(results, "default") == "c"  # equals: the first tried


def test_a_plain_run_chooses_records_every_candidate_and_is_reproducible(data, tmp_path):
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        assert cli(["train", "rx", "--data", str(data), "--out", str(out), "--size", "64", "--channels", "1",
                    "--feature-dim", "16", "--threads", "2"]) == 0
        runs.append(json.loads((out / "run.json").read_text()))
    settings = runs[0]["training"]["settings"]
    assert len(settings["tried"]) == 3 * 3 * 2 and settings["default"] == {"layers": [1, 2, 3], "sigma": 4.0,
                                                                            "score": "max"}
    assert all({"synthetic", "validation_auroc"} <= {k.replace("auroc_", "") for k in row} for row in settings["tried"])
    assert runs[0]["config"]["layers"] == settings["chosen"]["layers"]
    assert runs[0]["training"]["settings"] == runs[1]["training"]["settings"]  # seeded: the same choice


def test_given_settings_are_held(data, tmp_path):
    out = tmp_path / "given"
    assert cli(["train", "rx", "--data", str(data), "--out", str(out), "--size", "64", "--channels", "1",
                "--feature-dim", "16", "--layers", "2,3", "--sigma", "1", "--threads", "2"]) == 0
    record = json.loads((out / "run.json").read_text())
    rows = record["training"]["settings"]["tried"]
    assert {(tuple(r["layers"]), r["sigma"]) for r in rows} == {((2, 3), 1.0)}  # only the score was open
    assert {r["score"] for r in rows} == {"max", "topk:0.01"} and record["config"]["choose"] == ["score"]
    config = rx.RXConfig.from_dict({"score": "max", "sigma": 2, "layers": [1, 2, 3]})
    assert candidate_grid(config) == [((1, 2, 3), 2, "max")]


def test_a_lead_that_rests_on_one_image_keeps_the_default():
    """Ahead by 0.125 only because one good image scores lower: a resample without that image ties, so the lead
    wins too few paired bootstrap resamples and the default stays; a lead on every image is kept."""
    from train_host.validation import CONFIDENCE, Validation, choose_on

    parts = np.array(["good"] * 4 + ["structural"] * 4)
    validation = Validation(torch.zeros(8, 1, 4, 4, dtype=torch.uint8), parts, ("structural",), (), "constructed")
    default = np.array([0, 1, 2, 3, 1.5, 2.5, 3.5, 4.5])
    one_image = np.array([0, 1, 2, 1.4, 1.5, 2.5, 3.5, 4.5])
    kept, results, wins = choose_on(validation, {"default": default, "one image": one_image}, "default")
    assert results["one image"]["validation_auroc"] - results["default"]["validation_auroc"] == pytest.approx(0.125)
    assert kept == "default" and wins["one image"] < CONFIDENCE
    inverted, everywhere = np.array([10, 11, 12, 13, 0, 1, 2, 3]), np.array([0, 1, 2, 3, 10, 11, 12, 13])
    kept, _, wins = choose_on(validation, {"default": inverted, "everywhere": everywhere}, "default")
    assert kept == "everywhere" and wins["everywhere"] >= CONFIDENCE
