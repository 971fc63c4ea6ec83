"""rx's Gaussian arithmetic: patch features on the grid, streaming moments, the shrunk covariance's
whitening matrix, the Mahalanobis map, and the one-pass fit. Shared by the family (rx.py) and its
choice of settings on validation (rx_select.py), which fits several stage sets at once."""

from __future__ import annotations

from dataclasses import asdict

import torch
import torch.nn.functional as F


def seeded_subset(total: int, config) -> torch.Tensor:
    generator = torch.Generator().manual_seed(config.seed)
    return torch.randperm(total, generator=generator)[: min(config.feature_dim, total)].sort().values


def patch_features(maps: list[torch.Tensor], grid: tuple[int, int], channels: torch.Tensor) -> torch.Tensor:
    """Stage maps → N×L×d: each brought to the grid (finer ones averaged, coarser ones interpolated),
    concatenated, the kept channels selected."""
    h, w = grid
    aligned = []
    for fmap in maps:
        if fmap.shape[-2] > h:  # finer stage: average its cells into the grid
            fmap = F.avg_pool2d(fmap, kernel_size=fmap.shape[-2] // h)
        if fmap.shape[-2:] != (h, w):
            fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
        aligned.append(fmap)
    feats = torch.cat(aligned, dim=1).index_select(1, channels)
    return feats.flatten(2).transpose(1, 2)


def mahalanobis(feats: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """N×L×d features → N×L distances to each location's Gaussian."""
    centred = (feats - mean).transpose(0, 1)  # L×N×d
    z = torch.bmm(centred, whiten)  # L×N×d, ‖z‖² = Mahalanobis²
    return z.pow(2).sum(-1).clamp_min(0).sqrt().transpose(0, 1)


class MomentAccumulator:
    """Running sums of x and x xᵀ per location, in float64 so long runs stay exact enough.

    The sums live on ``device`` (the features' device; MPS has no float64, so there they stay on
    the CPU); under torchrun each rank sums its share and ``combine`` adds the ranks' sums."""

    def __init__(self, locations: int, dim: int, device=None):
        device = torch.device("cpu") if device is None or device.type == "mps" else device
        self.n = 0
        self.sum = torch.zeros(locations, dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(locations, dim, dim, dtype=torch.float64, device=device)

    def add(self, feats: torch.Tensor) -> None:  # N×L×d
        f = feats.to(self.sum.device, torch.float64)
        self.n += f.shape[0]
        self.sum += f.sum(0)
        self.outer += torch.einsum("nld,nle->lde", f, f)

    def combine(self) -> None:
        """Sum n, x and x xᵀ over torchrun's ranks (a no-op in one process)."""
        from ..distributed import sum_all

        count = sum_all(torch.tensor([float(self.n)], dtype=torch.float64, device=self.sum.device))
        self.n = int(count.item())
        sum_all(self.sum)
        sum_all(self.outer)

    def gaussian(self, shrinkage: str) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Mean, whitening matrix and the mean shrinkage weight used."""
        if self.n < 2:
            raise ValueError("at least two training images are needed to fit a covariance")
        mean = self.sum.cpu() / self.n
        cov = (self.outer.cpu() - self.n * torch.einsum("ld,le->lde", mean, mean)) / (self.n - 1)
        dim = cov.shape[-1]
        eye = torch.eye(dim, dtype=cov.dtype)
        trace_mean = torch.diagonal(cov, dim1=1, dim2=2).mean(-1)  # per location
        if shrinkage == "oas":
            weight = oas_weight(cov, self.n)
        else:
            weight = torch.full_like(trace_mean, float(shrinkage))
        target = trace_mean[:, None, None] * eye
        shrunk = (1 - weight)[:, None, None] * cov + weight[:, None, None] * target
        shrunk = shrunk + 1e-6 * trace_mean.clamp_min(1e-12)[:, None, None] * eye
        lower = torch.linalg.cholesky(shrunk)
        inv_lower = torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False)
        return mean.float(), inv_lower.transpose(1, 2).float(), float(weight.mean())


def oas_weight(cov: torch.Tensor, n: int) -> torch.Tensor:
    """Oracle Approximating Shrinkage (Chen et al. 2010), as scikit-learn computes it."""
    dim = cov.shape[-1]
    alpha = cov.pow(2).mean(dim=(1, 2))
    mu = torch.diagonal(cov, dim1=1, dim2=2).mean(-1)
    num = alpha + mu**2
    den = (n + 1) * (alpha - mu**2 / dim)
    return torch.where(den > 0, (num / den.clamp_min(1e-300)).clamp(max=1.0), torch.ones_like(den))


@torch.no_grad()
def fit_gaussians(model, context) -> dict:
    """Fit the per-location Gaussians in one streaming pass over the training images (each rank over its
    share under torchrun; the sums are combined before the closed form)."""
    acc = MomentAccumulator(model.mean.shape[0], model.mean.shape[1], model.mean.device)
    for batch in context.loader(context.split.train, progress="rx: fitting", shard=True):
        acc.add(model.features(batch["image"]))
    acc.combine()
    mean, whiten, weight = acc.gaussian(model.config.shrinkage)
    model.mean.copy_(mean)
    model.whiten.copy_(whiten)
    context.log(f"rx: fitted {model.mean.shape[0]} Gaussians of dimension {model.mean.shape[1]} "
        f"on {acc.n} images (mean shrinkage {weight:.3f})")
    return {"images": acc.n, "mean_shrinkage": round(weight, 4), "config": asdict(model.config)}
