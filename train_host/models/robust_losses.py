"""The noise-prediction regression made robust (the RDDPM idea): MSE, Huber, LTS, Tukey.

Each loss takes the residual ``r = predicted noise − true noise`` (N×C×H×W) and returns a
scalar. Defects hidden in "good" training images give residuals that the bulk of the data
does not explain; a robust loss caps (Huber), drops (least trimmed squares) or zeroes
(Tukey's redescending biweight) their pull on the gradient, where MSE's grows with them.

- ``mse``: mean r², the ordinary DDPM objective (the baseline).
- ``huber``: elementwise, quadratic for |r| ≤ δ and linear beyond (δ = 0.2 by default).
- ``lts``: least trimmed squares over images: each image's mean r², the ``keep`` share with
  the lowest values is averaged and the rest dropped. A denoising loss depends strongly on
  the timestep, so images are ranked by their loss relative to a running mean of the loss at
  their timestep (``TimestepScale``), not by the raw value, which would drop hard timesteps.
- ``tukey``: elementwise Tukey biweight on r / s, with s a robust scale of the batch's
  residuals (1.4826 × median |r|, held constant for the gradient) and cutoff c = 4.685:
  residuals beyond c·s get weight zero.
"""

from __future__ import annotations

import torch

LOSSES = ("mse", "huber", "lts", "tukey")
TUKEY_C = 4.685  # 95% efficiency at the normal


def mse_loss(r: torch.Tensor) -> torch.Tensor:
    return r.pow(2).mean()


def huber_loss(r: torch.Tensor, delta: float = 0.2) -> torch.Tensor:
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r.pow(2), delta * (a - 0.5 * delta)).mean()


def robust_scale(r: torch.Tensor) -> torch.Tensor:
    """1.4826 × the median absolute residual: the standard deviation for normal residuals."""
    return (1.4826 * r.detach().abs().flatten().median()).clamp_min(1e-6)


def tukey_rho(u: torch.Tensor, c: float = TUKEY_C) -> torch.Tensor:
    """ρ(u) = c²/6 · (1 − (1 − (u/c)²)³) for |u| ≤ c, c²/6 beyond: bounded, so ψ = ρ' is 0 there."""
    inside = 1 - (1 - (u / c).pow(2)).pow(3)
    return (c * c / 6) * torch.where(u.abs() <= c, inside, torch.ones_like(u))


def tukey_weight(u: torch.Tensor, c: float = TUKEY_C) -> torch.Tensor:
    """ψ(u)/u: the weight each standardised residual gets in the gradient (zero beyond c)."""
    return torch.where(u.abs() <= c, (1 - (u / c).pow(2)).pow(2), torch.zeros_like(u))


def tukey_loss(r: torch.Tensor, c: float = TUKEY_C) -> torch.Tensor:
    s = robust_scale(r)
    return (s * s * tukey_rho(r / s, c)).mean()  # × s² so small residuals match MSE's ½r² scale


def lts_loss(per_image: torch.Tensor, keep: float = 0.8, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the ``keep`` share of per-image losses that are lowest (relative to ``reference``)."""
    n = per_image.shape[0]
    k = max(1, int(round(keep * n)))
    rank_by = per_image.detach() if reference is None else per_image.detach() / reference.clamp_min(1e-12)
    kept = rank_by.topk(k, largest=False).indices
    return per_image[kept].mean()


class TimestepScale:
    """Running mean of the per-image loss in timestep buckets: what LTS ranks against."""

    def __init__(self, timesteps: int, buckets: int = 20, momentum: float = 0.95):
        self.width = max(1, timesteps // buckets)
        self.mean = torch.zeros(buckets + 1)
        self.seen = torch.zeros(buckets + 1, dtype=torch.bool)
        self.momentum = momentum

    def reference(self, t: torch.Tensor, per_image: torch.Tensor) -> torch.Tensor:
        """Each image's expected loss at its timestep (its own loss where the bucket is new), then update."""
        bucket = (t.cpu() // self.width).clamp_max(len(self.mean) - 1)
        values = per_image.detach().cpu()  # a few numbers per batch: the running means stay on the CPU
        ref = torch.where(self.seen[bucket], self.mean[bucket], values)
        for b in bucket.unique():
            picked = values[bucket == b].mean()
            old = self.mean[b] if self.seen[b] else picked
            self.mean[b] = self.momentum * old + (1 - self.momentum) * picked
            self.seen[b] = True
        return ref.to(per_image.device)


class RobustLoss:
    """The configured loss; call with the residual and the images' timesteps."""

    def __init__(self, name: str, delta: float = 0.2, keep: float = 0.8, timesteps: int = 1000):
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}: choose one of {', '.join(LOSSES)}")
        self.name, self.delta, self.keep = name, delta, keep
        self.scale = TimestepScale(timesteps) if name == "lts" else None

    def __call__(self, r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.name == "mse":
            return mse_loss(r)
        if self.name == "huber":
            return huber_loss(r, self.delta)
        if self.name == "tukey":
            return tukey_loss(r)
        per_image = r.pow(2).flatten(1).mean(1)
        return lts_loss(per_image, self.keep, self.scale.reference(t, per_image))
