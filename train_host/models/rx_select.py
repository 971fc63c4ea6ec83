"""rx's settings chosen on validation: the feature stages, the map smoothing and the image score.

The settings the command did not give (``RXConfig.choose``) are tried over a small grid
(``CANDIDATES``), every one on the shared validation set (`train_host.validation`: the
station's held-out good images against synthetic anomalies, plus ``--val-defects``; never the
test split). The training images go through the backbone once: each batch's stage maps feed
one moment accumulator per stage set, so three stage sets cost one backbone pass and three
sets of sums, not three fits. Smoothing and score act on the map, so each stage set's
validation maps are computed once and every (sigma, score) reads them. A setting other than
the default is kept only if it beats the default by more than ``validation.TOLERANCE`` and in most paired bootstrap
resamples of the validation images (``validation.CONFIDENCE``); the
model then takes the kept setting in place (``RXDetector.use_settings``), so the saved run,
and the graph exported from it, score exactly as the candidate did.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict

import numpy as np
import torch

from edge_infer.errors import LinesideError

from ..validation import build_validation, choice_record, choose_on
from .layers import GaussianBlur, ImageScore
from .rx_gaussians import MomentAccumulator, fit_gaussians, mahalanobis, patch_features, seeded_subset

NAMES = ("layers", "sigma", "score")  # a candidate's key, in this order
CANDIDATES = {"layers": ((1, 2, 3), (1, 2), (2, 3)), "sigma": (2.0, 4.0, 8.0), "score": ("max", "topk:0.01")}


def candidate_grid(config) -> list[tuple]:
    """Every (layers, sigma, score) to try, the config's own (the default) first. A setting the command gave
    is held; stage sets must be within the built backbone's stages and hold the grid's stage."""
    def values(name):
        own = getattr(config, name)
        if name not in config.choose:
            return [own]
        grid = [own] + [v for v in CANDIDATES[name] if v != own]
        if name == "layers":
            grid = [v for v in grid if set(v) <= set(config.layers) and config.grid_layer in v]
        return grid

    return list(itertools.product(*(values(name) for name in NAMES)))


def trained_on(context) -> tuple[str, ...]:
    """The synthetic kinds the backbone learned from: the station pretext's, with learned features; else none."""
    from ..features.pretext import KINDS

    return tuple(KINDS) if (context.options.get("features") or "random") != "random" else ()


@torch.no_grad()
def fit_choosing(model, context, validation=None) -> dict:
    """Fit every candidate's Gaussians in one pass, score them on ``validation`` (default: the shared one of
    ``context``'s split, `train_host.validation`), keep the best (see the module)."""

    grid = candidate_grid(model.config)
    if len(grid) == 1:
        record = fit_gaussians(model, context)
        return {**record, "settings": {"method": "given", "chosen": dict(zip(NAMES, grid[0]))}}
    try:
        validation = validation or build_validation(context, trained_on(context))
    except LinesideError as exc:  # no held-out good images: the defaults, said so
        context.log(f"rx: settings keep their defaults: {exc}")
        record = fit_gaussians(model, context)
        return {**record, "settings": {"method": f"defaults (no validation: {exc})", "chosen": dict(zip(NAMES, grid[0]))}}
    stage_sets = list(dict.fromkeys(key[0] for key in grid))
    gaussians, images, shrinkage = fit_stage_sets(model, context, stage_sets)
    scores = validation_scores(model, validation.images, stage_sets, gaussians, grid, context)
    kept, results, checked = choose_on(validation, scores, grid[0], int(context.options.get("seed", 0)))
    for key in grid:
        context.log(f"rx: validation layers={','.join(map(str, key[0]))} sigma={key[1]:g} score={key[2]}: "
                    f"validation AUROC {results[key]['validation_auroc']:.4f}")
    model.use_settings(*kept)
    mean, whiten = gaussians[kept[0]]
    model.mean.copy_(mean)
    model.whiten.copy_(whiten)
    final = validation.evaluate(model, int(context.options.get("batch_size") or 16))  # the model as saved
    context.log(f"rx: chose layers={','.join(map(str, kept[0]))} sigma={kept[1]:g} score={kept[2]} "
                f"(validation AUROC {final['validation_auroc']:.4f}; default {results[grid[0]]['validation_auroc']:.4f}) "
                f"on {validation.signal}")
    return {"images": images, "mean_shrinkage": shrinkage[kept[0]], "config": asdict(model.config),
            "settings": choice_record(results, grid[0], kept, validation, NAMES, checked),
            "validation_signal": validation.signal,
            "validation_used_for": "choosing the feature stages, map smoothing and image score (validation image AUROC)",
            **validation.record(final)}


