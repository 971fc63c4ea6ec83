"""Evaluation metrics against scikit-learn, hand-computed AU-PRO and brute-force sweeps."""

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

from edge_infer.errors import LinesideError
from train_host.metrics import (
    au_pro,
    breakdown,
    evaluate_scores,
    image_auprc,
    image_auroc,
    pixel_auroc,
    seg_f1,
)


def random_image_set(seed=0, n=60):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = rng.normal(size=n) + labels  # informative but imperfect
    return labels, scores


def random_pixel_set(seed=0, n=6, size=(24, 20), quantise=None):
    """Blobby masks and maps correlated with them (optionally with many tied scores)."""
    rng = np.random.default_rng(seed)
    masks = ndimage.gaussian_filter(rng.normal(size=(n, *size)), (0, 2, 2)) > 0.25
    maps = masks * 0.8 + rng.normal(size=masks.shape)
    if quantise:
        maps = np.round(maps * quantise) / quantise
    return masks, maps.astype(np.float32)


def test_image_metrics_equal_sklearn():
    labels, scores = random_image_set()
    assert image_auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert image_auprc(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert 0.5 < image_auroc(labels, scores) < 1.0  # the data is informative, not trivial


@pytest.mark.parametrize("quantise", [None, 4])  # continuous scores, and heavy ties
def test_pixel_auroc_equals_sklearn_on_flattened_pixels(quantise):
    masks, maps = random_pixel_set(quantise=quantise)
    expected = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-9)
    # N×1×H×W maps (the backend's anomaly_map layout) are accepted as well.
    assert pixel_auroc(masks, maps[:, None]) == pytest.approx(expected, abs=1e-9)


def hand_case():
    """Two 2×4 images, two defect regions, ten normal pixels.

    Image 0: region R1 is the DIAGONAL pair (0,0),(1,1): one region under 8-connectivity.
    Image 1: region R2 is the 2×2 block in columns 2-3.
    """
    masks = np.array(
        [
            [[1, 0, 0, 0], [0, 1, 0, 0]],
            [[0, 0, 1, 1], [0, 0, 1, 1]],
        ],
        np.uint8,
    )
    maps = np.array(
        [
            [[0.9, 0.1, 0.1, 0.6], [0.1, 0.5, 0.1, 0.1]],  # R1: 0.9, 0.5; normal 0.6
            [[0.3, 0.1, 0.8, 0.8], [0.1, 0.1, 0.4, 0.3]],  # R2: 0.8 0.8 0.4 0.3; normal 0.3
        ],
        np.float32,
    )
    return masks, maps


# The hand case's curve, pixels with map >= t (PRO = mean of R1 and R2 coverage,
# FPR = normal pixels above / 10):
#   start        FPR 0    PRO 0
#   t=0.9  R1 1/2         FPR 0    PRO (1/2 + 0)/2   = 0.25
#   t=0.8  R2 2/4         FPR 0    PRO (1/2 + 1/2)/2 = 0.5
#   t=0.6  one normal     FPR 0.1  PRO 0.5
#   t=0.5  R1 full        FPR 0.1  PRO (1 + 1/2)/2   = 0.75
#   t=0.4  R2 3/4         FPR 0.1  PRO (1 + 3/4)/2   = 0.875
#   t=0.3  R2 full + one normal (a tie): FPR 0.2  PRO 1   (a sloped segment)
#   t=0.1  all            FPR 1    PRO 1
# Area to FPR 1.0: [0,0.1] at PRO 0.5 -> 0.05; [0.1,0.2] from 0.875 to 1 -> 0.09375;
#   [0.2,1] at 1 -> 0.8; total 0.94375.
# Area to FPR 0.15: 0.05 + trapezoid from 0.875 to the interpolated 0.9375 over 0.05
#   -> 0.05 + 0.0453125 = 0.0953125; normalised / 0.15 = 0.635416...
# Area to FPR 0.05: PRO 0.5 throughout -> normalised 0.5.
# Under 4-connectivity R1 would be two regions and every PRO above would change.
@pytest.mark.parametrize(
    "limit, expected", [(1.0, 0.94375), (0.15, 0.0953125 / 0.15), (0.05, 0.5)]
)
def test_au_pro_hand_computed(limit, expected):
    masks, maps = hand_case()
    assert au_pro(masks, maps, fpr_limit=limit) == pytest.approx(expected, abs=1e-9)


