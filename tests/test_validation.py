"""The shared validation (train_host.validation): held-out kinds per family, the same instances for every
family, real defects, never the test split; and every family's run records validation_auroc."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from mvtec_fixture import make_mvtec

from edge_infer.preprocess import InputSpec
from train_host.context import TrainContext
from train_host.data import load_split
from train_host.families import load_family
from train_host.validation import POOL, build_validation, held_out, trained_kinds, validation_good

SPEC = InputSpec(32, 32, 1)


class NoTest(list):
    """A test split that fails the moment anything looks at it."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("validation read the test split")

    __iter__ = __getitem__ = __len__ = __bool__ = __contains__ = _refuse


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_mvtec(tmp_path_factory.mktemp("data") / "cells", n_train=16, n_good=4, n_defect=4)


def context_for(split, **options) -> TrainContext:
    return TrainContext(split, SPEC, {"seed": 0, "batch_size": 8, **options}, log=lambda *_: None)


def without_test(split):
    split.test = NoTest()
    return split


def test_each_family_is_scored_on_the_kinds_it_did_not_train_on():
    kinds = {name: held_out(trained_kinds(load_family(name), load_family(name).build({}, SPEC).config))
             for name in ("draem", "cutpaste", "rddpm")}
    assert "texture" not in kinds["draem"] and {"cutpaste", "contextual"}.isdisjoint(kinds["cutpaste"])
    assert kinds["rddpm"] == POOL
    lora = load_family("dinov2-lora")
    assert held_out(trained_kinds(lora, lora.DinoLoRAConfig())) == ("confetti",)
    adtr = load_family("adtr")
    assert "confetti" not in held_out(adtr.trains_on(adtr.ADTRConfig(anomaly_available=True)))


def test_the_same_anomaly_instances_for_every_family_and_never_the_test_split(data):
    split = without_test(load_split(data, val_share=0.3, val_defects=2))
    draem = build_validation(context_for(split), ("texture",))
    cutpaste = build_validation(context_for(split), ("cutpaste", "contextual"))
    for kind in set(draem.kinds) & set(cutpaste.kinds):  # structural, confetti: identical images
        assert torch.equal(draem.images[draem.parts == kind], cutpaste.images[cutpaste.parts == kind])
    assert "texture" not in draem.parts and "cutpaste" not in cutpaste.parts
    assert (draem.parts == "real").sum() == 2 and (draem.parts == "good").sum() == len(split.val)
    # a scorer that ranks the real defects and the synthetic anomalies above the good images
    scores = draem.labels.astype(float)
    result = draem.summarise(scores)
    assert result["auroc_synthetic"] == result["auroc_real"] == result["validation_auroc"] == 1.0
    assert set(result["per_kind"]) == set(draem.kinds)
    record = draem.record(result)
    assert record["validation"]["trained_on"] == ["texture"] and record["validation"]["real_defects"] == 2


def test_one_good_image_still_gives_every_held_out_kind(data):
    split = without_test(load_split(data, val_share=0.3))
    split.val = split.val[:1]
    validation = build_validation(context_for(split), ())
    assert sorted(set(validation.parts) - {"good"}) == sorted(POOL)
    result = validation.summarise(np.arange(len(validation.parts), dtype=float))
    assert all(np.isfinite(v) for v in result["per_kind"].values()) and result["validation_auroc"] == 1.0


def test_every_family_run_records_validation_auroc_without_reading_the_test_split(data, tmp_path):
    """rx chooses its settings on validation (rx_select.py); the AUROC recorded is the kept setting's, the number
    `train auto` compares."""
    from train_host.train import train_run

    split = without_test(load_split(data, val_share=0.3))
    torch.set_num_threads(1)
    train_run("rx", {"feature_dim": 16, "sigma": 1}, SPEC, split, tmp_path / "rx",
              options={"batch_size": 8, "seed": 0}, log=lambda *_: None)
    training = json.loads((tmp_path / "rx" / "run.json").read_text())["training"]
    assert 0 <= training["validation_auroc"] <= 1
    assert training["validation"]["kinds"] == list(POOL) and training["validation"]["trained_on"] == []
    assert training["validation_used_for"].startswith("choosing")
    kept = [row for row in training["settings"]["tried"]
            if {k: row[k] for k in ("layers", "sigma", "score")} == training["settings"]["chosen"]]
    assert kept and np.isclose(training["validation_auroc"], kept[0]["validation_auroc"], atol=1e-4)
    assert np.isclose(training["validation_auroc"], training["validation"]["auroc_synthetic"])


def test_the_good_images_are_a_seeded_draw_over_the_whole_validation_split(data):
    """Not the first 32 by file name, which can be one batch or one kind of part (30 of ELPV's first 32 were poly)."""
    split = load_split(data)
    split.val = [dataclasses.replace(split.train[0], path=f"{kind}-{i:03d}.png")
                 for kind in ("a", "b") for i in range(40)]  # by name: every "a" before every "b"
    picked = validation_good(split, 32, seed=0)
    kinds = [p.path[0] for p in picked]
    assert len(picked) == 32 and 8 <= kinds.count("b") <= 24  # both kinds, near half each
    assert picked == validation_good(split, 32, seed=0) != validation_good(split, 32, seed=1)
    assert validation_good(split, 80, seed=0) == split.val  # all of them when there are no more
    split.val = []
    assert validation_good(split, 4, seed=0) == split.train[-4:]  # no validation split: the last training images