def fit_stage_sets(model, context, stage_sets: list[tuple[int, ...]]) -> tuple[dict, int, dict]:
    """(stage set → (mean, whiten)), images fitted, (stage set → mean shrinkage): one streaming pass over the
    training images for all stage sets (each rank its share under torchrun; every set's sums combined)."""

    heads = {layers: stage_set(model, layers) for layers in stage_sets}
    accumulators = {layers: MomentAccumulator(model.mean.shape[0], len(heads[layers][1]), model.mean.device)
                    for layers in stage_sets}
    for batch in context.loader(context.split.train, progress="rx: fitting", shard=True):
        maps = model.stage_maps(batch["image"])
        for layers, (index, channels) in heads.items():
            accumulators[layers].add(patch_features([maps[i] for i in index], model.grid, channels))
    gaussians, shrinkage = {}, {}
    for layers, acc in accumulators.items():
        acc.combine()
        mean, whiten, weight = acc.gaussian(model.config.shrinkage)
        gaussians[layers] = (mean.to(model.mean.device), whiten.to(model.mean.device))
        shrinkage[layers] = round(weight, 4)
    images = next(iter(accumulators.values())).n
    context.log(f"rx: fitted {len(stage_sets)} stage sets' Gaussians ({model.mean.shape[0]} locations) on {images} "
                "images in one pass")
    return gaussians, images, shrinkage


def stage_set(model, layers: tuple[int, ...]) -> tuple[list[int], torch.Tensor]:
    """(positions of ``layers`` among the backbone's stages, the channels a model built with them keeps)."""

    index = [model.config.layers.index(layer) for layer in layers]
    total = sum(model.backbone.feature_info.channels()[i] for i in index)
    return index, seeded_subset(total, model.config).to(model.channels.device)


def validation_scores(model, images: torch.Tensor, stage_sets, gaussians: dict, grid, context) -> dict:
    """Every candidate's image scores of the validation images: one backbone pass per batch; per stage set one
    distance map; per (sigma, score) its smoothing and score of that map."""

    heads = {layers: stage_set(model, layers) for layers in stage_sets}
    area = model.spec.height * model.spec.width
    device = model.mean.device
    blurs = {s: GaussianBlur(s).to(device) for s in dict.fromkeys(key[1] for key in grid)}
    rules = {r: ImageScore(r, area) for r in dict.fromkeys(key[2] for key in grid)}
    out = {key: [] for key in grid}
    batch = int(context.options.get("batch_size") or 16)
    for start in range(0, len(images), batch):
        maps = model.stage_maps(images[start:start + batch].to(device))
        for layers, (index, channels) in heads.items():
            feats = patch_features([maps[i] for i in index], model.grid, channels)
            raw = model.upsample(mahalanobis(feats, *gaussians[layers]))
            for sigma in blurs:
                smooth = blurs[sigma](raw)
                for rule in rules:
                    if (layers, sigma, rule) in out:
                        out[layers, sigma, rule].append(rules[rule](smooth).float().cpu())
    return {key: torch.cat(parts).numpy() for key, parts in out.items()}
