"""Dataset loaders: MVTec AD / AD 2 layouts, ELPV split, unreadable images, mask geometry."""

from __future__ import annotations

import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge_infer.errors import LinesideError
from edge_infer.imageio import read_image
from edge_infer.preprocess import InputSpec, preprocess
from train_host.data import Split, load_split, make_loader, read_mask


def write(path: Path, size=(40, 50), colour=False, value=None, square=None) -> Path:
    """A random image (or constant `value`) with an optional white square (x, y, side)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    shape = (h, w, 3) if colour else (h, w)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    img = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 100, shape, dtype=np.uint8)
    if square:
        x, y, s = square
        img[y:y + s, x:x + s] = 255
    assert cv2.imwrite(str(path), img)
    return path


def mvtec_ad(root: Path, n_train=10) -> Path:
    for i in range(n_train):  # grey and colour, two sizes, mixed formats
        name = f"{i:03d}.{'png' if i % 3 else 'jpg'}"
        write(root / "train/good" / name, (40 + 8 * (i % 2), 50), colour=i % 2 == 0)
    for i in range(3):
        write(root / "test/good" / f"{i:03d}.png", colour=True)
    for i in range(2):
        write(root / "test/scratch" / f"{i:03d}.png", square=(5, 5, 8))
        write(root / "ground_truth/scratch" / f"{i:03d}_mask.png", value=0, square=(5, 5, 8))
    write(root / "test/crack" / "000.bmp")  # a defect image without a mask
    (root / "license.txt").write_text("not an image")
    return root


def mvtec_ad2(root: Path) -> Path:
    for i in range(6):
        write(root / "train/good" / f"{i:03d}_regular.png", (64, 48), colour=True)
    for i in range(2):
        write(root / "validation/good" / f"{i:03d}_regular.png", (64, 48), colour=True)
    for i in range(2):
        write(root / "test_public/good" / f"{i:03d}_overexposed.png", (64, 48), colour=True)
    for i in range(3):
        write(root / "test_public/bad" / f"{i:03d}_regular.png", (64, 48), colour=True, square=(10, 10, 6))
    gt = root / "test_public/ground_truth/bad"
    write(gt / "000_regular_mask.png", (64, 48), value=0, square=(10, 10, 6))
    write(gt / "001_regular.png", (64, 48), value=0, square=(10, 10, 6))  # the other naming
    write(root / "test_private" / "000_regular.png", (64, 48))  # unlabelled: never read
    return root


def test_mvtec_ad_split_contents(tmp_path):
    split = load_split(mvtec_ad(tmp_path / "bottle"), val_share=0.2, seed=0)
    assert isinstance(split, Split) and split.name == "bottle"
    assert split.info["source"] == "mvtec_ad"
    assert (len(split.train), len(split.val), len(split.test)) == (8, 2, 6)
    assert all(s.label == 0 and s.defect == "good" for s in split.train + split.val)
    assert {s.path for s in split.train}.isdisjoint({s.path for s in split.val})
    by_class = {c: [s for s in split.test if s.defect == c] for c in ("good", "scratch", "crack")}
    assert [len(v) for v in by_class.values()] == [3, 2, 1]
    assert all(s.label == 0 and s.mask_path is None for s in by_class["good"])
    assert all(s.label == 1 and s.mask_path.name == f"{s.path.stem}_mask.png" for s in by_class["scratch"])
    assert by_class["crack"][0].mask_path is None and by_class["crack"][0].label == 1
    assert split.has_masks
    assert split.info["counts"] == {"train_good": 8, "train_contaminated": 0, "val": 2, "val_defect": 0,
                                    "test_good": 3, "test_defect": 3, "test_with_mask": 2}


def test_mvtec_ad2_split_uses_validation_and_both_mask_names(tmp_path):
    split = load_split(mvtec_ad2(tmp_path / "can"), val_share=0.5)
    assert split.info["source"] == "mvtec_ad2"
    assert len(split.train) == 6  # val_share not used: AD 2 ships its own validation set
    assert [s.path.parent.name for s in split.val] == ["good", "good"]
    assert all("validation" in str(s.path) for s in split.val)
    assert {s.defect for s in split.test} == {"good", "bad"}  # ground_truth is not a class
    masks = {s.path.name: s.mask_path and s.mask_path.name for s in split.test if s.label == 1}
    assert masks == {"000_regular.png": "000_regular_mask.png", "001_regular.png": "001_regular.png",
                     "002_regular.png": None}
    assert not any("test_private" in str(s.path) for s in split.train + split.val + split.test)


def test_val_hold_out_is_deterministic(tmp_path):
    root = mvtec_ad(tmp_path / "d", n_train=20)
    val = lambda seed: [s.path for s in load_split(root, val_share=0.25, seed=seed).val]  # noqa: E731
    assert val(3) == val(3) and len(val(3)) == 5
    assert len({tuple(val(seed)) for seed in range(4)}) > 1  # the seed matters
    assert load_split(root, seed=1).info["fingerprint"] == load_split(root, seed=1).info["fingerprint"]


def test_contamination_moves_defects_into_train(tmp_path):
    root = mvtec_ad(tmp_path / "d", n_train=20)
    clean = load_split(root, val_share=0.1)
    dirty = load_split(root, val_share=0.1, contamination=0.15)  # round(0.15 × 18) = 3
    moved = [s for s in dirty.train if s.label == 1]
    assert len(moved) == 3 and dirty.info["counts"]["train_contaminated"] == 3
    assert len(dirty.test) == len(clean.test) - 3
    assert {s.path for s in moved}.isdisjoint({s.path for s in dirty.test})
    assert [s for s in dirty.train if s.label == 0] == clean.train
    with pytest.raises(LinesideError, match="contamination 0.5 asks for 9 defect images"):
        load_split(root, val_share=0.1, contamination=0.5)


def test_a_contaminated_run_is_never_scored_on_the_defects_it_trained_on(tmp_path):
    from train_host.run import run_split

    root = mvtec_ad(tmp_path / "d", n_train=20)
    dirty = load_split(root, val_share=0.1, contamination=0.15)
    record = {"data": {"data": str(root), "val_share": 0.1, "seed": 0, "contamination": 0.15}}
    again = run_split(record, str(root))
    trained = {s.path for s in dirty.train}
    assert [s.path for s in again.test] == [s.path for s in dirty.test]
    assert trained.isdisjoint(s.path for s in again.test)


def test_val_defects_move_out_of_test_and_never_overlap_contamination(tmp_path):
    root = mvtec_ad(tmp_path / "d", n_train=20)
    for i in range(2, 6):  # more defects, so contamination and val_defects both have some to take
        write(root / "test/scratch" / f"{i:03d}.png", square=(5, 5, 8))
    clean = load_split(root, val_share=0.1)
    split = load_split(root, val_share=0.1, contamination=0.1, val_defects=3)  # 2 contaminants, 3 held
    held = {s.path for s in split.val_defects}
    assert len(held) == 3 and all(s.label == 1 for s in split.val_defects)
    assert held.isdisjoint({s.path for s in split.test}) and held.isdisjoint({s.path for s in split.train})
    assert len(split.test) == len(clean.test) - 2 - 3 and {s.label for s in split.test} == {0, 1}
    assert split.val == clean.val  # val stays the good hold-out for every other family
    assert split.info["val_defects"] == 3 and split.info["counts"]["val_defect"] == 3
    assert split.info["fingerprint"] != load_split(root, val_share=0.1, contamination=0.1).info["fingerprint"]
    assert [s.path for s in load_split(root, val_share=0.1, contamination=0.1, val_defects=3).val_defects] \
        == [s.path for s in split.val_defects]  # seeded
    assert clean.val_defects == [] and clean.info["val_defects"] == 0
    with pytest.raises(LinesideError, match="would leave the test set with no defect images"):
        load_split(root, val_share=0.1, val_defects=7)  # all 7 defects
    with pytest.raises(LinesideError, match="val_defects must be 0 or more"):
        load_split(root, val_defects=-1)


def test_elpv_val_defects_come_from_test_only():
    base, split = load_split("elpv"), load_split("elpv", val_defects=20)
    assert len(split.val_defects) == 20 and {s.label for s in split.val_defects} == {1}
    assert split.info["counts"]["test_defect"] == base.info["counts"]["test_defect"] - 20
    assert {s.path for s in split.val_defects} <= {s.path for s in base.test if s.label == 1}
    assert split.train == base.train and split.val == base.val


def test_limit_caps_each_list_and_keeps_both_classes(tmp_path):
    split = load_split(mvtec_ad(tmp_path / "d", n_train=20), val_share=0.2, limit=3)
    assert (len(split.train), len(split.val), len(split.test)) == (3, 3, 3)
    assert {s.label for s in split.test} == {0, 1}


def test_corrupt_image_is_skipped_and_reported_by_path(tmp_path):
    root = mvtec_ad(tmp_path / "d", n_train=6)
    bad = root / "train/good/zz_corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    split = load_split(root, val_share=0.0)
    spec = InputSpec(32, 32, 3)
    loader = make_loader(split.train, spec, batch_size=4)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == 6
    assert [p for p, _ in loader.skipped] == [str(bad)]
    assert "not a decodable image" in loader.skipped[0][1]
    assert str(bad) in loader.report() and "skipped 1 unreadable images" in loader.report()
    assert loader.dataset[[s.path for s in split.train].index(bad)] is None


def test_all_unreadable_is_an_error(tmp_path):
    bad = tmp_path / "a.png"
    bad.write_bytes(b"")
    from train_host.data.records import Sample

    with pytest.raises(LinesideError, match="all 1 images were unreadable"):
        list(make_loader([Sample(bad, 0, "good")], InputSpec(16, 16, 1)))


def test_loader_batches_and_worker_reports(tmp_path):
    split = load_split(mvtec_ad(tmp_path / "d"), val_share=0.1)
    (split.test[0].path).write_bytes(b"garbage")
    loader = make_loader(split.test, InputSpec(24, 32, 3), batch_size=8, workers=1)
    (batch,) = list(loader)
    assert str(batch["image"].dtype) == "torch.uint8" and tuple(batch["image"].shape) == (5, 3, 24, 32)
    assert tuple(batch["mask"].shape) == (5, 1, 24, 32) and str(batch["mask"].dtype) == "torch.float32"
    labels = {int(i): int(l) for i, l in zip(batch["index"], batch["label"])}
    assert labels == {i: split.test[i].label for i in range(1, 6)}
    masked = [i for i in range(1, 6) if split.test[i].mask_path is not None]
    assert all(batch["mask"][list(labels).index(i)].sum() > 0 for i in masked)
    assert loader.skipped == [(str(split.test[0].path), loader.skipped[0][1])]


@pytest.mark.parametrize("roi", [None, (20, 10, 60, 40)])
def test_mask_lands_where_the_image_square_lands(tmp_path, roi):
    square = (37, 18, 16)
    image = write(tmp_path / "img.png", (60, 90), colour=True, value=0, square=square)
    mask = write(tmp_path / "img_mask.png", (60, 90), value=0, square=square)
    spec = InputSpec(30, 45, 3, roi)
    bright = preprocess(read_image(image), spec)[0] > 127
    got = read_mask(mask, spec)
    assert got.shape == (30, 45) and got.dtype == bool and got.any()
    np.testing.assert_array_equal(got, bright)


def test_mask_of_another_size_is_skipped(tmp_path):
    from train_host.data.records import Sample

    img = write(tmp_path / "a.png", (40, 40))
    mask = write(tmp_path / "a_mask.png", (20, 20), value=0)
    loader = make_loader([Sample(img, 1, "x", mask), Sample(img, 0, "good")], InputSpec(16, 16, 1))
    assert sum(len(b["index"]) for b in loader) == 1
    assert "masks must match their image's size" in loader.skipped[0][1]


def test_error_messages(tmp_path):
    with pytest.raises(LinesideError, match="does not exist"):
        load_split(tmp_path / "nope")
    (tmp_path / "random/stuff").mkdir(parents=True)
    with pytest.raises(LinesideError, match="not an MVTec-layout folder: expected .*train/good"):
        load_split(tmp_path / "random")
    (tmp_path / "empty/train/good").mkdir(parents=True)
    (tmp_path / "empty/test/good").mkdir(parents=True)
    with pytest.raises(LinesideError, match="train/good has no images"):
        load_split(tmp_path / "empty")
    write(tmp_path / "notest/train/good/a.png")
    with pytest.raises(LinesideError, match="no test folder: add test/<class>"):
        load_split(tmp_path / "notest")
    mvtec_ad(tmp_path / "all/bottle")
    with pytest.raises(LinesideError, match="pass one of them, e.g. .*bottle"):
        load_split(tmp_path / "all")
    with pytest.raises(LinesideError, match="val_share must be in"):
        load_split(tmp_path / "all/bottle", val_share=1.0)


# ELPV: only labels.csv is read here (no pixels), so these are fast.

def test_elpv_split_counts_add_up_and_are_disjoint():
    split = load_split("elpv")
    info = split.info
    assert info["licence"] == "ELPV: CC BY-NC-SA 4.0, non-commercial use only"
    good = len(split.train) + len(split.val) + info["counts"]["test_good"]
    assert good + info["counts"]["test_defect"] + info["excluded_ambiguous"] == 2624
    for t in info["per_type"].values():
        assert t["train"] + t["val"] + t["test_good"] == t["good"]
        assert t["train"] == round(0.6 * t["good"]) and t["val"] == round(0.1 * t["good"])
    assert info["counts"]["test_defect"] == sum(t["test_defect"] for t in info["per_type"].values())
    sets = [{s.path for s in part} for part in (split.train, split.val, split.test)]
    assert sets[0].isdisjoint(sets[1]) and sets[0].isdisjoint(sets[2]) and sets[1].isdisjoint(sets[2])
    assert all(s.label == 0 for s in split.train + split.val)
    assert not split.has_masks and split.train[0].path.is_file()


def test_elpv_split_is_deterministic_and_seeded():
    a, b, c = load_split("elpv", seed=0), load_split("elpv", seed=0), load_split("elpv", seed=1)
    assert a.train == b.train and a.val == b.val and a.test == b.test
    assert a.info["fingerprint"] == b.info["fingerprint"] != c.info["fingerprint"]
    assert a.info["counts"] == c.info["counts"]


def test_elpv_missing_package_says_how_to_install(monkeypatch):
    from train_host.data import elpv

    monkeypatch.setattr(elpv.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LinesideError, match="pip install elpv-dataset"):
        load_split("elpv")
