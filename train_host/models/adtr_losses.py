"""ADTR's two training losses on features f and their reconstruction f̂ (N×C×h×w).

L_norm (normal-only): the mean squared error between f and f̂.

L_px (anomaly-available), as the paper writes it: with d = f − f̂ and the pseudo-Huber
φ(u) = sqrt((mean_c |d(c,u)|)² + 1) − 1 at each location u, and y_u the anomaly share of u,

    L_px = mean_u (1 − y_u)·φ(u) − α·log(1 − exp(−mean_u y_u·φ(u)))

The first term pulls the reconstruction onto the input at normal locations; the second
pushes the error up where the image is anomalous, and saturates once it is large (so it
cannot run away). It is computed per image and averaged over the batch; an image with no
anomalous location has no second term (its log would be −log 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def l_norm(feats: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(recon, feats)


def pseudo_huber(feats: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """φ per location: N×h×w."""
    return torch.sqrt((feats - recon).abs().mean(dim=1).pow(2) + 1) - 1


def l_px(feats: torch.Tensor, recon: torch.Tensor, y: torch.Tensor, alpha: float = 0.003) -> torch.Tensor:
    """y: N×h×w in [0, 1], the share of each location that is anomalous."""
    phi = pseudo_huber(feats, recon).flatten(1)
    y = y.flatten(1).to(phi.dtype)
    normal = ((1 - y) * phi).mean(dim=1)
    anomalous = (y * phi).mean(dim=1)
    has_anomaly = y.sum(dim=1) > 0
    # −log(1 − exp(−a)) = −log(−expm1(−a)), exact for small a; clamped where there is no anomaly
    push = -torch.log(-torch.expm1(-anomalous.clamp_min(1e-12)))
    return (normal + alpha * torch.where(has_anomaly, push, torch.zeros_like(push))).mean()


def grid_share(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """N×1×H×W (0/1) pixel mask → N×h×w share of each grid cell that is anomalous."""
    return F.adaptive_avg_pool2d(mask.float(), grid)[:, 0]
