"""rx: a Gaussian per feature-map location, Mahalanobis distance as the anomaly map.

The "Deep RX" / PaDiM idea. A frozen CNN gives patch features from several stages,
brought to one grid; a random but fixed subset of channels keeps the covariance small.
Each location gets a mean and a shrunk covariance, fitted in closed form by streaming
first and second moments over the training set (no feature maps are kept). The graph
stores the whitening matrix W (W Wᵀ = Σ⁻¹), so the distance is a batched matrix product
and a sum of squares: cheap, and well conditioned in FP16.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from ..backbones import feature_extractor
from .layers import GaussianBlur, ImageScore, Normalize, seeded

FAMILY = "rx"
CHOOSABLE = ("layers", "sigma", "score")  # chosen on validation unless the command gives them (rx_select.py)


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
    # settings `fit` chooses on validation (rx_select.py): by default those of CHOOSABLE the config does not set
    choose: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "RXConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "layers" in d:
            d["layers"] = tuple(int(i) for i in d["layers"])
        if d.get("choose") is None:
            d["choose"] = tuple(k for k in CHOOSABLE if k not in d)
        d["choose"] = tuple(d["choose"])
        unknown = set(d["choose"]) - set(CHOOSABLE)
        if unknown:
            raise LinesideError(f"rx cannot choose {', '.join(sorted(unknown))} on validation: only "
                                f"{', '.join(CHOOSABLE)}")
        return cls(**d)


class RXDetector(nn.Module):
    def __init__(self, config: RXConfig, spec: InputSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        self.normalize = Normalize()
        with seeded(config.seed):  # reproducible random init, global generator untouched
            self.backbone = feature_extractor(config.backbone, config.layers)
        if config.grid_layer not in config.layers:
            raise ValueError(f"grid_layer {config.grid_layer} must be one of the layers {config.layers}")
        self.grid = grid_of(self.backbone, config, spec)
        self.register_buffer("channels", channel_subset(self.backbone, config))
        locations, dim = self.grid[0] * self.grid[1], len(self.channels)
        self.register_buffer("mean", torch.zeros(locations, dim))
        self.register_buffer("whiten", torch.eye(dim).repeat(locations, 1, 1))
        self.smooth = GaussianBlur(config.sigma)
        self.image_score = ImageScore(config.score, spec.height * spec.width)

    def stage_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        """uint8 images → the backbone's feature maps, one per stage of ``config.layers``."""
        return self.backbone(self.normalize(image))

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images → N×L×d patch features on the grid (L = grid locations)."""
        return patch_features(self.stage_maps(image), self.grid, self.channels)

    def pretext_features(self, image: torch.Tensor) -> torch.Tensor:
        """Every stage's channels averaged over the image, at any input size: the station pretext trains on crops."""
        return torch.cat([fmap.mean((2, 3)) for fmap in self.backbone(self.normalize(image))], dim=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.upsample(mahalanobis(self.features(image), self.mean, self.whiten))
        amap = self.smooth(amap)
        return amap, self.image_score(amap)

    def upsample(self, dist: torch.Tensor) -> torch.Tensor:
        """N×L distances on the grid → N×1×H×W map at the input size (before smoothing)."""
        amap = dist.reshape(-1, 1, *self.grid)
        return F.interpolate(amap, size=(self.spec.height, self.spec.width), mode="bilinear", align_corners=False)

    def use_settings(self, layers: tuple[int, ...], sigma: float, score: str) -> None:
        """Take other settings in place (what validation chose): the backbone keeps its weights, and drops
        the stages past the last one used, so the exported graph computes only what it scores with."""
        config = replace(self.config, layers=tuple(layers), sigma=float(sigma), score=score)
        device = self.mean.device
        if config.layers != self.config.layers:
            state = self.backbone.state_dict()
            backbone = feature_extractor(config.backbone, config.layers)
            backbone.load_state_dict({k: state[k] for k in backbone.state_dict()})
            self.backbone = backbone.to(device, memory_format=memory_format(self.backbone)).eval()
            self.channels = channel_subset(backbone, config).to(device)
            locations, dim = self.grid[0] * self.grid[1], len(self.channels)
            self.mean = torch.zeros(locations, dim, device=device)
            self.whiten = torch.eye(dim, device=device).repeat(locations, 1, 1)
        self.smooth = GaussianBlur(config.sigma).to(device)
        self.image_score = ImageScore(config.score, self.spec.height * self.spec.width)
        self.config = config


def memory_format(module: nn.Module) -> torch.memory_format:
    """channels_last where ``train`` put the module's convolutions in it (an accelerator), else as they are."""
    weight = next(p for p in module.parameters() if p.dim() == 4)
    last = weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    return torch.channels_last if last else torch.preserve_format


def grid_of(backbone, config: RXConfig, spec: InputSpec) -> tuple[int, int]:
    stride = backbone.feature_info.reduction()[config.layers.index(config.grid_layer)]
    return spec.height // stride, spec.width // stride


def channel_subset(backbone, config: RXConfig) -> torch.Tensor:
    """The ``feature_dim`` channels kept of the stages' concatenation: a seeded random subset, as PaDiM does."""
    return seeded_subset(sum(backbone.feature_info.channels()), config)


def seeded_subset(total: int, config: RXConfig) -> torch.Tensor:
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


def build(config: dict, spec: InputSpec) -> RXDetector:
    return RXDetector(RXConfig.from_dict(config), spec).eval()


def fit(model, context) -> dict:
    """Fit on the backbone features ``--features`` picks (random, learned on the station, or a file), choosing
    the settings ``config.choose`` leaves open on validation (rx_select.py). With ``--features station`` the
    random and learned backbones are compared at the default settings, then the settings are chosen on the
    kept one (the pretext trained every built stage, so the stages are not dropped before it)."""
    from ..features import fit_with_features
    from .rx_select import fit_choosing

    if (context.options.get("features") or "random") != "station":
        return fit_with_features(model, context, fit_choosing)
    record = fit_with_features(model, context, fit_gaussians)
    chosen = fit_choosing(model, context)
    return {**record, **chosen, "features": record["features"]}


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
