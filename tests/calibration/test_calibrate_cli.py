"""`lineside calibrate` end to end on the tiny bundle (score = brightest pixel / 255)."""

import json
import time

import cv2
import numpy as np
import pytest
from tiny_bundle import make_tiny_bundle

from edge_infer.bundle import Bundle
from edge_infer.drift import reference_sample
from edge_infer.journal import Journal, set_confirmed
from lineside.cli import main


def write_images(folder, values, size=32):
    """One image per value: a dark field with a 2x2 spot of that value, so its score is value/255."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, v in enumerate(values):
        image = np.full((size, size), 10, np.uint8)
        image[8:10, 8:10] = int(v)
        cv2.imwrite(str(folder / f"{i:04d}.png"), image)
    return folder


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    good = write_images(root / "good", np.clip(rng.normal(80, 12, 700), 20, 255))
    write_images(root / "test" / "crack", np.clip(rng.normal(170, 25, 40), 0, 255))
    write_images(root / "test" / "stain", np.clip(rng.normal(150, 25, 20), 0, 255))
    write_images(root / "test" / "good", [70, 80])  # MVTec's test/good: not defects
    return root, good


@pytest.fixture
def station(images, tmp_path):
    """(images root, a fresh bundle with no threshold, the good folder)."""
    return images[0], make_tiny_bundle(tmp_path / "bundle", image_threshold=None), images[1]


def calibrate(*argv):
    return main(["calibrate", *map(str, argv)])


def test_quantile_writes_thresholds_with_provenance_into_the_bundle(station, capsys):
    root, bundle, good = station
    out = root / "report"
    assert calibrate(bundle, "--station", "press-3", "--good", good, "--defects", root / "test", "--out", out) == 0
    loaded = Bundle.load(bundle)  # verifies every sha256, thresholds.json included
    th = loaded.thresholds
    scores = np.sort(np.array([int(v) for v in np.clip(np.random.default_rng(0).normal(80, 12, 700), 20, 255)])) / 255
    assert th.image == pytest.approx(scores[-1], abs=1e-6)  # 700 images: only the highest meets 0.5% at 95%
    assert loaded.manifest.station == "press-3"
    p = th.provenance
    assert p["method"] == "quantile" and p["good_count"] == 700 and p["defect_count"] == 60
    assert p["defect_classes"] == {"crack": 40, "stain": 20}
    assert p["frr_bound"] <= 0.005 and p["escape_rate"] is not None and p["escape_bound"] >= p["escape_rate"]
    assert len(p["reference_scores"]) == 512 and p["bundle_manifest_sha256"] and p["model_sha256"]
    assert 0 < th.pixel <= th.image and th.min_area >= 1
    report = json.loads((out / "report.json").read_text())
    assert report["separation"]["auroc"] > 0.9
    for name in ("scores.png", "tail.png", "roc_pr.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.shape[0] > 300 and image.std() > 10  # a drawn figure, not blank
    standalone = json.loads((out / "station-thresholds.json").read_text())
    assert standalone["station"] == "press-3" and standalone["thresholds"]["image"] == th.image
    assert "station press-3: image threshold" in capsys.readouterr().out


def test_f1_reports_the_escape_rate(station, capsys):
    root, bundle, good = station
    assert calibrate(bundle, "--station", "s", "--good", good, "--defects", root / "test", "--method", "f1",
                     "--out", root / "r") == 0
    p = Bundle.load(bundle).thresholds.provenance
    assert p["method"] == "f1" and 0 <= p["escape_rate"] < 0.2
    assert "defects escape" in capsys.readouterr().out


def test_errors_name_the_problem_and_the_fix(station, tmp_path, capsys):
    """Empty folder, too few images for the rate, a bundle of another station, f1 without defects."""
    _, bundle, good = station
    (tmp_path / "empty").mkdir()
    assert calibrate(bundle, "--station", "s", "--good", tmp_path / "empty") == 2
    assert "holds no images" in capsys.readouterr().err
    few = write_images(tmp_path / "few", np.arange(30, 150))
    assert calibrate(bundle, "--station", "s", "--good", few, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert "with 120 good images the FRR bound is 2.47%" in err and "at least 598" in err
    assert Bundle.load(bundle).thresholds.image is None  # nothing written
    assert calibrate(bundle, "--station", "s", "--good", few, "--allow-few", "--out", tmp_path / "r") == 0
    assert calibrate(bundle, "--station", "other", "--good", good) == 2
    assert "belongs to station 's', not 'other'" in capsys.readouterr().err
    assert calibrate(bundle, "--station", "s", "--good", good, "--method", "f1") == 2
    assert "--defects" in capsys.readouterr().err


def test_two_detectors_fuse_into_one_threshold(station, tmp_path):
    root, bundle, good = station
    second = make_tiny_bundle(tmp_path / "second", image_threshold=None)
    out = tmp_path / "fused"
    assert calibrate(bundle, second, "--station", "s", "--good", good, "--defects", root / "test",
                     "--fuse", "mean", "--out", out, "--allow-few") == 0
    fusion = json.loads((out / "fusion.json").read_text())
    assert fusion["fuse"] == "mean" and len(fusion["models"]) == 2
    assert fusion["models"][0]["normaliser"]["scale"] > 0
    # identical models: the fused score is the normalised score, so the threshold is the normalised max
    n = fusion["models"][0]["normaliser"]
    raw_max = json.loads((out / "report.json").read_text())["thresholds"]["provenance"]["good_quantiles"]["max"]
    assert fusion["thresholds"]["image"] == pytest.approx(raw_max)
    assert raw_max == pytest.approx((max_good_score(good) - n["center"]) / n["scale"])
    assert Bundle.load(bundle).thresholds.image is None  # the fused scale belongs to no single bundle


def max_good_score(folder):
    return max(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).max() for p in folder.iterdir()) / 255


def make_journal(path, station, rows):
    """A journal as serve writes it; rows are (decided_at, status, score, operator's review or None)."""
    journal = Journal(path)
    ids = journal.record([{"decided_at": t, "station": station, "camera": "cam0", "frame_id": i, "status": status,
                           "score": score, "threshold": 0.5} for i, (t, status, score, _) in enumerate(rows)])
    journal.close()
    for verdict_id, (*_, review) in zip(ids, rows):
        if review is not None:
            set_confirmed(path, verdict_id, bool(review))


def test_from_journal_recalibrates_and_checks_drift(station, tmp_path, capsys):
    _, bundle, good = station
    assert calibrate(bundle, "--station", "s", "--good", good, "--out", tmp_path / "first") == 0
    rng, now = np.random.default_rng(5), time.time()
    shifted = rng.normal(0.45, 0.05, 900)  # the line got brighter: good scores moved up from ~0.31
    rows = [(now - 3600, "OK", float(v), None) for v in shifted]
    rows += [(now - 3600, "NG", 0.9, 1), (now - 3600, "NG", 0.75, 0), (now - 30 * 86400, "OK", 0.1, None)]
    journal = tmp_path / "journal.sqlite"
    make_journal(journal, "s", rows)
    before = journal.read_bytes()
    out = tmp_path / "again"
    assert calibrate(bundle, "--station", "s", "--from-journal", journal, "--since", "7d", "--out", out) == 0
    assert journal.read_bytes() == before  # read-only
    report = json.loads((out / "report.json").read_text())
    assert report["journal"] == {"rows": 902, "good": 901, "defects": 1, "unreviewed_ng": 0}
    assert report["drift"]["status"] == "drift" and report["drift"]["psi"] > 0.25
    th = Bundle.load(bundle).thresholds
    assert th.provenance["source"] == "journal" and th.image == pytest.approx(0.75)  # the overturned NG counts as good
    assert "drift" in capsys.readouterr().out
    assert calibrate(bundle, "--station", "s", "--from-journal", journal, "--since", "1x") == 2
    assert "7d, 12h" in capsys.readouterr().err
    assert calibrate("--station", "nope", "--from-journal", journal, "--out", out) == 2
    assert "it has stations: s" in capsys.readouterr().err


def test_reference_sample_is_bounded_and_keeps_the_distribution():
    x = np.random.default_rng(0).exponential(size=10000)
    ref = reference_sample(x)
    assert len(ref) == 512 and np.median(ref) == pytest.approx(np.median(x), rel=0.02)


def test_scores_of_an_earlier_run_choose_again_without_scoring(station, tmp_path, capsys):
    root, bundle, good = station
    first = tmp_path / "first"
    assert calibrate(bundle, "--station", "s", "--good", good, "--defects", root / "test", "--out", first) == 0
    capsys.readouterr()
    again = tmp_path / "again"
    assert calibrate(bundle, "--station", "s", "--scores", first, "--method", "f1", "--out", again) == 0
    assert "scoring" not in capsys.readouterr().err  # no progress bar: nothing was scored
    th = Bundle.load(bundle).thresholds
    assert th.provenance["method"] == "f1" and th.provenance["scores_from"] == str(first / "scores.csv")
    assert th.provenance["good_count"] == 700 and th.provenance["defect_count"] == 60
    other = make_tiny_bundle(tmp_path / "gray-model", channels=1, image_threshold=None)
    assert calibrate(other, "--station", "s", "--scores", first) == 2
    assert "came from another model" in capsys.readouterr().err


def test_station_config_is_checked_and_its_pinned_threshold_follows(station, tmp_path, capsys):
    from edge_infer.station import load_station

    _, bundle, good = station
    config = tmp_path / "station.yaml"
    config.write_text(f"station: s\nbundle: {bundle}\nthresholds:\n  image: 0.9\n")
    # no BUNDLE argument: the config's bundle is calibrated
    assert calibrate("--station", "s", "--station-config", config, "--good", good, "--out", tmp_path / "r") == 0
    new = Bundle.load(bundle).thresholds.image
    assert load_station(config).thresholds.image == pytest.approx(new) != 0.9
    assert "rewrote its pinned image" in capsys.readouterr().out
    assert calibrate(bundle, "--station", "t", "--station-config", config, "--good", good) == 2
    assert "is for station 's', not 't'" in capsys.readouterr().err
    other = make_tiny_bundle(tmp_path / "other", image_threshold=None)
    assert calibrate(other, "--station", "s", "--station-config", config, "--good", good) == 2
    assert "calibrate the bundle the station runs" in capsys.readouterr().err
