"""dinov2-lora --zero-shot: trained once over two stations, scored (evaluate, export) on a third it never saw."""

import json

import numpy as np
import pytest
from mvtec_fixture import make_mvtec

from edge_infer.bundle import Bundle
from lineside.cli import main as cli
from train_host.data import load_split
from train_host.data.stations import load_stations
from train_host.infer import predict
from train_host.run import load_run

TINY = ["--size", "56", "--backbone", "vits14", "--depth", "2", "--layers", "0,1", "--epochs", "1",
        "--per-kind", "1", "--batch-size", "8", "--threads", "2"]


@pytest.fixture(scope="module")
def stations(tmp_path_factory):
    root = tmp_path_factory.mktemp("stations")
    # three stations with different textures (seeds); c is the new one
    return [make_mvtec(root / name, n_train=5, n_good=2, n_defect=2, seed=seed)
            for name, seed in (("a", 1), ("b", 2), ("c", 3))]


@pytest.fixture(scope="module")
def zero_shot_run(stations, tmp_path_factory):
    a, b, _ = stations
    run = tmp_path_factory.mktemp("zs") / "run"
    assert cli(["train", "dinov2-lora", "--zero-shot", "--data", str(a), "--data", str(b), "--out", str(run),
                *TINY]) == 0
    return run


@pytest.mark.slow  # trains once (~30 s on the shared 2-core CPU), shared by the three tests
def test_zero_shot_trains_on_every_station_given(stations, zero_shot_run):
    a, b, _ = stations
    record = json.loads((zero_shot_run / "run.json").read_text())
    assert record["config"]["zero_shot"] is True and record["data"]["zero_shot"] is True
    assert record["data"]["data"] is None  # no station of its own: scoring asks for --data
    assert [s["data"] for s in record["data"]["stations"]] == [str(a), str(b)]
    # each station: 5 train/good, 1 held out for validation (val_share 0.1 → at least one)
    assert [(s["train"], s["val"]) for s in record["data"]["stations"]] == [(4, 1), (4, 1)]
    training = record["training"]
    assert training["stations"]["good_images"] == [4, 4]
    # per station: --per-kind 1 of each of 4 kinds, and as many plain good images
    assert training["synthetic_anomalies"] == 2 * 4 and training["train_images"] == 2 * 8
    # validation: held-out synthetic anomalies from both stations' training images (one val image each is too few)
    assert training["lora_validation"]["source"] == "training images (no validation split)"
    assert training["validation_good_scores"]["n"] == 2  # one validation good image per station


@pytest.mark.slow  # trains once (~30 s on the shared 2-core CPU), shared by the three tests
def test_a_new_station_is_scored_without_training_on_it(stations, zero_shot_run, tmp_path):
    _, _, c = stations
    metrics = tmp_path / "metrics.json"
    assert cli(["evaluate", str(zero_shot_run), "--data", str(c), "--json", str(metrics), "--threads", "2"]) == 0
    result = json.loads(metrics.read_text())
    assert result["data"] == "c" and result["images"] == 4 and 0.0 <= result["image_auroc"] <= 1.0

    bundle_dir = tmp_path / "bundle"
    assert cli(["export", str(zero_shot_run), "--out", str(bundle_dir), "--data", str(c), "--threads", "2"]) == 0
    thresholds = json.loads((bundle_dir / "thresholds.json").read_text())
    # the provisional threshold is the 99th percentile of the NEW station's good scores (its 5 train/good)
    model, record = load_run(zero_shot_run)
    split = load_split(c)
    goods = [s for s in split.train + split.val if s.label == 0]
    scores = predict(model, goods, Bundle.load(bundle_dir).input_spec).scores
    assert len(scores) == 5
    assert thresholds["image"] == pytest.approx(float(np.quantile(scores, 0.99)), rel=1e-6)
    assert str(c) in thresholds["provenance"]["method"]
    assert thresholds["image"] != pytest.approx(record["training"]["validation_good_scores"]["q99"], rel=1e-6)


@pytest.mark.slow  # trains once (~30 s on the shared 2-core CPU), shared by the three tests
def test_scoring_a_zero_shot_run_needs_the_new_station(zero_shot_run, tmp_path, capsys):
    assert cli(["evaluate", str(zero_shot_run)]) == 2
    assert cli(["export", str(zero_shot_run), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("trained zero-shot on the stations a, b: give --data DIR") == 2
    assert not (tmp_path / "b").exists()  # refused before anything was written


def test_zero_shot_needs_two_stations_and_two_stations_need_zero_shot(stations, tmp_path, capsys):
    a, b, _ = stations
    out = str(tmp_path / "run")
    assert cli(["train", "dinov2-lora", "--zero-shot", "--data", str(a), "--out", out, *TINY]) == 2
    assert "give two or more, --data DIR1 --data DIR2" in capsys.readouterr().err
    assert cli(["train", "dinov2-lora", "--data", str(a), "--data", str(b), "--out", out, *TINY]) == 2
    assert "add --zero-shot" in capsys.readouterr().err
    with pytest.raises(Exception, match="same station twice"):
        load_stations([str(a), str(a)])
