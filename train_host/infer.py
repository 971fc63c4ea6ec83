"""PyTorch inference over samples: scores, and maps when a metric needs them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_infer.preprocess import InputSpec

from .context import progress_bar
from .data import make_loader, read_mask


@dataclass
class Predictions:
    scores: np.ndarray  # N
    labels: np.ndarray  # N
    paths: list[str]
    maps: np.ndarray | None = None  # N×H×W, when asked for
    masks: np.ndarray | None = None  # N×H×W bool, when asked for and the samples have masks
    skipped: list[tuple[str, str]] | None = None


@torch.no_grad()
def predict(model, samples, spec: InputSpec, batch_size: int = 16, keep_maps: bool = False,
            progress: str = "") -> Predictions:
    from .device import model_device

    device = model_device(model)  # scores where the model is: the run's device during training, --device after
    loader = make_loader(samples, spec, batch_size=batch_size, pin_memory=device.type == "cuda")
    scores, labels, paths, maps, masks = [], [], [], [], []
    for batch in progress_bar(loader, progress):
        amap, score = (t.float().cpu() for t in model(batch["image"].to(device, non_blocking=True)))
        scores.append(score.numpy())
        labels.append(batch["label"].numpy())
        picked = [samples[i] for i in batch["index"].tolist()]
        paths.extend(str(s.path) for s in picked)
        if keep_maps:
            maps.append(amap[:, 0].numpy())
            masks.extend(read_mask(s.mask_path, spec) if s.mask_path else np.zeros(amap.shape[-2:], bool)
                         for s in picked)
    return Predictions(
        np.concatenate(scores) if scores else np.zeros(0, np.float32),
        np.concatenate(labels) if labels else np.zeros(0, np.int64),
        paths,
        np.concatenate(maps) if keep_maps and maps else None,
        np.stack(masks) if keep_maps and masks else None,
        list(loader.skipped),
    )