def test_au_pro_perfect_constant_and_random_maps():
    masks, _ = random_pixel_set(seed=1)
    # Perfect: every defect pixel scores above every normal pixel -> PRO 1 at FPR 0.
    assert au_pro(masks, masks.astype(np.float32)) == pytest.approx(1.0)
    assert au_pro(masks, masks.astype(np.float32), fpr_limit=0.05) == pytest.approx(1.0)
    # Constant: one threshold, the curve jumps from (0,0) to (1,1): a straight diagonal,
    # so the area to L is L^2/2 and the normalised AU-PRO is L/2.
    constant = np.full(masks.shape, 0.7, np.float32)
    assert au_pro(masks, constant, fpr_limit=0.3) == pytest.approx(0.15)
    assert au_pro(masks, constant, fpr_limit=1.0) == pytest.approx(0.5)
    # Random (independent of the masks): every region's coverage tracks the FPR, so the
    # expected curve is the diagonal too and AU-PRO(0.3) ~ 0.15.
    noise = np.random.default_rng(2).random((40, 64, 64), dtype=np.float32)
    random_masks, _ = random_pixel_set(seed=3, n=40, size=(64, 64))
    assert au_pro(random_masks, noise) == pytest.approx(0.15, abs=0.02)


def brute_force_au_pro(masks, maps, limit):
    """The definition, one threshold at a time, with scipy's 8-connected labelling."""
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(i, lab == r) for i, lab in enumerate(labelled) for r in range(1, lab.max() + 1)]
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([above[i][region].mean() for i, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    grid = np.linspace(0, limit, 20001)  # fine grid; the curve is non-decreasing in FPR
    # The last point at or left of each grid FPR (the top of any vertical jump there),
    # then linear towards the next point, which lies strictly right of it.
    keep = np.searchsorted(fprs, grid, side="right") - 1
    nxt = np.minimum(keep + 1, len(fprs) - 1)
    span = np.where(fprs[nxt] > fprs[keep], fprs[nxt] - fprs[keep], 1.0)
    values = pros[keep] + (pros[nxt] - pros[keep]) * np.clip((grid - fprs[keep]) / span, 0, 1)
    return np.trapezoid(values, grid) / limit


@pytest.mark.parametrize("quantise", [None, 3])
def test_au_pro_matches_brute_force_definition(quantise):
    masks, maps = random_pixel_set(seed=4, n=4, size=(16, 16), quantise=quantise)
    for limit in (0.3, 0.05):
        assert au_pro(masks, maps, limit) == pytest.approx(brute_force_au_pro(masks, maps, limit), abs=1e-4)


@pytest.mark.parametrize("quantise", [None, 4])
def test_seg_f1_oracle_equals_sklearn_and_brute_force(quantise):
    masks, maps = random_pixel_set(seed=5, n=3, size=(12, 12), quantise=quantise)
    f1, threshold = seg_f1(masks, maps)
    assert f1 == pytest.approx(f1_score(masks.ravel(), maps.ravel() > threshold), abs=1e-12)
    # The threshold is float32-exact, so float32 comparison selects the same pixels.
    assert np.float32(threshold) == threshold
    truth = masks.astype(bool)

    def f1_at(t):  # plain re-thresholding, one threshold at a time
        predicted = maps >= t
        tp = (predicted & truth).sum()
        return 2 * tp / (predicted.sum() + truth.sum())

    sweep = [f1_at(t) for t in np.unique(maps)]
    assert f1 == pytest.approx(max(sweep), abs=1e-12)
    # A given threshold is used as is.
    f1_at, t_at = seg_f1(masks, maps, threshold=0.5)
    assert t_at == 0.5
    assert f1_at == pytest.approx(f1_score(masks.ravel(), maps.ravel() > np.float32(0.5)), abs=1e-12)
    assert f1_at <= f1


def test_seg_f1_threshold_between_adjacent_float32_values():
    # Defect scores one float32 step above the normal ones: the oracle must split them.
    low = np.float32(0.5)
    high = np.nextafter(low, np.float32(1))
    masks = np.array([[[1, 0], [0, 0]]], np.uint8)
    maps = np.array([[[high, low], [low, low]]], np.float32)
    f1, threshold = seg_f1(masks, maps)
    assert f1 == 1.0
    assert ((maps > np.float32(threshold)) == masks.astype(bool)).all()
    assert ((maps > threshold) == masks.astype(bool)).all()


def test_bad_inputs_raise_clear_errors():
    masks, maps = hand_case()
    with pytest.raises(LinesideError, match="differ in shape.*resize"):
        pixel_auroc(masks, maps[:, :, :3])
    with pytest.raises(LinesideError, match="both classes"):
        image_auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(LinesideError, match="NaN"):
        image_auprc([0, 1], [0.1, float("nan")])
    with pytest.raises(LinesideError, match="no images"):
        image_auroc([], [])
    with pytest.raises(LinesideError, match="equal length"):
        image_auroc([0, 1, 0], [0.1, 0.2])
    with pytest.raises(LinesideError, match="no defect pixel"):
        au_pro(np.zeros_like(masks), maps)
    with pytest.raises(LinesideError, match="0/1 or bool.*255"):
        seg_f1(masks * 255, maps)
    with pytest.raises(LinesideError, match="fpr_limit"):
        au_pro(masks, maps, fpr_limit=0.0)
    with pytest.raises(LinesideError, match="NaN or infinite"):
        pixel_auroc(masks, np.where(masks, np.nan, maps))


def test_evaluate_scores_keys_with_and_without_masks():
    masks, maps = hand_case()
    labels = np.array([0, 1, 1, 0])
    scores = np.array([0.2, 0.9, 0.4, 0.5])
    masks4 = np.concatenate([np.zeros_like(masks[:1]), masks, np.zeros_like(masks[:1])])
    maps4 = np.concatenate([maps[:1] * 0, maps, maps[:1] * 0])

    image_only = evaluate_scores(labels, scores)
    assert set(image_only) == {"image_auroc", "image_auprc", "n_good", "n_defect"}
    assert (image_only["n_good"], image_only["n_defect"]) == (2, 2)
    assert image_only["image_auroc"] == pytest.approx(0.75)  # 3 of 4 (defect, good) pairs ranked right

    full = evaluate_scores(labels, scores, masks4, maps4)
    assert set(full) == set(image_only) | {
        "pixel_auroc", "au_pro_30", "au_pro_05", "seg_f1", "seg_f1_threshold",
    }
    assert full["au_pro_30"] == pytest.approx(au_pro(masks4, maps4, 0.3))
    assert full["au_pro_05"] == pytest.approx(au_pro(masks4, maps4, 0.05))
    assert (full["seg_f1"], full["seg_f1_threshold"]) == seg_f1(masks4, maps4)
    assert full["pixel_auroc"] == pytest.approx(roc_auc_score(masks4.ravel(), maps4.ravel()))

    # Masks without a single defect pixel: pixel metrics are skipped, not faked.
    empty = evaluate_scores(labels, scores, np.zeros_like(masks4), maps4)
    assert set(empty) == set(image_only)
    with pytest.raises(LinesideError, match="masks without maps"):
        evaluate_scores(labels, scores, masks4, None)
    with pytest.raises(LinesideError, match="4 labels but 2 masks"):
        evaluate_scores(labels, scores, masks, maps)


def test_breakdown_per_defect_class_and_per_group():
    """Two groups whose scores sit at different levels: each separates perfectly alone, pooled they do not."""
    labels = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 1.1, 1.2, 2.1, 2.2, 3.1, 3.2])
    kinds = np.array(["good", "good", "crack", "spot", "good", "good", "crack", "crack"])
    groups = ["mono"] * 4 + ["poly"] * 4
    found = breakdown(labels, scores, kinds, groups)
    assert found["per_defect"] == {"crack": {"n": 3, "image_auroc": pytest.approx(roc_auc_score(
        [0, 0, 1, 0, 0, 1, 1], [0.1, 0.2, 1.1, 2.1, 2.2, 3.1, 3.2]))},
        "spot": {"n": 1, "image_auroc": 0.5}}  # 1.2 is above two of the four goods
    assert found["per_group"]["mono"] == {"n_good": 2, "n_defect": 2, "image_auroc": 1.0,
                                          "good_median_score": pytest.approx(0.15)}
    assert found["per_group"]["poly"]["good_median_score"] == pytest.approx(2.15)
    assert image_auroc(labels, scores) < 1.0 and found["groups_score_apart"] is True
    # the same groups at one level: pooled is as good as each alone, so they do not score apart
    level = breakdown(labels, np.array([0.1, 0.2, 1.1, 1.2, 0.15, 0.25, 1.15, 1.25]), kinds, groups)
    assert level["groups_score_apart"] is False
    # one defect class and no groups: nothing to break down; a group without defects has no AUROC
    assert breakdown(labels, scores, np.where(labels == 1, "crack", "good")) == {}
    lonely = breakdown(labels, scores, kinds, ["a", "a", "b", "b", "c", "c", "b", "b"])
    assert lonely["per_group"]["a"]["image_auroc"] is None and lonely["per_group"]["b"]["good_median_score"] is None
    assert lonely["groups_score_apart"] is False  # one group with both kinds: nothing to compare
