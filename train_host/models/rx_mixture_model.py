"""rx-mix's model: rx's backbone and features with K clusters' Gaussians in the head, and the per-image
choice among them that the exported graph makes (what the fit in rx_mixture.py produces and fills in)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from edge_infer.errors import LinesideError
from edge_infer.preprocess import InputSpec

from .rx import RXConfig, RXDetector

RULES = ("score", "nearest")  # how an image picks its cluster


@dataclass
class RXMixConfig(RXConfig):
    clusters: int = 0  # 0: choose among CHOICES on validation; the fitted run records the number chosen
    assign: str = "auto"  # "score", "nearest", or "auto": chosen on validation
    groups: str = ""  # a CSV "image,group": one cluster per group the station already knows (instead of k-means)

    @classmethod
    def from_dict(cls, d: dict) -> "RXMixConfig":
        # rx chooses its stages, smoothing and score on validation (rx_select.py); rx-mix chooses K and the
        # assignment at the settings it is given, so it leaves those to the command
        return super().from_dict({"choose": (), **d})


@dataclass
class Mixture:
    """What the graph holds for K clusters (CPU tensors)."""

    mean: torch.Tensor  # K×L×d
    whiten: torch.Tensor  # K×L×d×d
    offset: torch.Tensor  # K: each cluster's held-out good score mean (0 for K=1)
    scale: torch.Tensor  # K: and spread (1 for K=1)
    centroids: torch.Tensor  # K×d, in the z-scored descriptor space
    desc_mean: torch.Tensor  # d
    desc_scale: torch.Tensor  # d

    @property
    def clusters(self) -> int:
        return int(self.mean.shape[0])


class RXMixture(RXDetector):
    """rx's backbone and features; K clusters' Gaussians in the head, and a per-image choice among them."""

    def __init__(self, config: RXMixConfig, spec: InputSpec):
        super().__init__(config, spec)
        if config.assign not in ("auto", *RULES):
            raise LinesideError(f"--assign {config.assign!r}: use 'score' or 'nearest' (or leave it out: chosen on "
                                "validation)")
        if config.clusters < 0:
            raise LinesideError(f"--clusters {config.clusters}: give a positive number of clusters (or leave it out)")
        # what was asked for, kept apart from the config, which records what the fit chose
        self.requested = (config.clusters, config.assign)
        self.set_mixture(self.blank(max(1, config.clusters)))
        self.register_buffer("rule", torch.tensor(float(config.assign == "nearest")))  # the rule, saved with weights

    def features_shape(self) -> tuple[int, int]:
        """(locations L, channels d) of ``features``."""
        return self.grid[0] * self.grid[1], int(self.channels.numel())

    def blank(self, k: int) -> Mixture:
        locations, dim = self.features_shape()
        return Mixture(torch.zeros(k, locations, dim), torch.eye(dim).repeat(k, locations, 1, 1), torch.zeros(k),
                       torch.ones(k), torch.zeros(k, dim), torch.zeros(dim), torch.ones(dim))

    def set_mixture(self, mixture: Mixture, rule: str | None = None) -> None:
        """Replace the head's buffers (their shapes follow K) and, when given, the assignment rule."""
        device = self.channels.device
        for name in ("mean", "whiten", "offset", "scale", "centroids", "desc_mean", "desc_scale"):
            value = getattr(mixture, name).to(device, torch.float32)
            if name in self._buffers:
                self._buffers[name] = value
            else:
                self.register_buffer(name, value)
        self.config.clusters = mixture.clusters
        if rule is not None:
            self.config.assign = rule
            self.rule.fill_(float(rule == "nearest"))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Weights of any K (a run's, or a state kept while another K was tried): the buffers take its shapes."""
        if "mean" in state_dict and state_dict["mean"].shape[0] != self.clusters:
            self.set_mixture(self.blank(int(state_dict["mean"].shape[0])))
        result = super().load_state_dict(state_dict, strict, assign)
        self.config.clusters = self.clusters
        self.config.assign = RULES[int(self.rule.item())]
        return result

    @property
    def clusters(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.features(image))

    def head(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """N×L×d features → the chosen cluster's standardised map (N×1×H×W) and score (N)."""
        maps, scores = self.cluster_maps(feats)
        if self.clusters == 1:
            return maps, scores[:, 0]
        chosen = self.nearest(feats) if self.config.assign == "nearest" else scores.argmin(1)
        score = scores.gather(1, chosen[:, None])[:, 0]
        amap = maps.gather(1, chosen.view(-1, 1, 1, 1).expand(-1, 1, maps.shape[2], maps.shape[3]))
        return amap, score

    def cluster_maps(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every cluster's standardised map (N×K×H×W) and image score (N×K)."""
        n, locations, dim = feats.shape
        k = self.clusters
        centred = (feats.unsqueeze(0) - self.mean.unsqueeze(1)).transpose(1, 2)  # K×L×N×d
        z = torch.bmm(centred.reshape(k * locations, n, dim), self.whiten.reshape(k * locations, dim, dim))
        dist = z.pow(2).sum(-1).clamp_min(0).sqrt().reshape(k, locations, n).permute(2, 0, 1)  # N×K×L
        amap = dist.reshape(n * k, 1, *self.grid)
        amap = F.interpolate(amap, size=(self.spec.height, self.spec.width), mode="bilinear", align_corners=False)
        amap = self.smooth(amap)
        maps = (amap.reshape(n, k, self.spec.height, self.spec.width) - self.offset.view(1, k, 1, 1)) \
            / self.scale.view(1, k, 1, 1)
        scores = self.image_score(maps.reshape(n * k, 1, self.spec.height, self.spec.width)).reshape(n, k)
        return maps, scores

    def descriptor(self, feats: torch.Tensor) -> torch.Tensor:
        """The image-level descriptor clusters are made of: the kept channels averaged over the image (N×d)."""
        return feats.mean(1)

    def nearest(self, feats: torch.Tensor) -> torch.Tensor:
        z = (self.descriptor(feats) - self.desc_mean) / self.desc_scale
        return (z.unsqueeze(1) - self.centroids.unsqueeze(0)).pow(2).sum(-1).argmin(1)
