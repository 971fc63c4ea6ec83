"""dinov2-knn chooses its blocks, neighbours K, map smoothing and image score on validation
(train_host/models/dinov2_knn_select.py): the best candidate wins when it beats the default by more than the
tolerance, every candidate is recorded, and the saved run and its exported graph score as the chosen one did."""

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
from train_host.models import dinov2_knn
from train_host.models.dinov2_knn_select import candidate_grid, fit_choosing
from train_host.run import load_run, save_run
from train_host.validation import TOLERANCE

SPEC = InputSpec(56, 56, 1)
SMALL = {"backbone": "vits14", "depth": 2, "layers": [0, 1], "bank_size": 200}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "cells", n_train=24, n_good=2, n_defect=2)


@pytest.fixture(scope="module")
def chosen(data, tmp_path_factory):
    """dinov2-knn whose given default score is the mean of the top half of the map, choosing everything."""
    torch.set_num_threads(2)
    split = load_split(data, val_share=0.2)
    model = dinov2_knn.build({**SMALL, "score": "topk:0.5", "choose": ["layers", "k", "sigma", "score"]}, SPEC)
    validation = small_defects(56)
    context = TrainContext(split, SPEC, {"seed": 0, "batch_size": 8}, log=lambda *_: None)
    record = fit_choosing(model, context, validation)
    out = tmp_path_factory.mktemp("runs") / "knn"
    save_run(out, "dinov2-knn", asdict(model.config), SPEC, model, split.info, record)
    return model, record, validation, out


def key(row) -> tuple:
    return tuple(row["layers"]), row["k"], row["sigma"], row["score"]


def test_the_best_candidate_beats_the_default_and_is_kept(chosen):
    model, record, _, _ = chosen
    settings = record["settings"]
    tried = {key(row): row["validation_auroc"] for row in settings["tried"]}
    assert len(tried) == 3 * 3 * 3 * 3  # blocks (0,1), (0,), (1,); K 1, 3, 9; sigma 4, 2, 8; three scores
    default = ((0, 1), 1, 4.0, "topk:0.5")
    best = max(tried, key=tried.get)
    assert tried[best] > tried[default] + TOLERANCE  # the constructed case: the default must lose
    assert key(settings["chosen"]) == best
    assert (model.layers, model.config.k, model.config.sigma, model.config.score) == best
    assert model.bank.shape[1] == model.backbone.embed_dim * len(best[0])  # the chosen blocks' bank
    assert record["validation_auroc"] == pytest.approx(tried[best], abs=1e-4)


def test_the_saved_run_and_its_exported_graph_score_the_chosen_setting(chosen, tmp_path):
    model, record, validation, out = chosen
    loaded, saved = load_run(out)
    assert_exported_graph_scores_as_saved(out, loaded, validation, record, tmp_path / "b")


def test_a_plain_run_records_its_choice_and_given_settings_are_held(data, tmp_path):
    out = tmp_path / "run"
    assert cli(["train", "dinov2-knn", "--data", str(data), "--out", str(out), "--size", "56", "--channels", "1",
                "--backbone", "vits14", "--depth", "4", "--bank-size", "100", "--sigma", "2", "--k", "3"]) == 0
    record = json.loads((out / "run.json").read_text())
    settings = record["training"]["settings"]
    assert {(row["k"], row["sigma"]) for row in settings["tried"]} == {(3, 2.0)}  # given: held
    assert {tuple(row["layers"]) for row in settings["tried"]} == {(2, 3), (2,), (3,)}  # default: two blocks of the second half
    assert record["config"]["layers"] == settings["chosen"]["layers"] and record["config"]["choose"] == ["layers", "score"]
    model = dinov2_knn.build({**SMALL, "k": 3, "sigma": 2.0, "score": "max"}, SPEC)
    assert candidate_grid(model) == [((0, 1), 3, 2.0, "max")]
