"""cutpaste: a discriminative segmentation network trained from scratch on Cut&Paste defects.

DRAEM's discriminative half without its reconstruction network: an encoder–decoder sees
the image and outputs a per-pixel defect logit; the anomaly map is its sigmoid, lightly
smoothed, and the image score comes from the map. Nothing is pretrained. Training data are
the station's good images with defects synthesised by `cutpaste_synthesis` — fixed, or
learned bi-level by `cutpaste_bilevel` (``--learned-synthesis``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.preprocess import InputSpec

from .layers import GaussianBlur, ImageScore, Normalize, seeded

FAMILY = "cutpaste"


@dataclass
class CutPasteConfig:
    base_channels: int = 16  # width of the first level; each of the 4 levels doubles it
    score: str = "topk:0.01"  # mean of the top 1% of the map: steadier than the max
    sigma: float = 2.0  # smoothing of the anomaly map, in input pixels
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> "CutPasteConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class SegmentationNet(nn.Module):
    """A 4-level U-Net: normalised image → one defect logit per pixel."""

    def __init__(self, channels: int, base: int, head: bool = True):
        super().__init__()
        widths = [base, 2 * base, 4 * base, 8 * base]
        self.down = nn.ModuleList()
        cin = channels
        for width in widths:
            self.down.append(block(cin, width))
            cin = width
        self.up = nn.ModuleList(block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(3)))
        # head=False: the last level's features come out (base channels) for a caller's own head
        self.head = nn.Conv2d(base, 1, 1) if head else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, level in enumerate(self.down):
            x = level(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for level, skip in zip(self.up, reversed(skips[:-1])):
            x = level(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return self.head(x)


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class CutPasteDetector(nn.Module):
    def __init__(self, config: CutPasteConfig, spec: InputSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        c = spec.channels
        self.normalize = Normalize(mean=(0.5,) * c, std=(0.25,) * c, out_channels=c)
        with seeded(config.seed):  # reproducible random init, global generator untouched
            # named `backbone` so `lineside export --precision fp16,int8` can find the network
            self.backbone = SegmentationNet(c, config.base_channels)
        self.smooth = GaussianBlur(config.sigma)
        self.image_score = ImageScore(config.score, spec.height * spec.width)

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 or 0-255 float images → N×1×H×W defect logits (training uses these)."""
        return self.backbone(self.normalize(image))

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = self.smooth(torch.sigmoid(self.logits(image)))
        return amap, self.image_score(amap)


def build(config: dict, spec: InputSpec) -> CutPasteDetector:
    return CutPasteDetector(CutPasteConfig.from_dict(config), spec).eval()


def trains_on(config: CutPasteConfig) -> tuple[str, ...]:
    """Cut&Paste trains on patches of the station's own images: validation leaves those kinds out."""
    return ("cutpaste", "contextual")


def fit(model: CutPasteDetector, context) -> dict:
    """Train on synthetic defects; with ``learned_synthesis`` the synthesis is tuned bi-level."""
    from .cutpaste_bilevel import train_bilevel

    summary = train_bilevel(model, context, trains_on(model.config))
    return {**summary, "config": asdict(model.config)}
