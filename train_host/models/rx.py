"""rx: a Gaussian per feature-map location, Mahalanobis distance as the anomaly map.

The "Deep RX" / PaDiM idea. A frozen CNN gives patch features from several stages,
brought to one grid; a random but fixed subset of channels keeps the covariance small.
Each location gets a mean and a shrunk covariance, fitted in closed form by streaming
first and second moments over the training set (no feature maps are kept). The graph
stores the whitening matrix W (W Wᵀ = Σ⁻¹), so the distance is a batched matrix product
and a sum of squares: cheap, and well conditioned in FP16.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from ..backbones import feature_extractor
from .layers import GaussianBlur, ImageScore, Normalize, seeded
from .rx_gaussians import fit_gaussians, mahalanobis, patch_features, seeded_subset

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
