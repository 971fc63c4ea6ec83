"""rx: a Gaussian per feature-map location, Mahalanobis distance as the anomaly map.

The "Deep RX" / PaDiM idea. A frozen CNN gives patch features from several stages,
brought to one grid; a random but fixed subset of channels keeps the covariance small.
Each location gets a mean and a shrunk covariance, fitted in closed form by streaming
first and second moments over the training set (no feature maps are kept). The graph
stores the whitening matrix W (W Wᵀ = Σ⁻¹), so the distance is a batched matrix product
and a sum of squares: cheap, and well conditioned in FP16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.preprocess import InputSpec

from ..backbones import feature_extractor
from .layers import GaussianBlur, ImageScore, Normalize, seeded

FAMILY = "rx"


@dataclass
class RXConfig:
    backbone: str = "resnet18"
    layers: tuple[int, ...] = (1, 2, 3)
    grid_layer: int = 2  # features are pooled / upsampled to this stage's grid
    feature_dim: int = 100  # channels kept (a seeded random subset), as PaDiM does
    shrinkage: str = "oas"  # "oas" (Oracle Approximating Shrinkage) or a fixed weight in [0, 1]
    score: str = "max"  # or "topk:0.01"
    sigma: float = 4.0  # smoothing of the anomaly map, in input pixels
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "RXConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "layers" in d:
            d["layers"] = tuple(int(i) for i in d["layers"])
        return cls(**d)


class RXDetector(nn.Module):
    def __init__(self, config: RXConfig, spec: InputSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        self.normalize = Normalize()
        with seeded(config.seed):  # reproducible random init, global generator untouched
            self.backbone = feature_extractor(config.backbone, config.layers)
        info = self.backbone.feature_info
        channels, reductions = info.channels(), info.reduction()
        if config.grid_layer not in config.layers:
            raise ValueError(f"grid_layer {config.grid_layer} must be one of the layers {config.layers}")
        stride = reductions[config.layers.index(config.grid_layer)]
        self.grid = (spec.height // stride, spec.width // stride)
        total = sum(channels)
        dim = min(config.feature_dim, total)
        generator = torch.Generator().manual_seed(config.seed)
        self.register_buffer("channels", torch.randperm(total, generator=generator)[:dim].sort().values)
        locations = self.grid[0] * self.grid[1]
        self.register_buffer("mean", torch.zeros(locations, dim))
        self.register_buffer("whiten", torch.eye(dim).repeat(locations, 1, 1))
        self.smooth = GaussianBlur(config.sigma)
        self.image_score = ImageScore(config.score, spec.height * spec.width)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images → N×L×d patch features on the grid (L = grid locations)."""
        maps = self.backbone(self.normalize(image))
        h, w = self.grid
        aligned = []
        for fmap in maps:
            if fmap.shape[-2] > h:  # finer stage: average its cells into the grid
                fmap = F.avg_pool2d(fmap, kernel_size=fmap.shape[-2] // h)
            if fmap.shape[-2:] != (h, w):
                fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
            aligned.append(fmap)
        feats = torch.cat(aligned, dim=1).index_select(1, self.channels)
        return feats.flatten(2).transpose(1, 2)

    def pretext_features(self, image: torch.Tensor) -> torch.Tensor:
        """Every stage's channels averaged over the image, at any input size: the station pretext trains on crops."""
        return torch.cat([fmap.mean((2, 3)) for fmap in self.backbone(self.normalize(image))], dim=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(image)  # N×L×d
        centred = (feats - self.mean).transpose(0, 1)  # L×N×d
        z = torch.bmm(centred, self.whiten)  # L×N×d, ‖z‖² = Mahalanobis²
        dist = z.pow(2).sum(-1).clamp_min(0).sqrt().transpose(0, 1)  # N×L
        amap = dist.reshape(-1, 1, *self.grid)
        amap = F.interpolate(amap, size=(self.spec.height, self.spec.width), mode="bilinear", align_corners=False)
        amap = self.smooth(amap)
        return amap, self.image_score(amap)


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


def build(config: dict, spec: InputSpec) -> RXDetector:
    return RXDetector(RXConfig.from_dict(config), spec).eval()


def fit(model, context) -> dict:
    """Fit on the backbone features ``--features`` picks (random, learned on the station, or a file)."""
    from ..features import fit_with_features

    return fit_with_features(model, context, fit_gaussians)


@torch.no_grad()
def fit_gaussians(model: RXDetector, context) -> dict:
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
