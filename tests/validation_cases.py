"""Validation sets constructed so that a known setting must win (the settings choices of rx and dinov2-knn)."""

import cv2
import numpy as np
import pytest
import torch
from mvtec_fixture import texture

from edge_infer.bundle import Bundle
from edge_infer.score import Scorer
from lineside.cli import main as cli
from train_host.validation import Validation


def small_defects(size: int, count: int = 12, seed: int = 7, side: int = 2) -> Validation:
    """Good textures of varied contrast (the whole map rises a little) against textures with one 2x2 dot of
    +120 (the map peaks in one place): the mean of the hottest half of the map (the default this test gives)
    ranks the contrasty good images with the dots, the map's max or top 1% does not."""
    rng = np.random.default_rng(seed)
    good, bad = [], []
    for _ in range(count):
        image = cv2.resize(texture(rng), (size, size)).astype(float)
        good.append(np.clip(128 + (image - 128) * rng.uniform(1.0, 2.0), 0, 255).astype(np.uint8))
        image = cv2.resize(texture(rng), (size, size)).astype(int)
        x, y = rng.integers(size // 5, size - 15, 2)
        image[y:y + side, x:x + side] += 120
        bad.append(np.clip(image, 0, 255).astype(np.uint8))
    images = torch.from_numpy(np.stack(good + bad))[:, None]
    parts = np.array(["good"] * count + ["structural"] * count)
    return Validation(images, parts, ("structural",), (), "constructed: textures of varied contrast vs 2x2 dots")


def assert_exported_graph_scores_as_saved(out, loaded, validation: Validation, record: dict, bundle_dir) -> np.ndarray:
    """The run as saved scores its recorded validation AUROC, and the graph exported from it scores the validation
    images as the loaded model does (the chosen setting travels into the bundle). Returns the graph's scores."""
    assert validation.evaluate(loaded)["validation_auroc"] == pytest.approx(record["validation_auroc"], abs=1e-4)
    assert cli(["export", str(out), "--out", str(bundle_dir), "--parity-images", "4"]) == 0
    bundle = Bundle.load(bundle_dir)
    assert bundle.manifest.files["model.onnx"].checks["parity"]["score_rel_err"] < 1e-3
    graph = Scorer(bundle).backend.run_all(validation.images.numpy()).score
    np.testing.assert_allclose(graph, validation.scores(loaded), rtol=1e-3, atol=1e-5)
    return graph
