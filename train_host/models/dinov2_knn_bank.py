"""dinov2-knn's memory bank: the training images' patch features, thinned to a coreset, and the
distances to it. Shared by the family (dinov2_knn.py) and its choice of settings on validation
(dinov2_knn_select.py), which builds one bank per block set."""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

from edge_infer.errors import LinesideError


def squared_distances(feats: torch.Tensor, bank: torch.Tensor, bank_sq: torch.Tensor) -> torch.Tensor:
    """N×L×d features → N×L×M squared distances to every bank feature, as one matrix product with the constant
    bank (‖f − b‖² = ‖f‖² − 2 f·b + ‖b‖²)."""
    return feats.pow(2).sum(-1, keepdim=True) - 2 * feats @ bank.T + bank_sq


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


def coreset_seconds(cfg, rows: int, dim: int, banks: int, probe_rows: int = 20_000, probe_steps: int = 32) -> float:
    """What ``banks`` greedy coresets of ``rows`` features cost here, in seconds: each of the ``bank_size`` steps
    measures every row in the projection, so a probe's time per (step, row) scales to the whole. 0 when nothing is
    thinned (a bank that holds every row, or the random coreset)."""
    size = min(cfg.bank_size, rows)
    if cfg.coreset != "greedy" or size == rows:
        return 0.0
    width = cfg.projection if cfg.projection and cfg.projection < dim else dim
    probe = torch.randn(min(rows, probe_rows), width, generator=torch.Generator().manual_seed(0))
    started = time.perf_counter()
    greedy_coreset(probe, probe_steps, 0, 0)  # already at the projection's width: no projection to time
    per_step_row = (time.perf_counter() - started) / (probe_steps * len(probe))
    return per_step_row * size * rows * banks


@torch.no_grad()
def training_features(model, context) -> tuple[torch.Tensor, int]:
    """(every patch feature of the good training images, M×d; images): each rank its share under torchrun,
    gathered in rank order, so every rank holds what a single process computes."""
    cfg = model.config
    samples = context.split.train
    if cfg.shots:
        import numpy as np

        pick = np.random.default_rng([cfg.seed, 11]).permutation(len(samples))[: cfg.shots]
        samples = [samples[i] for i in sorted(pick)]
    from ..distributed import gather_rows

    feats = [model.features(batch["image"]).flatten(0, 1)
             for batch in context.loader(samples, progress="dinov2-knn: features", shard=True)]
    feats = gather_rows(torch.cat(feats) if feats else model.bank[:0])
    if not len(feats):
        raise LinesideError("dinov2-knn found no readable good training image: check --data")
    return feats, len(feats) // (model.grid[0] * model.grid[1])


def select_bank(feats: torch.Tensor, cfg) -> torch.Tensor:
    """The memory bank: at most ``bank_size`` of the features, thinned by ``cfg.coreset``."""
    size = min(cfg.bank_size, len(feats))
    if size == len(feats):
        return feats
    if cfg.coreset == "greedy":
        index = greedy_coreset(feats, size, cfg.projection, cfg.seed).to(feats.device)
    else:
        index = torch.randperm(len(feats), generator=torch.Generator().manual_seed(cfg.seed))[:size].to(feats.device)
    return feats[index]


@torch.no_grad()
def fit_bank(model, context) -> dict:
    cfg = model.config
    feats, images = training_features(model, context)
    model.set_bank(select_bank(feats, cfg))
    size = cfg.bank_rows
    context.log(f"dinov2-knn: memory bank of {size} of {len(feats)} patch features ({cfg.coreset} coreset) "
                f"from {images} good images")
    return {"images": images, "patch_features": len(feats), "bank_rows": size, "config": asdict(cfg)}
