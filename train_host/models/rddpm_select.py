"""Choosing rddpm's noising depth t0 and step count K without defect labels.

The station's validation images are all good, so anomalies are made from them: a bright or
dark soft blob, or a thin bright or dark scratch, drawn at a random place (generic shapes,
not any dataset's defects). Each candidate setting scores the good images and their
corrupted copies; the image AUROC between the two ranks the settings. Each setting first takes
its per-pixel map statistics from the training images (``fit_map_statistics``), as the
final model does. t0 is chosen first at
the cheapest K, then the smallest K whose AUROC is within ``TOLERANCE`` of the best K —
latency grows linearly with K, so this is the best AUROC per millisecond that does not give
up accuracy. Test labels are never looked at.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from sklearn.metrics import roc_auc_score

TOLERANCE = 0.01


def synthesize(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """uint8 N×C×H×W → a copy of each image with one blob or scratch (half bright, half dark)."""
    rng = np.random.default_rng([seed, 17])
    out = images.cpu().numpy().astype(np.float32).copy()
    _, _, h, w = out.shape
    for img in out:
        mask = np.zeros((h, w), np.float32)
        cx, cy = int(rng.integers(w // 8, w - w // 8)), int(rng.integers(h // 8, h - h // 8))
        if rng.random() < 0.5:  # soft blob
            axes = (int(rng.integers(2, max(3, w // 8))), int(rng.integers(2, max(3, h // 8))))
            cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
            mask = cv2.GaussianBlur(mask, (0, 0), 1.0)
        else:  # scratch: a thin line of 20–50% of the image's size
            length = rng.uniform(0.2, 0.5) * min(h, w)
            angle = rng.uniform(0, np.pi)
            dx, dy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
            cv2.line(mask, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 1.0,
                     max(1, min(h, w) // 48))
        strength = rng.uniform(50, 110) * (1 if rng.random() < 0.5 else -1)
        img += strength * mask[None]
    return torch.from_numpy(np.clip(out, 0, 255).astype(np.uint8)).to(images.device)


@torch.no_grad()
def scores(model, images: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    return np.concatenate([model(images[i:i + batch_size])[1].float().cpu().numpy() for i in range(0, len(images), batch_size)])


def use(model, t0: int, steps: int, norm_images: torch.Tensor) -> None:
    model.set_inference(t0, steps)
    model.fit_map_statistics(norm_images)


def validation_auroc(model, good: torch.Tensor, bad: torch.Tensor, norm_images: torch.Tensor, t0: int,
                     steps: int) -> float:
    use(model, t0, steps, norm_images)
    values = np.concatenate([scores(model, good), scores(model, bad)])
    labels = np.r_[np.zeros(len(good)), np.ones(len(bad))]
    return float(roc_auc_score(labels, values))


def choose_inference(model, val_images: torch.Tensor, norm_images: torch.Tensor, log=print) -> dict:
    """Set model's t0 and K (those the config leaves open) from validation, and its map statistics from
    ``norm_images`` (good training images); returns what was tried."""
    cfg = model.config
    fixed_t0, fixed_k = cfg.t0, cfg.steps
    if fixed_t0 is not None and fixed_k is not None:
        use(model, fixed_t0, fixed_k, norm_images)
        return {"method": "given", "t0": fixed_t0, "steps": fixed_k}
    if len(val_images) < 2:
        log("rddpm: fewer than 2 validation images: t0 and K keep their defaults (give --t0 and --steps)")
        use(model, fixed_t0 or model.t0, fixed_k or model.steps, norm_images)
        return {"method": "defaults (no validation images)", "t0": model.t0, "steps": model.steps}
    pick = torch.randperm(len(val_images), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.val_images]
    good = val_images[pick.sort().values]
    bad = synthesize(good, cfg.seed)
    tried = []

    def trial(t0: int, k: int) -> float:
        auroc = validation_auroc(model, good, bad, norm_images, t0, k)
        tried.append({"t0": t0, "steps": k, "auroc": round(auroc, 4)})
        log(f"rddpm: validation t0={t0} K={k}: synthetic-anomaly AUROC {auroc:.4f}")
        return auroc

    first_k = fixed_k or min(cfg.steps_grid)
    t0_grid = (fixed_t0,) if fixed_t0 else cfg.t0_grid
    by_t0 = {t0: trial(t0, min(first_k, t0)) for t0 in t0_grid}
    t0 = max(by_t0, key=by_t0.get)
    if fixed_k:
        k = fixed_k
    else:
        by_k = {first_k: by_t0[t0], **{k: trial(t0, k) for k in cfg.steps_grid if k != first_k and k <= t0}}
        best = max(by_k.values())
        k = min(k for k, v in by_k.items() if v >= best - TOLERANCE)
    use(model, t0, k, norm_images)
    log(f"rddpm: chose t0={t0}, K={k} on {len(good)} validation images + {len(bad)} synthetic anomalies")
    return {"method": "validation good images + synthetic anomalies", "images": 2 * len(good),
            "t0": t0, "steps": k, "tried": tried}
