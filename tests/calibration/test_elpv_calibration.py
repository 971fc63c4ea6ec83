"""Calibration on real data: ELPV solar cells (CC BY-NC-SA 4.0, non-commercial use only).

A small rx (64×64 input, 24 features) is trained on 40 good cells; the other good cells
of the seeded split are divided into a calibration set and a held-out set, never mixed.
The thresholds' promises are then checked on the held-out cells, scored through the
bundle like the line would. Small subsets keep it near a minute on 2 cores.
"""

import json

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("elpv_dataset", reason="needs the ELPV data: pip install elpv-dataset")
pytest.importorskip("torch", reason="training the detector needs torch (the train extra)")

from calibration.evt import evt_threshold
from calibration.labelled import f1_threshold
from calibration.quantile import quantile_threshold
from calibration.scores import read_scores
from edge_infer.bundle import Bundle
from edge_infer.score import Scorer
from lineside.cli import main as cli

pytestmark = pytest.mark.slow
CAL_GOOD, HELD_OUT_GOOD, DEFECTS = 300, 250, 80


@pytest.fixture(scope="module")
def elpv(tmp_path_factory):
    """(bundle, calibration good folder, held-out good paths, defect folder)."""
    from train_host.data import load_split

    root = tmp_path_factory.mktemp("elpv")
    run, bundle = root / "run", root / "bundle"
    assert cli(["train", "rx", "--data", "elpv", "--out", str(run), "--size", "64", "--feature-dim", "24",
                "--sigma", "1", "--limit", "40", "--threads", "2"]) == 0
    assert cli(["export", str(run), "--out", str(bundle), "--parity-images", "2", "--threads", "2"]) == 0
    quick = load_split("elpv", limit=40)
    assert json.loads((run / "run.json").read_text())["data"]["fingerprint"] == quick.info["fingerprint"]
    trained = {str(s.path) for s in quick.train}
    full = load_split("elpv")
    rng = np.random.default_rng(0)

    def pick(samples, n):
        return [samples[i].path for i in sorted(rng.choice(len(samples), n, replace=False))]

    unseen_good = [s for s in full.train + full.val if str(s.path) not in trained]
    test_good = [s for s in full.test if s.label == 0]
    defects = [s for s in full.test if s.label == 1]
    good_dir, defect_dir = root / "good", root / "defects"
    for folder, paths in ((good_dir, pick(unseen_good, CAL_GOOD)), (defect_dir, pick(defects, DEFECTS))):
        folder.mkdir()
        for p in paths:
            (folder / p.name).symlink_to(p)
    return bundle, good_dir, pick(test_good, HELD_OUT_GOOD), defect_dir


def held_out_scores(bundle, paths):
    scorer = Scorer(bundle)
    try:
        return np.array([s.verdict.score for s in scorer.score_paths(paths, batch=8)])
    finally:
        scorer.close()


def not_above(rejects: int, n: int, bound: float) -> bool:
    """The held-out rejects do not contradict the bound (one-sided binomial test at 5%).

    A correct bound on the true FRR still sees a finite held-out set's measured rate above
    it now and then; only a count too high to be chance refutes it.
    """
    return stats.binom.sf(rejects - 1, n, bound) > 0.05


def test_elpv_thresholds_keep_their_promises_on_held_out_cells(elpv, tmp_path):
    bundle, good_dir, held_out, defect_dir = elpv
    out = tmp_path / "report"
    assert cli(["calibrate", str(bundle), "--station", "elpv", "--good", str(good_dir), "--defects", str(defect_dir),
                "--target-frr", "0.02", "--out", str(out)]) == 0
    th = Bundle.load(bundle).thresholds
    p = th.provenance
    assert p["method"] == "quantile" and p["good_count"] == CAL_GOOD and p["defect_count"] == DEFECTS
    assert p["frr_bound"] <= 0.02
    held = held_out_scores(bundle, held_out)
    rejects = int(np.sum(held > th.image))
    assert not_above(rejects, held.size, p["frr_bound"]), f"{rejects}/{held.size} held-out good cells rejected"
    assert 0 <= p["escape_rate"] <= p["escape_bound"] < 1

    # evt and f1 from the same scores (scores.csv), as `--scores DIR --method evt|f1` chooses them
    scores = read_scores(out / "scores.csv")
    good, defects = scores["good"], scores["defect"]
    assert good.size == CAL_GOOD and defects.size == DEFECTS
    evt = evt_threshold(good, target_frr=0.01, gof_samples=99)  # evt, or quantile when the tail does not fit
    assert evt.frr_bound <= 0.01 + 1e-9
    assert not_above(int(np.sum(held > evt.threshold)), held.size, evt.frr_bound)
    f1 = f1_threshold(good, defects)
    assert f1.escape_rate == pytest.approx(np.mean(defects <= f1.threshold)) and f1.escape_rate <= f1.escape_bound

    # the same question over many random calibration/held-out splits of these real cells
    pool, rng, within = np.concatenate([good, held]), np.random.default_rng(1), 0
    for _ in range(200):
        order = rng.permutation(pool.size)
        cal, rest = pool[order[:CAL_GOOD]], pool[order[CAL_GOOD:]]
        r = quantile_threshold(cal, 0.02)
        within += np.mean(rest > r.threshold) <= r.frr_bound
    assert within / 200 >= 0.75  # the held-out rate is itself noisy: ~85-90% expected for a right bound
