"""dinov2-knn: few-shot detection without training: a memory bank of good DINOv2 patch features.

PatchCore's idea on a DINOv2 backbone: the patch tokens of the station's good images
(locally averaged over 3×3 patches) go into a memory bank, thinned by greedy coreset
selection (each pick is the feature farthest from those already picked, measured in a
random 128-d projection); a patch's anomaly is its distance to the nearest bank feature.
The bank is a constant inside the exported graph, and the search is one matrix product:
‖f − b‖² = ‖f‖² − 2 f·b + ‖b‖², then a min over the bank, which TensorRT runs as a GEMM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

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
from .dinov2_knn_bank import coreset_seconds, fit_bank, squared_distances
from .layers import GaussianBlur, ImageScore, Normalize

FAMILY = "dinov2-knn"
CHOOSABLE = ("layers", "k", "sigma", "score")  # chosen on validation unless the command gives them


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
    # settings `fit` chooses on validation (dinov2_knn_select.py): by default those of CHOOSABLE the config does not set
    choose: tuple[str, ...] | None = None

    @classmethod
    def from_dict(cls, d: dict) -> DinoKNNConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        if d.get("choose") is None:
            d["choose"] = tuple(k for k in CHOOSABLE if d.get(k) is None)
        d["choose"] = tuple(d["choose"])
        unknown = set(d["choose"]) - set(CHOOSABLE)
        if unknown:
            raise LinesideError(f"dinov2-knn cannot choose {', '.join(sorted(unknown))} on validation: only "
                                f"{', '.join(CHOOSABLE)}")
        config = cls(**d)
        if config.coreset not in ("greedy", "random"):
            raise LinesideError(f"coreset {config.coreset!r}: choose greedy or random")
        return config


class DinoKNNDetector(nn.Module):
    def __init__(self, config: DinoKNNConfig, spec: InputSpec):
        super().__init__()
        self.config, self.spec = config, spec
        self.grid = (spec.height // 14, spec.width // 14)  # the patch grid: one feature per 14×14 patch
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
        d2 = squared_distances(self.features(image), self.bank, self.bank_sq)
        if self.config.k == 1:
            nearest = d2.amin(dim=-1)
        else:
            nearest = (-d2).topk(self.config.k, dim=-1).values.neg().mean(-1)
        amap = self.smooth(self.upsample(nearest))
        return amap, self.image_score(amap)

    def upsample(self, nearest: torch.Tensor) -> torch.Tensor:
        """N×L squared neighbour distances on the patch grid → N×1×H×W distance map (before smoothing)."""
        amap = nearest.clamp_min(0).sqrt().reshape(-1, 1, *self.grid)
        return F.interpolate(amap, size=(self.spec.height, self.spec.width), mode="bilinear", align_corners=False)

    def use_settings(self, layers: tuple[int, ...], k: int, sigma: float, score: str, bank: torch.Tensor) -> None:
        """Take other settings and their bank in place (what validation chose); blocks past the last layer used
        are skipped by the graph."""
        self.config = replace(self.config, layers=tuple(layers), k=int(k), sigma=float(sigma), score=score)
        self.layers = check_layers(self.backbone, self.config.layers)
        self.set_bank(bank)
        self.smooth = GaussianBlur(self.config.sigma).to(bank.device)
        self.image_score = ImageScore(self.config.score, self.spec.height * self.spec.width)


def build(config: dict, spec: InputSpec) -> DinoKNNDetector:
    return DinoKNNDetector(DinoKNNConfig.from_dict(config), spec).eval()


def load_weights(model: DinoKNNDetector, path) -> dict:
    return load_dinov2_weights(model.backbone, path)


def fit_overhead_seconds(model, images: int) -> float:
    """Beyond one forward pass per training image (what `train auto` times): the greedy coreset of each block
    set's bank, which on a CPU can cost more than the pass (ELPV, 905 images at 224 px: 3 banks of 4096 of 231,680
    patch features)."""
    from .dinov2_knn_select import candidate_grid

    rows = min(model.config.shots or images, images) * model.grid[0] * model.grid[1]
    banks = len({key[0] for key in candidate_grid(model)})
    return coreset_seconds(model.config, rows, model.bank.shape[1], banks)


def fit(model, context) -> dict:
    """Fit on the backbone features ``--features`` picks (random, learned on the station, or a file), choosing
    the settings ``config.choose`` leaves open on validation (dinov2_knn_select.py). With ``--features station``
    the random and learned backbones are compared at the default settings, then the settings are chosen on the
    kept one."""
    from ..features import fit_with_features
    from .dinov2_knn_select import fit_choosing

    if (context.options.get("features") or "random") != "station":
        return fit_with_features(model, context, fit_choosing)
    record = fit_with_features(model, context, fit_bank)
    chosen = fit_choosing(model, context)
    return {**record, **chosen, "features": record["features"]}
