"""dinov2-knn: few-shot detection without training: a memory bank of good DINOv2 patch features.

PatchCore's idea on a DINOv2 backbone: the patch tokens of the station's good images
(locally averaged over 3×3 patches) go into a memory bank, thinned by greedy coreset
selection (each pick is the feature farthest from those already picked, measured in a
random 128-d projection); a patch's anomaly is its distance to the nearest bank feature.
The bank is a constant inside the exported graph, and the search is one matrix product:
‖f − b‖² = ‖f‖² − 2 f·b + ‖b‖², then a min over the bank, which TensorRT runs as a GEMM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from .dinov2_backbone import (
    DEFAULT_BACKBONE,
    build_vit,
    check_layers,
    default_layers,
    load_dinov2_weights,
    patch_tokens,
)
from .layers import GaussianBlur, ImageScore, Normalize

FAMILY = "dinov2-knn"


@dataclass
class DinoKNNConfig:
    backbone: str = DEFAULT_BACKBONE
    depth: int | None = None
    layers: tuple[int, ...] | None = None  # default: two blocks in the second half
    aggregate: int = 3  # local averaging of patch features (PatchCore), 1 = none
    bank_size: int = 4096  # most features kept in the bank
    coreset: str = "greedy"  # greedy | random
    projection: int = 128  # dimension of the random projection the greedy selection measures in
    shots: int | None = None  # use only this many good images (few-shot); default: all
    k: int = 1  # neighbours averaged for a patch's distance
    score: str = "max"
    sigma: float = 4.0
    seed: int = 0
    bank_rows: int = 0  # set by fit: the bank actually kept

    @classmethod
    def from_dict(cls, d: dict) -> DinoKNNConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        config = cls(**d)
        if config.coreset not in ("greedy", "random"):
            raise LinesideError(f"coreset {config.coreset!r}: choose greedy or random")
        return config


class DinoKNNDetector(nn.Module):
    def __init__(self, config: DinoKNNConfig, spec: InputSpec):
        super().__init__()
        self.config, self.spec = config, spec
        self.normalize = Normalize()
        self.backbone = build_vit(config.backbone, spec.height, spec.width, config.depth, config.seed)
        self.layers = check_layers(self.backbone, config.layers or default_layers(len(self.backbone.blocks), 2))
        dim = self.backbone.embed_dim * len(self.layers)
        self.register_buffer("bank", torch.zeros(max(config.bank_rows, 1), dim))
        self.register_buffer("bank_sq", torch.zeros(max(config.bank_rows, 1)))
        self.smooth = GaussianBlur(config.sigma)
        self.image_score = ImageScore(config.score, spec.height * spec.width)

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images → N×L×d patch features (L = patch grid cells)."""
        fmap = torch.cat(patch_tokens(self.backbone, self.normalize(image), self.layers), dim=1)
        if self.config.aggregate > 1:
            a = self.config.aggregate
            fmap = F.avg_pool2d(fmap, a, stride=1, padding=a // 2, count_include_pad=False)
        return fmap.flatten(2).transpose(1, 2)

    def set_bank(self, bank: torch.Tensor) -> None:
        self.bank = bank.contiguous()
        self.bank_sq = bank.pow(2).sum(1)
        self.config.bank_rows = len(bank)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(image)  # N×L×d
        grid = (self.spec.height // 14, self.spec.width // 14)
        # Squared distances to every bank feature as one matrix product with the constant bank.
        d2 = feats.pow(2).sum(-1, keepdim=True) - 2 * feats @ self.bank.T + self.bank_sq  # N×L×M
        if self.config.k == 1:
            nearest = d2.amin(dim=-1)
        else:
            nearest = (-d2).topk(self.config.k, dim=-1).values.neg().mean(-1)
        amap = nearest.clamp_min(0).sqrt().reshape(-1, 1, *grid)
        amap = F.interpolate(amap, size=(self.spec.height, self.spec.width), mode="bilinear", align_corners=False)
        amap = self.smooth(amap)
        return amap, self.image_score(amap)


def greedy_coreset(feats: torch.Tensor, size: int, projection: int, seed: int) -> torch.Tensor:
    """Indices of ``size`` features, each the farthest (in a random projection) from those before it."""
    generator = torch.Generator().manual_seed(seed)
    if projection and projection < feats.shape[1]:
        matrix = torch.randn(feats.shape[1], projection, generator=generator) / projection**0.5
        reduced = feats @ matrix.to(feats.device)
    else:
        reduced = feats
    picked = torch.empty(size, dtype=torch.long)
    picked[0] = int(torch.randint(len(feats), (1,), generator=generator))
    nearest = (reduced - reduced[picked[0]]).pow(2).sum(1)
    for i in range(1, size):
        picked[i] = int(nearest.argmax())
        nearest = torch.minimum(nearest, (reduced - reduced[picked[i]]).pow(2).sum(1))
    return picked


def build(config: dict, spec: InputSpec) -> DinoKNNDetector:
    return DinoKNNDetector(DinoKNNConfig.from_dict(config), spec).eval()


def load_weights(model: DinoKNNDetector, path) -> dict:
    return load_dinov2_weights(model.backbone, path)


def fit(model, context) -> dict:
    """Fit on the backbone features ``--features`` picks (random, learned on the station, or a file)."""
    from ..features import fit_with_features

    return fit_with_features(model, context, fit_bank)


@torch.no_grad()
def fit_bank(model: DinoKNNDetector, context) -> dict:
    cfg = model.config
    samples = context.split.train
    if cfg.shots:
        import numpy as np

        pick = np.random.default_rng([cfg.seed, 11]).permutation(len(samples))[: cfg.shots]
        samples = [samples[i] for i in sorted(pick)]
    from ..distributed import gather_rows

    # each rank its share under torchrun, gathered in rank order: the bank a single process builds
    feats = [model.features(batch["image"]).flatten(0, 1)
             for batch in context.loader(samples, progress="dinov2-knn: features", shard=True)]
    feats = gather_rows(torch.cat(feats) if feats else model.bank[:0])
    if not len(feats):
        raise LinesideError("dinov2-knn found no readable good training image: check --data")
    size = min(cfg.bank_size, len(feats))
    if size == len(feats):
        index = torch.arange(len(feats), device=feats.device)
    elif cfg.coreset == "greedy":
        index = greedy_coreset(feats, size, cfg.projection, cfg.seed).to(feats.device)
    else:
        index = torch.randperm(len(feats), generator=torch.Generator().manual_seed(cfg.seed))[:size].to(feats.device)
    model.set_bank(feats[index])
    images = len(feats) // (model.spec.height // 14 * (model.spec.width // 14))
    context.log(f"dinov2-knn: memory bank of {size} of {len(feats)} patch features ({cfg.coreset} coreset) "
                f"from {images} good images")
    return {"images": images, "patch_features": len(feats), "bank_rows": size, "config": asdict(cfg)}
