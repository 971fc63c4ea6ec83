"""Synthetic anomalies: exact masks, reproducibility, the set builder and `lineside synth`."""

import numpy as np
import pytest
from mvtec_fixture import make_mvtec

from lineside.cli import main as cli
from train_host.synth import DEFAULT_KINDS, KINDS, PER_KIND, synthesize, synthesize_set
from train_host.synth.structural import SHAPES, structural


def textured(channels, size=64, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128, 35, (channels, size, size)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("channels", [1, 3])
def test_mask_is_exactly_the_changed_pixels(kind, channels):
    image = textured(channels)
    donors = [textured(channels, seed=s) for s in (1, 2)]
    before = image.copy()
    for seed in range(6):
        out, mask = synthesize(kind, image, np.random.default_rng(seed), donors)
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert mask.dtype == bool and mask.shape == image.shape[1:]
        np.testing.assert_array_equal(mask, (out != image).any(axis=0))
        assert mask.sum() >= 0.002 * mask.size  # visible, not a pixel or two
        assert mask.mean() < 0.5  # local, not the whole image
    np.testing.assert_array_equal(image, before)  # the input is never edited in place


@pytest.mark.parametrize("shape", SHAPES)
def test_every_structural_kind_draws_a_local_defect(shape):
    image = textured(3)
    out, mask = structural(image, np.random.default_rng(3), kind=shape)
    np.testing.assert_array_equal(mask, (out != image).any(axis=0))
    assert 0 < mask.mean() < 0.5


def test_an_edit_that_stays_invisible_is_an_error():
    blank = np.full((3, 48, 48), 90, np.uint8)  # a warp moves nothing on a flat image
    with pytest.raises(ValueError, match="no visible anomaly"):
        structural(blank, np.random.default_rng(0), kind="warp")


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="uint8 C×H×W"):
        synthesize("texture", np.zeros((48, 48), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="donor images"):
        synthesize("cutpaste", textured(3), np.random.default_rng(0), donors=[textured(1)])
    with pytest.raises(ValueError, match="unknown anomaly kind"):
        synthesize("glitter", textured(3), np.random.default_rng(0))


def test_sets_are_seeded_and_reproducible():
    goods = [textured(3, seed=s) for s in range(5)]
    a = synthesize_set(goods, per_kind=4, seed=7)
    b = synthesize_set(goods, per_kind=4, seed=7)
    c = synthesize_set(goods, per_kind=4, seed=8)
    assert [s.kind for s in a] == [k for k in DEFAULT_KINDS for _ in range(4)]
    assert all((x.image == y.image).all() and (x.mask == y.mask).all() for x, y in zip(a, b))
    assert any((x.image != y.image).any() for x, y in zip(a, c))
    # a kind's samples do not depend on which other kinds are made
    only = synthesize_set(goods, per_kind=4, kinds=("cutpaste",), seed=7)
    assert all((x.image == y.image).all() for x, y in zip(only, a[-4:]))
    for s in a:
        np.testing.assert_array_equal(s.mask, (s.image != goods[s.source]).any(axis=0))
    assert PER_KIND == 30


def test_synth_command_writes_images_masks_and_overlays(tmp_path):
    data = make_mvtec(tmp_path / "cat", n_train=4, n_good=1, n_defect=1)
    out = tmp_path / "look"
    assert cli(["synth", "--data", str(data), "--out", str(out), "--size", "56", "--per-kind", "2",
                "--kinds", "texture,structural"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(f"{k}_{i:03d}{suffix}.png" for k in ("texture", "structural") for i in range(2)
                           for suffix in ("", "_mask", "_overlay"))
    import cv2

    mask = cv2.imread(str(out / "texture_000_mask.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (56, 56) and set(np.unique(mask)) == {0, 255}


def test_synth_command_names_unknown_kinds(tmp_path, capsys):
    data = make_mvtec(tmp_path / "cat", n_train=2, n_good=1, n_defect=1)
    assert cli(["synth", "--data", str(data), "--out", str(tmp_path / "o"), "--kinds", "glitter"]) == 2
    assert "glitter" in capsys.readouterr().err
