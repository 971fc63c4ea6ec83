"""`lineside bench train-step`: real `lineside train` runs in their own processes, timed per batch and per
optimiser step, two source trees interleaved."""

import json
import math
from pathlib import Path

import pytest
from mvtec_fixture import make_mvtec

from benchmarks.train_step import step_spans, timings
from lineside.cli import main as cli
from train_host.data import load_split

ROOT = Path(__file__).resolve().parents[2]


def test_a_step_is_the_span_between_optimiser_steps_less_the_batch_waits_inside_it():
    steps = [1.0, 1.5, 2.5, 2.6]
    fetches = [[1.1, 1.3], [2.0, 2.1], [2.55, 2.7]]  # the last one straddles a step: not inside a span
    assert step_spans(steps, fetches) == pytest.approx([300.0, 900.0, 100.0])


def test_warm_up_leaves_the_first_batches_and_steps_out_of_the_samples_but_not_the_totals():
    batches = [{"loader": 0, "fetch": [i, i + 0.25], "use": [i + 0.25, i + 1], "fetch_cpu": [i, i + 0.2],
                "use_cpu": [i + 0.2, i + 0.9], "images": 4, "in_fit": True} for i in range(5)]
    events = {"fit": [0.0, 5.0], "batches": batches, "loaders": ["dinov2: epoch 1"],
              "steps": [i + 1.0 for i in range(5)], "steps_cpu": [i + 0.9 for i in range(5)]}
    t = timings(events, warmup=2)
    assert t["samples_ms"]["data"] == pytest.approx([250.0] * 3)
    assert t["samples_ms"]["step"] == pytest.approx([750.0, 750.0])  # 4 spans, 2 left out
    assert t["cpu_samples_ms"]["step"] == pytest.approx([800.0, 800.0])
    assert t["data_total_s"] == pytest.approx(1.25) and t["steps"] == 5
    assert t["loaders"] == {"dinov2: epoch N": {"batches": 5, "images": 20, "data_s": 1.25, "use_s": 3.75}}


@pytest.mark.slow
def test_rddpm_against_a_baseline_tree(tmp_path, capsys):
    """Both trees are this checkout here (CI has no second one): the ratios exist and the counts add up."""
    data = make_mvtec(tmp_path / "cells", n_train=12)
    out = tmp_path / "bench"
    assert cli(["bench", "train-step", "rddpm", "--data", str(data), "--images", "8", "--epochs", "2",
                "--batch-size", "2", "--size", "32", "--warmup", "1", "--repeats", "1", "--threads", "1",
                "--baseline", str(ROOT), "--out", str(out)]) == 0
    doc = json.loads((out / "train-step.json").read_text())
    assert [(r["tree"], r["status"]) for r in doc["runs"]] == [("baseline", "ok"), ("current", "ok")]
    train = len(load_split(data, limit=8).train)
    for run in doc["runs"]:
        assert run["steps"] == 2 * math.ceil(train / 2)  # every optimiser step inside fit, none of the probe's
        assert len(run["samples_ms"]["step"]) == run["steps"] - 1 - 1  # spans between steps, less warm-up
        assert run["loaders"]["rddpm: reading train"]["images"] == train
        assert run["fit_s"] > 0 and run["threads"] == 1
    summary = doc["summary"]["rddpm"]
    assert set(summary["ratios"]) >= {"data", "step", "step_cpu"}
    assert doc["machine"]["cpu"]["logical_cores"] >= 1 and doc["trees"]["baseline"]["path"] == str(ROOT)
    assert doc["command"].startswith("lineside bench train-step rddpm --data")
    assert "current/baseline step (p50)" in capsys.readouterr().out


def test_unknown_family_and_a_folder_that_is_not_a_tree_are_refused(tmp_path, capsys):
    assert cli(["bench", "train-step", "patchcore", "--out", str(tmp_path)]) == 2
    assert "unknown family patchcore" in capsys.readouterr().err
    assert cli(["bench", "train-step", "rx", "--baseline", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "not a lineside source tree" in capsys.readouterr().err
