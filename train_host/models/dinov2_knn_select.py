"""dinov2-knn's settings chosen on validation: the blocks, the neighbours K, the map smoothing and the image score.

As rx does (rx_select.py): the settings the command did not give (``DinoKNNConfig.choose``)
are tried over a small grid on the shared validation set (`train_host.validation`; never the
test split), and a setting other than the default is kept only if it beats the default by more
than ``validation.TOLERANCE`` and in most paired bootstrap
resamples of the validation images (``validation.CONFIDENCE``). The training images go through the backbone once, at the
default blocks: a block subset's features are columns of those (patch tokens are concatenated
block by block, and the local averaging acts per column), so each block set only adds its own
coreset selection. Per validation batch and block set the distances to the bank are one
matrix product; every K reads its K nearest from one top-k, every (sigma, score) the same map.
The model then takes the kept setting and its bank in place, so the saved run and the exported
graph score as the candidate did.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict

import torch

from edge_infer.errors import LinesideError

from ..validation import build_validation, choice_record, choose_on
from .dinov2_knn_bank import fit_bank, select_bank, squared_distances, training_features
from .layers import GaussianBlur, ImageScore

NAMES = ("layers", "k", "sigma", "score")  # a candidate's key, in this order
CANDIDATES = {"k": (1, 3, 9), "sigma": (2.0, 4.0, 8.0), "score": ("max", "topk:0.01")}


def candidate_grid(model) -> list[tuple]:
    """Every (layers, k, sigma, score) to try, the model's own (the default) first. Block sets: the built
    blocks together, then each alone. A setting the command gave is held."""
    config = model.config
    own = {"layers": model.layers, "k": config.k, "sigma": config.sigma, "score": config.score}
    candidates = {**CANDIDATES, "layers": [(layer,) for layer in model.layers] if len(model.layers) > 1 else []}

    def values(name):
        if name not in config.choose:
            return [own[name]]
        return [own[name]] + [v for v in candidates[name] if v != own[name]]

    return list(itertools.product(*(values(name) for name in NAMES)))


@torch.no_grad()
def fit_choosing(model, context, validation=None) -> dict:
    """Build each block set's bank from one pass of features, score every candidate on ``validation`` (default:
    the shared one of ``context``'s split), keep the best (see the module)."""
    from .rx_select import trained_on

    grid = candidate_grid(model)
    if len(grid) == 1:
        record = fit_bank(model, context)
        return {**record, "settings": {"method": "given", "chosen": named(grid[0])}}
    try:
        validation = validation or build_validation(context, trained_on(context))
    except LinesideError as exc:  # no held-out good images: the defaults, said so
        context.log(f"dinov2-knn: settings keep their defaults: {exc}")
        record = fit_bank(model, context)
        return {**record, "settings": {"method": f"defaults (no validation: {exc})", "chosen": named(grid[0])}}
    feats, images = training_features(model, context)
    block_sets = list(dict.fromkeys(key[0] for key in grid))
    banks = {blocks: select_bank(feats[:, columns(model, blocks)], model.config) for blocks in block_sets}
    context.log(f"dinov2-knn: {len(block_sets)} banks of {len(banks[block_sets[0]])} of {len(feats)} patch features "
                f"({model.config.coreset} coreset) from {images} good images")
    patch_features = len(feats)
    del feats
    rows = min(len(bank) for bank in banks.values())
    grid = [key for key in grid if key[1] <= rows] or [grid[0][:1] + (1,) + grid[0][2:]]  # K within the bank
    scores = validation_scores(model, validation.images, banks, grid, context)
    kept, results, checked = choose_on(validation, scores, grid[0], int(context.options.get("seed", 0)))
    for key in grid:
        context.log(f"dinov2-knn: validation {describe(key)}: validation AUROC {results[key]['validation_auroc']:.4f}")
    model.use_settings(*kept, bank=banks[kept[0]])
    final = validation.evaluate(model, int(context.options.get("batch_size") or 16))  # the model as saved
    context.log(f"dinov2-knn: chose {describe(kept)} (validation AUROC {final['validation_auroc']:.4f}; default "
                f"{results[grid[0]]['validation_auroc']:.4f}) on {validation.signal}")
    return {"images": images, "patch_features": patch_features, "bank_rows": model.config.bank_rows,
            "config": asdict(model.config), "settings": choice_record(results, grid[0], kept, validation, NAMES, checked),
            "validation_signal": validation.signal,
            "validation_used_for": "choosing the blocks, neighbours K, map smoothing and image score "
                                   "(validation image AUROC)",
            **validation.record(final)}


def named(key) -> dict:
    return {name: list(v) if isinstance(v, tuple) else v for name, v in zip(NAMES, key)}


def describe(key) -> str:
    layers, k, sigma, score = key
    return f"layers={','.join(map(str, layers))} k={k} sigma={sigma:g} score={score}"


def columns(model, blocks: tuple[int, ...]) -> torch.Tensor:
    """The feature columns of ``blocks`` among the built blocks' concatenated patch tokens."""
    width = model.backbone.embed_dim
    index = [model.layers.index(block) for block in blocks]
    return torch.cat([torch.arange(i * width, (i + 1) * width) for i in index])


def validation_scores(model, images: torch.Tensor, banks: dict, grid, context) -> dict:
    """Every candidate's image scores of the validation images: one backbone pass per batch; per block set one
    matrix product with its bank; per K its mean of the K nearest; per (sigma, score) its smoothing and score."""

    device = model.bank.device
    area = model.spec.height * model.spec.width
    blurs = {s: GaussianBlur(s).to(device) for s in dict.fromkeys(key[2] for key in grid)}
    rules = {r: ImageScore(r, area) for r in dict.fromkeys(key[3] for key in grid)}
    ks = sorted({key[1] for key in grid})
    out = {key: [] for key in grid}
    batch = int(context.options.get("batch_size") or 16)
    for start in range(0, len(images), batch):
        feats = model.features(images[start:start + batch].to(device))
        for blocks, bank in banks.items():
            sub = feats[..., columns(model, blocks).to(device)]
            d2 = squared_distances(sub, bank, bank.pow(2).sum(1))
            nearest = (-d2).topk(max(ks), dim=-1).values.neg()  # ascending: the K nearest are the first K
            for k in ks:
                raw = model.upsample(nearest[..., :k].mean(-1))
                for sigma in blurs:
                    smooth = blurs[sigma](raw)
                    for rule in rules:
                        if (blocks, k, sigma, rule) in out:
                            out[blocks, k, sigma, rule].append(rules[rule](smooth).float().cpu())
    return {key: torch.cat(parts).numpy() for key, parts in out.items()}

