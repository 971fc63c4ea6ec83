"""Pixel threshold and minimum area from good maps; fusing several detectors."""

import numpy as np
import pytest

from calibration.fusion import fit_normaliser, fuse, normalise
from calibration.pixel import largest_blob, pixel_threshold
from calibration.quantile import quantile_threshold
from edge_infer.errors import LinesideError


def test_pixel_threshold_is_the_good_pixel_quantile_and_min_area_beats_good_blobs():
    rng = np.random.default_rng(0)
    maps = [rng.uniform(0, 1, (32, 32)) for _ in range(50)]
    for m in maps[:45]:
        m[5:7, 5:7] = 1.5  # a 4-pixel bright blob on most good images
    out = pixel_threshold(maps, pixel_rate=0.01, area_quantile=0.99)
    assert 0.98 < out["pixel"] < 1.0
    assert out["min_area"] == 5  # bigger than the 4-pixel blob; noise pixels are isolated
    defect = rng.uniform(0, 1, (32, 32))
    defect[10:20, 10:20] = 3.0
    assert largest_blob(defect, out["pixel"]) >= out["min_area"]


def test_pixel_threshold_never_exceeds_the_image_threshold():
    maps = [np.full((8, 8), 2.0)] * 3
    out = pixel_threshold(maps, pixel_rate=0.01, image_threshold=1.0)
    assert out["pixel"] == 1.0 and "clamped" in out["details"]["note"]


def test_normaliser_maps_median_to_0_and_q99_to_1():
    x = np.random.default_rng(1).gamma(2.0, 3.0, 5000)
    n = fit_normaliser(x)
    z = normalise(x, n)
    assert np.median(z) == pytest.approx(0, abs=1e-9) and np.quantile(z, 0.99) == pytest.approx(1, abs=1e-9)


def test_max_fusion_catches_what_either_model_catches():
    rng = np.random.default_rng(2)
    # model A sees scratches (defects 0..49), model B sees stains (50..99); raw scales differ by 1000x
    good_a, good_b = rng.normal(10, 1, 1000), rng.normal(0.01, 0.001, 1000)
    def_a = np.concatenate([rng.normal(20, 1, 50), rng.normal(10, 1, 50)])
    def_b = np.concatenate([rng.normal(0.01, 0.001, 50), rng.normal(0.02, 0.001, 50)])
    norms = [fit_normaliser(good_a), fit_normaliser(good_b)]
    fused_good = fuse([good_a, good_b], norms, "max")
    fused_def = fuse([def_a, def_b], norms, "max")
    r = quantile_threshold(fused_good, target_frr=0.01)
    assert np.mean(fused_def > r.threshold) > 0.95
    # either model alone misses half the defects
    ra = quantile_threshold(good_a, 0.01)
    assert np.mean(def_a > ra.threshold) < 0.6
    with pytest.raises(LinesideError, match="different numbers of images"):
        fuse([good_a, good_b[:10]], norms)
