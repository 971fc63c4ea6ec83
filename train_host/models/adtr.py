"""adtr: a transformer reconstructs a frozen CNN's multi-scale features (ADTR, You et al. 2022).

A frozen EfficientNet-B4 gives features from its five stages (24+32+56+160+448 = 720
channels), brought to one grid of stride 16 (256×256 → 16×16) and concatenated. A 1×1
conv squeezes them to 256 channels, a transformer (4 encoder + 4 decoder layers, 8 heads,
feed-forward 1024, learned position embeddings) rebuilds them, and a 1×1 conv maps back
to 720. The decoder's queries are a learned embedding, not the input tokens: it can only
reach the input through cross-attention to the encoder's memory, so it cannot simply
copy an anomaly through. What it fails to reconstruct is the anomaly map: the L2
reconstruction error over channels at each location, upsampled to the input, smoothed;
the image score is the max of the average-pooled map.

Training lives in ``adtr_training`` (normal-only L_norm, then anomaly-available L_px).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from ..backbones import feature_extractor
from .layers import GaussianBlur, Normalize, seeded

FAMILY = "adtr"


@dataclass
class ADTRConfig:
    # architecture (the paper's settings)
    backbone: str = "efficientnet_b4"
    stages: tuple[int, ...] = (0, 1, 2, 3, 4)  # timm out_indices: EfficientNet stages 1–5
    grid_stride: int = 16  # every stage is resized to this stride's grid (256 → 16×16)
    hidden_dim: int = 256
    encoder_layers: int = 4
    decoder_layers: int = 4
    heads: int = 8
    ff_dim: int = 1024
    dropout: float = 0.1
    # scoring
    sigma: float = 4.0  # Gaussian smoothing of the upsampled map, input pixels
    score_pool: int = 16  # image score = max of the map average-pooled with this kernel
    # training (recorded with the run; the paper's schedule is the default)
    epochs: int = 500  # normal-only (L_norm) epochs; the lr drops ×0.1 at drop_at of the run
    px_epochs: int = 300  # anomaly-available (L_px) epochs, lr ×0.1 for the last third
    lr: float = 1e-4
    weight_decay: float = 1e-4
    drop_at: float = 0.8
    px_drop_at: float = 2 / 3
    alpha: float = 0.003  # weight of L_px's anomaly term
    max_minutes: float | None = None  # wall-clock cap for fit; epochs are scaled to fit it
    anomaly_available: bool = False
    init: str | None = None  # a normal-only run to start the L_px phase from
    real_defects: bool = False  # use labelled defective train images (with masks) in L_px
    pool_refresh: int = 10  # epochs between regenerations of the confetti pool
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> ADTRConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "stages" in d:
            d["stages"] = tuple(int(i) for i in d["stages"])
        return cls(**d)


class FeatureReconstructor(nn.Module):
    """N×C×h×w features → their reconstruction, through learned decoder queries."""

    def __init__(self, channels: int, locations: int, config: ADTRConfig):
        super().__init__()
        d = config.hidden_dim
        self.input_proj = nn.Conv2d(channels, d, 1)
        self.output_proj = nn.Conv2d(d, channels, 1)
        self.pos_embed = nn.Parameter(torch.randn(1, locations, d) * 0.02)
        self.query_embed = nn.Parameter(torch.randn(1, locations, d) * 0.02)
        enc = nn.TransformerEncoderLayer(d, config.heads, config.ff_dim, config.dropout, batch_first=True)
        dec = nn.TransformerDecoderLayer(d, config.heads, config.ff_dim, config.dropout, batch_first=True)
        # no nested tensors: they would be a data-dependent path that ONNX export cannot trace
        self.encoder = nn.TransformerEncoder(enc, config.encoder_layers, enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(dec, config.decoder_layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        n, _, h, w = feats.shape
        tokens = self.input_proj(feats).flatten(2).transpose(1, 2)  # N×L×d
        memory = self.encoder(tokens + self.pos_embed)
        queries = self.query_embed.expand(n, -1, -1)  # the input never enters here
        out = self.decoder(queries, memory)
        return self.output_proj(out.transpose(1, 2).reshape(n, -1, h, w))


class ADTRDetector(nn.Module):
    def __init__(self, config: ADTRConfig, spec: InputSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        self.normalize = Normalize()
        with seeded(config.seed):  # reproducible random init, global generator untouched
            self.backbone = feature_extractor(config.backbone, config.stages)
            reductions = self.backbone.feature_info.reduction()
            coarsest = max(reductions)
            if spec.height % coarsest or spec.width % coarsest or config.grid_stride not in reductions:
                raise LinesideError(
                    f"adtr needs an input size divisible by {coarsest} (its coarsest stage) and a grid "
                    f"stride among {reductions}; got {spec.width}x{spec.height}, stride {config.grid_stride}: "
                    "use e.g. --size 256")
            self.grid = (spec.height // config.grid_stride, spec.width // config.grid_stride)
            self.channels = sum(self.backbone.feature_info.channels())
            self.reconstructor = FeatureReconstructor(self.channels, self.grid[0] * self.grid[1], config)
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.smooth = GaussianBlur(config.sigma)
        self.pool = min(config.score_pool, spec.height, spec.width)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()  # frozen: batch norm keeps its statistics
        return self

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images → N×720×h×w: every stage resized to the grid, concatenated."""
        h, w = self.grid
        aligned = []
        for fmap in self.backbone(self.normalize(image)):
            if fmap.shape[-2] > h:  # finer stage: average its cells into the grid
                fmap = F.avg_pool2d(fmap, kernel_size=fmap.shape[-2] // h)
            elif fmap.shape[-2] < h:  # coarser stage: upsample
                fmap = F.interpolate(fmap, size=(h, w), mode="bilinear", align_corners=False)
            aligned.append(fmap)
        return torch.cat(aligned, dim=1)

    def anomaly_map(self, feats: torch.Tensor, recon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-location L2 error over channels → (smoothed map at input size, image score)."""
        err = (feats - recon).pow(2).sum(1, keepdim=True).sqrt()
        amap = F.interpolate(err, size=(self.spec.height, self.spec.width), mode="bilinear", align_corners=False)
        amap = self.smooth(amap)
        score = F.avg_pool2d(amap, self.pool, stride=1).flatten(1).amax(dim=1)
        return amap, score

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(image)
        return self.anomaly_map(feats, self.reconstructor(feats))


def build(config: dict, spec: InputSpec) -> ADTRDetector:
    return ADTRDetector(ADTRConfig.from_dict(config), spec).eval()


def trains_on(config: ADTRConfig) -> tuple[str, ...]:
    """The anomaly-available phase (L_px) trains on confetti noise; the normal-only one on no anomaly."""
    return ("confetti",) if config.anomaly_available else ()


def fit(model: ADTRDetector, context) -> dict:
    from .adtr_training import fit as fit_adtr

    return fit_adtr(model, context, trains_on(model.config))
