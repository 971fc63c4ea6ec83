"""draem: a reconstructive and a discriminative network trained together on synthetic anomalies.

Zavrtanik et al., DRAEM (ICCV 2021). The reconstructive network (an encoder–decoder
without skip connections, so it cannot copy a defect through) learns to turn an image with
a Perlin-textured anomaly back into the good image (L2 + SSIM). The discriminative U-Net
sees the image beside its reconstruction and segments where they disagree for a reason
(focal loss against the anomaly's mask). Nothing is pretrained and no texture set is needed:
the anomalies come from `train_host.synth.perlin_anomaly`. The anomaly map is the
discriminative network's probability; the image score is the max of its average-pooled
map (DRAEM's). Both networks live under ``backbone`` in one graph, so FP16/INT8 lower both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.preprocess import InputSpec

from .cutpaste import SegmentationNet, block
from .layers import Normalize, seeded

FAMILY = "draem"


@dataclass
class DraemConfig:
    base_channels: int = 16  # width of the first level of both networks; each level doubles it
    score_pool: float = 0.08  # average-pool window for the image score, as a share of the shorter side
    anomaly_share: float = 0.5  # share of training images that get an anomaly (DRAEM's)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> DraemConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class ReconstructiveNet(nn.Module):
    """Encoder–decoder without skips: 0..1 image → its reconstruction, through a 1/16 bottleneck."""

    def __init__(self, channels: int, base: int):
        super().__init__()
        widths = [base, 2 * base, 4 * base, 8 * base, 8 * base]
        self.encoder = nn.ModuleList()
        cin = channels
        for width in widths:
            self.encoder.append(block(cin, width))
            cin = width
        self.decoder = nn.ModuleList(block(widths[i + 1], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.out = nn.Conv2d(base, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for i, level in enumerate(self.encoder):
            sizes.append(x.shape[-2:])
            x = level(x if i == 0 else F.max_pool2d(x, 2))
        for level, size in zip(self.decoder, reversed(sizes[1:])):
            x = level(F.interpolate(x, size=size, mode="nearest"))
        return self.out(x)


class DraemNets(nn.Module):
    """Both networks: x → (reconstruction, discriminative features of [x, reconstruction])."""

    def __init__(self, channels: int, base: int):
        super().__init__()
        self.reconstructive = ReconstructiveNet(channels, base)
        self.discriminative = SegmentationNet(2 * channels, base, head=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec = self.reconstructive(x)
        return rec, self.discriminative(torch.cat([x, rec], 1))


class DraemDetector(nn.Module):
    def __init__(self, config: DraemConfig, spec: InputSpec):
        super().__init__()
        self.config = config
        self.spec = spec
        c = spec.channels
        self.to_unit = Normalize(mean=(0.0,) * c, std=(1.0,) * c, out_channels=c)  # uint8 → 0..1
        with seeded(config.seed):  # a run rebuilt from its config is the same model
            self.backbone = DraemNets(c, config.base_channels)  # `backbone`: what FP16/INT8 lower
            # The 1×1 defect-logit layer sits outside the backbone and stays FP32: INT8 ranges calibrated
            # on good images would clip exactly the high logits that mark a defect.
            self.head = nn.Conv2d(config.base_channels, 1, 1)
        # Start every pixel at a 1% defect probability (RetinaNet's prior): at 50% the focal loss spends
        # its first hundreds of steps just learning that almost nothing is a defect.
        nn.init.constant_(self.head.bias, -math.log(99.0))
        self.pool = max(1, round(config.score_pool * min(spec.height, spec.width))) // 2 * 2 + 1  # odd

    def outputs(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 or 0-255 float images → (reconstruction in 0..1 units, defect logits); training uses these."""
        rec, features = self.backbone(self.to_unit(image))
        return rec, self.head(features)

    def image_score(self, amap: torch.Tensor) -> torch.Tensor:
        pooled = F.avg_pool2d(amap, self.pool, stride=1, padding=self.pool // 2, count_include_pad=False)
        return pooled.flatten(1).amax(dim=1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        amap = torch.sigmoid(self.outputs(image)[1])
        return amap, self.image_score(amap)


def build(config: dict, spec: InputSpec) -> DraemDetector:
    return DraemDetector(DraemConfig.from_dict(config), spec).eval()


def trains_on(config: DraemConfig) -> tuple[str, ...]:
    """The synthetic kinds training sees (Perlin-masked procedural textures): validation leaves them out."""
    return ("texture",)


def fit(model: DraemDetector, context) -> dict:
    from .draem_training import train_draem

    return {**train_draem(model, context, trains_on(model.config)), "config": asdict(model.config)}
