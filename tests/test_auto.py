"""`lineside train auto`: the budget plan, the choice by validation (and latency), the table, the winner as a run;
and `lineside evaluate --correlate`."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from mvtec_fixture import make_mvtec

from edge_infer.preprocess import InputSpec
from lineside.cli import main as cli
from train_host.auto import SYNTHETIC_ONLY, Candidate, choose, estimate, plan, write_table
from train_host.context import cpu_hardware
from train_host.data.records import Sample, Split
from train_host.evaluate import correlation


def gradient(family, least, full, epoch=0.1, scoring=0.05):
    return Candidate(family, estimate={"least": least, "full": full, "epoch_minutes": epoch, "epochs": 10,
                                       "scoring_minutes": scoring})


def test_the_plan_skips_what_does_not_fit_and_caps_the_rest_at_their_share():
    rx = Candidate("rx", estimate={"full": 1.0, "least": 1.0})
    knn = Candidate("dinov2-knn", estimate={"full": 50.0, "least": 50.0})  # a closed-form pass over the budget
    cheap, whole, slow = gradient("cutpaste", 0.5, 2.0), gradient("draem", 0.5, 30.0), gradient("adtr", 6.0, 60.0)
    plan([rx, knn, cheap, whole, slow], budget=10.0)
    assert rx.status == "planned" and rx.estimate["planned"] == 1.0
    assert knn.status == "skipped" and "50.0 minutes" in knn.reason
    # 9 minutes left for three gradient families: adtr's shortest run (6) is over a third; the other two get 4.5
    assert slow.status == "skipped" and "6.0 minutes" in slow.reason and "--budget-minutes" in slow.reason
    assert cheap.status == whole.status == "planned"
    assert cheap.settings == {} and cheap.estimate["planned"] == 2.0  # its whole schedule fits its share
    assert whole.settings == {"max_minutes": pytest.approx(4.45)} and whole.estimate["planned"] == 4.5
    lora = gradient("dinov2-lora", 1.0, 100.0, epoch=1.0)  # no wall-clock cap: fewer epochs instead
    plan([lora], budget=3.0)
    assert lora.settings == {"epochs": 2}


def test_the_choice_is_the_best_validation_within_the_latency_limit():
    def trained(family, auroc, ms):
        return Candidate(family, status="trained", validation_auroc=auroc, latency_ms=ms)

    slow, fast, worse = trained("rddpm", 0.9, 40.0), trained("rx", 0.8, 5.0), trained("cutpaste", 0.7, 2.0)
    unvalidated = trained("adtr", None, 1.0)
    assert choose([slow, fast, worse, unvalidated], None) is slow and slow.chosen
    fast.chosen = slow.chosen = False
    assert choose([slow, fast, worse, unvalidated], latency_ms=10.0) is fast
    assert "40.00 ms" in slow.reason and "--latency-ms 10" in slow.reason and not slow.chosen
    assert choose([slow], latency_ms=10.0) is None


def test_the_table_says_when_no_real_defect_took_part_in_the_choice(tmp_path):
    args = SimpleNamespace(data="cells", size=64, channels=1, budget_minutes=5, latency_ms=None)
    winner = Candidate("rx", status="trained", validation_auroc=0.9, chosen=True)
    assert SYNTHETIC_ONLY in write_table(tmp_path, [winner], args, winner, 1.0, real_defects=0)
    assert json.loads((tmp_path / "auto.json").read_text())["real_defects_in_validation"] == 0
    text = write_table(tmp_path, [winner], args, winner, 1.0, real_defects=12)
    assert SYNTHETIC_ONLY not in text and SYNTHETIC_ONLY not in (tmp_path / "auto.md").read_text()
    assert json.loads((tmp_path / "auto.json").read_text())["real_defects_in_validation"] == 12


def test_dinov2_knn_estimate_counts_its_coreset_when_the_patches_exceed_the_bank():
    """Its greedy coreset (bank_size steps over every training patch, per block set) can cost more than the
    forward pass the estimate times: on ELPV the plan said 11.8 minutes and the run took 25."""
    def split(images):
        good = Sample(Path("g.png"), 0, "good")
        return Split("probe", [good] * images, [good] * 4, [])

    spec = InputSpec(28, 28, 3)  # 2×2 patches an image: 2000 images make 8000 rows, over the bank of 4096
    thinned = estimate("dinov2-knn", spec, split(2000), {"seed": 0, "batch_size": 2}, cpu_hardware())
    kept_whole = estimate("dinov2-knn", spec, split(500), {"seed": 0, "batch_size": 2}, cpu_hardware())
    assert thinned.status == kept_whole.status == "planned"
    assert thinned.estimate["overhead_minutes"] > 0 and kept_whole.estimate["overhead_minutes"] == 0
    assert estimate("rx", InputSpec(32, 32, 1), split(20), {"seed": 0}, cpu_hardware()).estimate["overhead_minutes"] == 0


def test_correlate_ranks_validation_against_test():
    rows = [{"run": f"r{i}", "validation_auroc": v, "image_auroc": t}
            for i, (v, t) in enumerate([(0.6, 0.55), (0.7, 0.6), (0.9, 0.8), (0.8, 0.7)])]
    assert correlation(rows)["spearman"] == 1.0
    rows[0]["validation_auroc"] = None  # a run from before validation_auroc existed: left out, named
    result = correlation(rows)
    assert result["runs"] == 3 and result["without_validation"] == ["r0"]
    assert correlation(rows[:2])["spearman"] is None


@pytest.mark.slow  # trains three families end to end (~30 s on 2 cores)
def test_train_auto_leaves_the_best_validated_candidate_as_the_run(tmp_path, capsys):
    data = make_mvtec(tmp_path / "cells", n_train=16, n_good=4, n_defect=4)
    run = tmp_path / "run"
    assert cli(["train", "auto", "--data", str(data), "--out", str(run), "--families", "rx,cutpaste,draem",
                "--budget-minutes", "6", "--size", "32", "--channels", "1", "--batch-size", "8",
                "--val-share", "0.25", "--threads", "1"]) == 0
    table = json.loads((run / "auto.json").read_text())
    rows = {r["family"]: r for r in table["candidates"]}
    assert set(rows) == {"rx", "cutpaste", "draem"}
    trained = [r for r in rows.values() if r["status"] == "trained"]
    assert trained and all(r["status"] == "trained" or r["reason"] for r in rows.values())
    best = max(trained, key=lambda r: r["validation_auroc"])
    assert table["chosen"] == best["family"] and best["chosen"]
    assert all(r["latency_ms"] > 0 and r["size_mb"] > 0 and r["minutes"] >= 0 for r in trained)
    record = json.loads((run / "run.json").read_text())
    assert record["family"] == best["family"] and record["auto"]["chosen_by"] == "validation_auroc"
    assert not (run / "candidates" / best["family"]).exists()
    for r in trained:
        if r["family"] != best["family"]:
            assert json.loads((run / "candidates" / r["family"] / "run.json").read_text())["family"] == r["family"]
    assert "| **chosen** |" in (run / "auto.md").read_text()
    assert table["real_defects_in_validation"] == 0 and SYNTHETIC_ONLY in (run / "auto.md").read_text()
    assert cli(["evaluate", str(run), "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["family"] == best["family"]
    # a new folder is required: auto never mixes its candidates into an old run
    capsys.readouterr()
    assert cli(["train", "auto", "--data", str(data), "--out", str(run), "--budget-minutes", "1"]) != 0
    assert "is not empty: give a new folder" in capsys.readouterr().err
