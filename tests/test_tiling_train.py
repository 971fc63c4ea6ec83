"""Training, evaluation and export with `--tiles`: the good images' tiles are the training samples, and
every later step follows the tiling the run (then the manifest) records."""

import json

import cv2
import numpy as np
import pytest
import torch

from edge_infer.bundle import Bundle
from edge_infer.preprocess import InputSpec
from edge_infer.score import Scorer
from edge_infer.tiling import Tiling
from lineside.cli import main as cli
from mvtec_fixture import texture
from train_host.data import load_split, make_loader

SIZE = 256  # the frame; the defect is a 2x2 px bump of +70 grey levels: 0.006 % of it


def make_small_defects(root, n_train=12, n_good=6, n_defect=6, seed=0):
    """An MVTec-layout category of 256 px textures whose defects vanish at 64 px."""
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / f"train/good/{i:03d}.png"), texture(rng, SIZE))
    for i in range(n_good):
        cv2.imwrite(str(root / f"test/good/{i:03d}.png"), texture(rng, SIZE))
    for i in range(n_defect):
        image, mask = texture(rng, SIZE), np.zeros((SIZE, SIZE), np.uint8)
        x, y = (int(v) for v in rng.integers(8, SIZE - 16, 2))
        image[y : y + 2, x : x + 2] = np.clip(image[y : y + 2, x : x + 2].astype(int) + 70, 0, 255)
        mask[y : y + 2, x : x + 2] = 255
        cv2.imwrite(str(root / f"test/spot/{i:03d}.png"), image)
        cv2.imwrite(str(root / f"ground_truth/spot/{i:03d}_mask.png"), mask)
    return root


@pytest.fixture(scope="module")
def category(tmp_path_factory):
    return make_small_defects(tmp_path_factory.mktemp("data") / "spots")


def train_and_evaluate(category, out, *extra):
    assert cli(["train", "rx", "--data", str(category), "--out", str(out), "--size", "64", "--feature-dim", "24",
                "--sigma", "1", "--threads", "2", *extra]) == 0
    assert cli(["evaluate", str(out), "--json", str(out / "metrics.json")]) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def tiled_run(category, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiled"
    return out, train_and_evaluate(category, out, "--tiles", "64,16")


def test_a_small_defect_found_with_tiles_vanishes_without(category, tiled_run, tmp_path):
    run, tiled = tiled_run
    whole = train_and_evaluate(category, tmp_path / "whole")
    assert tiled["image_auroc"] >= 0.95 and tiled["pixel_auroc"] > 0.95
    assert whole["image_auroc"] <= 0.8  # squashed 4x, the 2x2 bump is half a pixel of +17
    record = json.loads((run / "run.json").read_text())
    assert record["input"]["tiles"] == {"size": 64, "overlap": 16}
    assert record["training"]["validation_good_scores"]["n"] == len(load_split(category).val)  # per image


def test_the_export_records_the_tiling_and_scores_as_pytorch_did(category, tiled_run, tmp_path):
    run, _ = tiled_run
    assert cli(["export", str(run), "--out", str(tmp_path / "bundle"), "--precision", "fp32,fp16"]) == 0
    bundle = Bundle.load(tmp_path / "bundle")
    assert bundle.manifest.input.tiles.model_dump() == {"size": 64, "overlap": 16}
    assert bundle.manifest.files["model.onnx"].checks["parity"]["images"] > 1  # tiles of the parity images
    accuracy = bundle.manifest.files[bundle.manifest.variants["fp16"]].checks["accuracy"]
    assert accuracy["images"] == len(load_split(category).test)  # checked per image (max over its tiles)
    assert accuracy["auroc_fp32"] >= 0.95

    from train_host.infer import predict
    from train_host.run import load_run

    model, record = load_run(run)
    spec = InputSpec.from_dict(record["input"])
    samples = load_split(category).test
    torch_pred = predict(model, samples, spec, keep_maps=True)
    scorer = Scorer(bundle, backend="ort-cpu")
    try:
        scored = list(scorer.score_paths([s.path for s in samples], batch=4, keep_maps=True))
    finally:
        scorer.close()
    np.testing.assert_allclose([s.verdict.score for s in scored], torch_pred.scores, rtol=1e-4)
    assert scored[0].anomaly_map.shape == (1, SIZE, SIZE) == (1, *torch_pred.maps.shape[1:])
    np.testing.assert_allclose(scored[-1].anomaly_map[0], torch_pred.maps[-1], rtol=1e-3, atol=1e-3)


def test_the_loader_yields_every_tile_labelled_as_its_image_and_remembers_them(category):
    spec = InputSpec(64, 64, 3, tiles=Tiling(64, 16))
    samples = load_split(category).test[-3:]  # defects, with masks
    memory = {}
    loader = make_loader(samples, spec, batch_size=2, memory=memory)
    first, second = list(loader), list(loader)  # the second pass comes from memory
    assert [len(b["image"]) for b in first] == [50, 25]  # 5x5 tiles of 64 px (stride 48) per 256 px image
    for a, b in zip(first, second):
        for key in ("image", "label", "mask", "index", "canvas"):
            assert torch.equal(a[key], b[key])
    batch = first[0]
    assert batch["label"].tolist() == [1] * 50 and batch["index"].tolist() == [0] * 25 + [1] * 25
    assert batch["canvas"].tolist() == [[SIZE, SIZE]] * 2
    assert batch["mask"].sum() > 0  # the defect's mask is cut on the same grid
