"""A compact noise-prediction UNet in plain torch (no diffusers), small enough for an edge device.

Residual blocks with GroupNorm and SiLU, the timestep added as a per-channel shift, strided
convolutions down and nearest-neighbour upsampling up, skip connections concatenated. No
attention: every op is a convolution, a norm or an elementwise op, so the graph exports to
ONNX cleanly and runs well under TensorRT. The timestep may be one value for the whole batch
(inference: a constant in the exported graph) or one per image (training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Presets by name: (base channels, channel multiplier per level, residual blocks per level).
# "nano" is the Jetson Orin Nano preset: ~0.2 M parameters, ~0.1 GFLOP per 64×64 pass.
PRESETS = {
    "tiny": (8, (1, 2, 4), 1),  # tests and CPU-starved studies: ~0.15 M parameters
    "nano": (16, (1, 2, 2), 1),
    "small": (32, (1, 2, 2), 1),
    "base": (64, (1, 2, 2, 4), 2),
}


@dataclass
class UNetConfig:
    in_channels: int = 1
    base: int = 16
    mults: tuple[int, ...] = (1, 2, 2)
    blocks: int = 1

    @classmethod
    def preset(cls, name: str, in_channels: int) -> "UNetConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown UNet preset {name!r}: choose one of {', '.join(PRESETS)}")
        base, mults, blocks = PRESETS[name]
        return cls(in_channels, base, mults, blocks)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of timesteps (any shape (B,) or (1,)) → B×dim."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int):
        super().__init__()
        self.norm1, self.conv1 = norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time = nn.Linear(t_dim, c_out)
        self.norm2, self.conv2 = norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        base, chans = config.base, [config.base * m for m in config.mults]
        self.t_dim = base * 4
        self.time_mlp = nn.Sequential(nn.Linear(base, self.t_dim), nn.SiLU(), nn.Linear(self.t_dim, self.t_dim))
        self.stem = nn.Conv2d(config.in_channels, base, 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [base], base
        for level, c_out in enumerate(chans):
            blocks = nn.ModuleList()
            for _ in range(config.blocks):
                blocks.append(ResBlock(c, c_out, self.t_dim))
                c = c_out
                skips.append(c)
            self.down.append(blocks)
            last = level == len(chans) - 1
            self.downsample.append(nn.Identity() if last else nn.Conv2d(c, c, 3, stride=2, padding=1))
            if not last:
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, self.t_dim), ResBlock(c, c, self.t_dim)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, c_out in reversed(list(enumerate(chans))):
            blocks = nn.ModuleList()
            for _ in range(config.blocks + 1):
                blocks.append(ResBlock(c + skips.pop(), c_out, self.t_dim))
                c = c_out
            self.up.append(blocks)
            self.upsample.append(nn.Conv2d(c, c, 3, padding=1) if level > 0 else nn.Identity())
        self.out = nn.Sequential(norm(c), nn.SiLU(), nn.Conv2d(c, config.in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start by predicting zero noise: a stable first step
        nn.init.zeros_(self.out[-1].bias)

    @property
    def multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2 ** (len(self.config.mults) - 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(t, self.config.base))
        h = self.stem(x)
        hs = [h]
        for blocks, down in zip(self.down, self.downsample):
            for block in blocks:
                h = block(h, temb)
                hs.append(h)
            if not isinstance(down, nn.Identity):
                h = down(h)
                hs.append(h)
        for block in self.mid:
            h = block(h, temb)
        for blocks, up in zip(self.up, self.upsample):
            for block in blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), temb)
            if not isinstance(up, nn.Identity):
                h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(h)
