"""Small modules every detector's graph shares: input normalisation, smoothing, image score.

They sit inside the exported graph, so the device feeds uint8 pixels and gets raw scores.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@contextmanager
def seeded(seed: int):
    """Random draws inside are reproducible from ``seed``; the global generator is left as it was.

    Random-init backbones and heads use it, so a run rebuilt from its config is the same model.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        yield


class Normalize(nn.Module):
    """uint8 N×C×H×W → float, scaled by mean/std; one channel is repeated for RGB backbones."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD, out_channels: int = 3):
        super().__init__()
        self.out_channels = out_channels
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255.0))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.float()
        if x.shape[1] == 1 and self.out_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return (x - self.mean) * self.inv_std


class GaussianBlur(nn.Module):
    """Fixed separable Gaussian smoothing of a single-channel map (σ in pixels; 0 turns it off)."""

    def __init__(self, sigma: float):
        super().__init__()
        self.sigma = float(sigma)
        radius = max(1, math.ceil(3 * self.sigma)) if self.sigma > 0 else 0
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-(x**2) / (2 * self.sigma**2)) if self.sigma > 0 else torch.ones(1)
        self.register_buffer("kernel", (kernel / kernel.sum()).view(1, 1, 1, -1))
        self.radius = radius

    def forward(self, amap: torch.Tensor) -> torch.Tensor:
        if self.radius == 0:
            return amap
        amap = F.pad(amap, (self.radius, self.radius, 0, 0), mode="reflect")
        amap = F.conv2d(amap, self.kernel)
        amap = F.pad(amap, (0, 0, self.radius, self.radius), mode="reflect")
        return F.conv2d(amap, self.kernel.transpose(2, 3))


class ImageScore(nn.Module):
    """Image score from an anomaly map: its max, or the mean of its top share of pixels.

    ``"max"`` or ``"topk:0.01"`` (mean of the highest 1% of pixels), which is steadier
    than the max against a single noisy pixel.
    """

    def __init__(self, rule: str, map_pixels: int):
        super().__init__()
        self.rule = rule
        if rule == "max":
            self.k = 1
        elif rule.startswith("topk:"):
            self.k = max(1, int(round(float(rule[5:]) * map_pixels)))
        else:
            raise ValueError(f"unknown score rule {rule!r}: use 'max' or 'topk:FRACTION'")

    def forward(self, amap: torch.Tensor) -> torch.Tensor:
        flat = amap.flatten(1)
        if self.k == 1:
            return flat.amax(dim=1)
        return flat.topk(self.k, dim=1).values.mean(dim=1)
