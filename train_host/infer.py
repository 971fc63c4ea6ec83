"""PyTorch inference over samples: scores, and maps when a metric needs them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_infer.preprocess import InputSpec
from edge_infer.tiling import merge

from .context import progress_bar
from .data import make_loader, read_mask


@dataclass
class Predictions:
    scores: np.ndarray  # N
    labels: np.ndarray  # N
    samples: list  # the Sample of each score, in order
    maps: np.ndarray | list | None = None  # N×H×W, when asked for (a list when tiled images differ in size)
    masks: np.ndarray | list | None = None  # N×H×W bool, when asked for and the samples have masks
    skipped: list[tuple[str, str]] | None = None


@torch.no_grad()
def predict(model, samples, spec: InputSpec, batch_size: int = 16, keep_maps: bool = False,
            progress: str = "") -> Predictions:
    from .device import model_device

    device = model_device(model)  # scores where the model is: the run's device during training, --device after
    loader = make_loader(samples, spec, batch_size=batch_size, pin_memory=device.type == "cuda")
    scores, labels, scored, maps, masks = [], [], [], [], []
    for batch in progress_bar(loader, progress):
        amap, score = (t.float().cpu().numpy() for t in model(batch["image"].to(device, non_blocking=True)))
        index, label = batch["index"].numpy(), batch["label"].numpy()
        if spec.tiles is not None:  # per image, as the device does: stitched maps, the max of the tiles' scores
            amap, score, index, label = per_image(amap, score, index, label, batch["canvas"].tolist(), spec)
        scores.append(score)
        labels.append(label)
        picked = [samples[i] for i in index.tolist()]
        scored.extend(picked)
        if keep_maps:
            maps.extend(m[0] for m in amap)
            masks.extend(read_mask(s.mask_path, spec) if s.mask_path else np.zeros(m.shape[-2:], bool)
                         for s, m in zip(picked, amap))
    same = len({m.shape for m in maps}) <= 1  # tiled images of different sizes keep their own map sizes
    return Predictions(
        np.concatenate(scores) if scores else np.zeros(0, np.float32),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        scored,
        (np.stack(maps) if same else maps) if keep_maps and maps else None,
        (np.stack(masks) if same else masks) if keep_maps and masks else None,
        list(loader.skipped),
    )


def per_image(amap: np.ndarray, score: np.ndarray, index: np.ndarray, label: np.ndarray, canvases: list,
              spec: InputSpec):
    """A tiled batch's outputs per image, by the device's rule (edge_infer.tiling.merge: stitched maps, the
    max of the tiles' scores): (maps, scores, image indices, labels), the images in the batch's order."""
    images = list(dict.fromkeys(index.tolist()))
    maps, scores = merge(amap, score, canvases, spec.tiles, (spec.height, spec.width))
    labels = np.asarray([label[index == i][0] for i in images])
    return maps, scores, np.asarray(images), labels
