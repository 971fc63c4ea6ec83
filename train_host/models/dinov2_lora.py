"""dinov2-lora: a DINOv2 ViT adapted with LoRA on synthetic anomalies, merged back for the edge.

A light segmentation head reads the patch tokens of three blocks and predicts, per
patch, an anomaly logit and a confidence. Training (see `dinov2_training.py`) uses the
station's good images and synthetic anomalies made from them (`train_host.synth`), with
the confidence-weighted loss of AnomalyVFM. LoRA (peft) adapts the attention of every
block; after training the adapters are merged into the weights (``merge_and_unload``),
the merge is checked against the adapted model on real images, and what is saved and
exported is a plain ViT + head: no adapter op reaches the device.

``adapt``: "lora" (default), "baseline" (frozen backbone, head only) or "best" (train
both, keep whichever validates better on held-out synthetic anomalies; both results
are recorded, because LoRA does not help every station).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from .dinov2_adapters import PRESETS
from .dinov2_backbone import (
    DEFAULT_BACKBONE,
    build_vit,
    check_layers,
    default_layers,
    load_dinov2_weights,
    patch_tokens,
)
from .layers import GaussianBlur, ImageScore, Normalize, seeded

FAMILY = "dinov2-lora"

@dataclass
class DinoLoRAConfig:
    backbone: str = DEFAULT_BACKBONE
    depth: int | None = None  # keep only this many blocks (tests, quick experiments)
    layers: tuple[int, ...] | None = None  # blocks the head reads; default: three in the second half
    head_dim: int = 128
    adapt: str = "lora"  # lora | baseline | best
    preset: str = "default"  # default | anomalyvfm
    rank: str = ""  # "" → the preset's; a number; or "auto" (validation sweep over `ranks`)
    alpha: float | None = None  # LoRA alpha; default: the preset's (scaled with the rank)
    ranks: tuple[int, ...] = (4, 16, 64)
    sweep_epochs: int = 2
    epochs: int = 10
    lr: float = 1e-4  # AdamW, for the LoRA adapters
    head_lr: float = 1e-3  # the freshly initialised head learns faster than adapters should move
    confidence_alpha: float = 1.0  # α in L = L_base·C − α·log C
    focal_gamma: float = 2.0
    per_kind: int = 30  # synthetic anomalies of each kind
    kinds: tuple[str, ...] = ("texture", "structural", "contextual", "cutpaste")
    score: str = "max"  # or "topk:0.01"
    sigma: float = 2.0
    seed: int = 0
    zero_shot: bool = False
    adapted: dict = field(default_factory=dict)  # what fit chose (filled in by training)

    @classmethod
    def from_dict(cls, d: dict) -> DinoLoRAConfig:
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("layers", "ranks", "kinds"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        config = cls(**d)
        if config.adapt not in ("lora", "baseline", "best"):
            raise LinesideError(f"adapt {config.adapt!r}: choose lora, baseline or best")
        config.rank = str(config.rank)
        if config.rank not in ("", "auto") and not (config.rank.isdigit() and int(config.rank) > 0):
            raise LinesideError(f"LoRA rank {config.rank!r}: give a positive whole number or 'auto'")
        if config.preset not in PRESETS:
            raise LinesideError(f"LoRA preset {config.preset!r}: choose one of {', '.join(PRESETS)}")
        return config


class SegHead(nn.Module):
    """Multi-layer patch tokens → per-patch anomaly logit and confidence logit c."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_dim, dim, 1), nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1), nn.GELU(),
            nn.Conv2d(dim, 2, 1),
        )

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(tokens)
        return out[:, :1], out[:, 1:]


class DinoSegDetector(nn.Module):
    def __init__(self, config: DinoLoRAConfig, spec: InputSpec):
        super().__init__()
        self.config, self.spec = config, spec
        self.normalize = Normalize()
        self.backbone = build_vit(config.backbone, spec.height, spec.width, config.depth, config.seed)
        depth = len(self.backbone.blocks)
        self.layers = check_layers(self.backbone, config.layers or default_layers(depth, 3))
        with seeded(config.seed + 1):  # reproducible random init, global generator untouched
            self.head = SegHead(self.backbone.embed_dim * len(self.layers), config.head_dim)
        self.smooth = GaussianBlur(config.sigma)
        self.image_score = ImageScore(config.score, spec.height * spec.width)

    def tokens(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 images → the chosen blocks' patch tokens, concatenated: N×(D·layers)×h×w."""
        return torch.cat(patch_tokens(self.backbone, self.normalize(image), self.layers), dim=1)

    def head_logits(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Anomaly and confidence logits at input resolution, N×1×H×W each."""
        logit, conf = self.head(tokens)
        size = (self.spec.height, self.spec.width)
        return (F.interpolate(logit, size=size, mode="bilinear", align_corners=False),
                F.interpolate(conf, size=size, mode="bilinear", align_corners=False))

    def maps_from_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit, _ = self.head_logits(tokens)
        amap = self.smooth(torch.sigmoid(logit))
        return amap, self.image_score(amap)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.maps_from_tokens(self.tokens(image))


# ---------------------------------------------------------------- family interface


def build(config: dict, spec: InputSpec) -> DinoSegDetector:
    return DinoSegDetector(DinoLoRAConfig.from_dict(config), spec).eval()


def load_weights(model: DinoSegDetector, path) -> dict:
    return load_dinov2_weights(model.backbone, path)


def trains_on(config: DinoLoRAConfig) -> tuple[str, ...]:
    """The synthetic kinds the head and adapters train on: validation leaves them out."""
    return tuple(config.kinds)


def fit(model: DinoSegDetector, context) -> dict:
    from .dinov2_training import fit_segmentation

    if context.hardware.world_size > 1:
        raise LinesideError("dinov2-lora under torchrun is not supported yet: its LoRA and head training run in one "
                            "process. Train it on one GPU (`lineside train dinov2-lora --device cuda`)")
    stations = len(context.split.info.get("stations", []))
    if model.config.zero_shot and stations < 2:
        raise LinesideError(f"zero-shot training needs the good images of two or more stations, got {stations}: "
                            "`lineside train dinov2-lora --zero-shot --data DIR1 --data DIR2 ...`")
    training = fit_segmentation(model, context)
    model.config.adapted = {k: training[k] for k in ("kept", "rank", "alpha") if k in training}
    training["config"] = asdict(model.config)
    return training
