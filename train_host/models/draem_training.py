"""draem's training loop: both networks at once on Perlin-textured anomalies; the epoch kept is chosen
on `train_host.validation` (good images vs the synthetic kinds draem does not train on, plus real defects if
given)."""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from ..validation import build_validation
from .segmentation_loss import focal_dice_loss


def train_draem(model, context, trained_on: tuple[str, ...]) -> dict:
    """``trained_on``: the synthetic kinds training makes (validation holds them out)."""
    opts = context.options
    epochs = int(opts.get("epochs") or 10)
    deadline = time.monotonic() + 60 * float(opts.get("max_minutes") or math.inf)
    seed = int(opts.get("seed", 0))
    rng = np.random.default_rng([seed, 2021])  # the anomaly draws; the same seed makes the same run
    validation = build_validation(context, trained_on, seed)
    context.log(f"draem: validation: {validation.signal}")
    optimizer = torch.optim.Adam(model.parameters(), lr=float(opts.get("lr") or 1e-3))
    losses, history, best, steps, stopped = [], [], None, 0, "epochs"
    for epoch in range(epochs):
        model.train()
        for batch in context.loader(context.split.train, shuffle=True, progress=f"draem: epoch {epoch + 1}"):
            loss = draem_loss(model, batch["image"], rng, model.config.anomaly_share)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            steps += 1
            if time.monotonic() > deadline:
                stopped = "max_minutes"
                break
        scores = validation.evaluate(model)
        history.append(scores)
        # ties: the later, longer-trained epoch
        if best is None or scores["validation_auroc"] >= best[0]["validation_auroc"]:
            best = (scores, epoch + 1, copy.deepcopy(model.state_dict()))
        context.log(f"draem: epoch {epoch + 1}: mean loss {np.mean(losses[-50:]):.4f}, validation {scores}")
        if stopped == "max_minutes":
            break
    model.load_state_dict(best[2])
    model.eval()
    return {
        "synthesis": "Perlin masks filled with procedural textures (perlin, stripes, checker, shuffled patches, "
                     "colour jitter): train_host.synth.perlin_anomaly",
        "validation_signal": validation.signal,
        "validation_used_for": "choosing the epoch kept (validation image AUROC)",
        "validation_per_epoch": [{k: v for k, v in h.items() if k != "per_kind"} for h in history],
        "epoch_kept": best[1], **validation.record(best[0]), "epochs_run": len(history), "stopped_by": stopped,
        "steps": steps,
        "first_train_loss": round(float(np.mean(losses[:5])), 4) if losses else None,
        "final_train_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
    }


def draem_loss(model, clean: torch.Tensor, rng: np.random.Generator, share: float) -> torch.Tensor:
    """L2 + SSIM of the reconstruction against the good image, plus focal (+ Dice) of the mask."""
    augmented, mask = add_anomalies(clean, rng, share)
    rec, logits = model.outputs(augmented)
    target = model.to_unit(clean)
    return F.mse_loss(rec, target) + (1 - ssim(rec, target)) + focal_dice_loss(logits, mask)


def add_anomalies(images: torch.Tensor, rng: np.random.Generator, share: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(float 0-255 images, N×1×H×W masks): a ``share`` of the batch gets a Perlin-textured anomaly."""
    from train_host.synth.perlin_anomaly import perlin_anomaly

    out = images.float().clone()
    masks = torch.zeros(len(images), 1, *images.shape[-2:])
    for i, image in enumerate(images):
        if rng.random() < share:
            anomalous, mask = perlin_anomaly(image.numpy(), rng)
            out[i] = torch.from_numpy(anomalous).float()
            masks[i, 0] = torch.from_numpy(mask)
    return out, masks


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of two N×C×H×W images in 0..1 (Wang et al. 2004, Gaussian window).

    Written here (a dozen lines) rather than pulling in kornia or pytorch-msssim for one function.
    """
    c = a.shape[1]
    x = torch.arange(window, dtype=a.dtype) - window // 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = (g / g.sum())
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(t):
        return F.conv2d(t, kernel, padding=window // 2, groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()
