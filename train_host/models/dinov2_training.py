"""Training the dinov2-lora detector: synthetic anomalies, the confidence-weighted loss, LoRA and its merge.

The loss is AnomalyVFM's: each pixel's error L_base (binary cross-entropy of the anomaly
logit against the synthetic mask) is weighted by a predicted confidence C = 1 + exp(c),
and −α·log C keeps the model from buying a low loss by declaring everything uncertain
(the optimum is C = α / L_base: confident where it is right). A focal loss on the image
score (the map's max or top-k mean) adds an image-level signal.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edge_infer.errors import LinesideError

from ..synth import synthesize_set
from .dinov2_adapters import LoRAAdapter, lora_settings

CACHE_LIMIT_BYTES = 2 << 30  # cache frozen-backbone tokens only below this size
MERGE_TOLERANCE = 1e-4
SHARE_NOTE = 0.01  # adapters above this share of the backbone get a note in the log (not an error)


@dataclass
class SegData:
    images: torch.Tensor  # uint8 N×C×H×W
    masks: torch.Tensor  # float N×1×H×W
    labels: torch.Tensor  # float N (1 = has a synthetic anomaly)

    def __len__(self) -> int:
        return len(self.labels)


def confidence_weighted_loss(logit, conf, mask, alpha: float) -> torch.Tensor:
    base = F.binary_cross_entropy_with_logits(logit, mask, reduction="none")
    confidence = 1 + torch.exp(conf.clamp(max=15))  # the clamp only guards exp against overflow
    return (base * confidence - alpha * torch.log(confidence)).mean()


def focal_loss(logit, target, gamma: float) -> torch.Tensor:
    ce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
    p = torch.sigmoid(logit)
    p_true = p * target + (1 - p) * (1 - target)
    return (ce * (1 - p_true) ** gamma).mean()


def step_loss(model, tokens, masks, labels) -> torch.Tensor:
    logit, conf = model.head_logits(tokens)
    image_logit = model.image_score(logit)
    cfg = model.config
    return confidence_weighted_loss(logit, conf, masks, cfg.confidence_alpha) + focal_loss(
        image_logit, labels, cfg.focal_gamma)


# ---------------------------------------------------------------- data


def read_images(context, samples) -> list[np.ndarray]:
    images = []
    for batch in context.loader(samples, shuffle=False, on_device=False):  # synthesis is NumPy work
        images.extend(batch["image"].numpy())
    return images


def station_goods(context, part: str) -> list[list[np.ndarray]]:
    """The split's ``part`` ("train" or "val") read as images, one list per station (one station: one list)."""
    from ..data.stations import station_slices

    samples = getattr(context.split, part)
    return [read_images(context, samples[where]) if samples[where] else []
            for where in station_slices(context.split.info, part, len(samples))]


def stations_seg_data(groups: list[list[np.ndarray]], per_kind: int, kinds, seed: int) -> SegData:
    """``seg_data`` per station, concatenated: contextual patches come from the same station, and
    every station gets ``per_kind`` of each kind. The first station's seed is ``seed`` itself."""
    parts = [seg_data(goods, per_kind, kinds, seed + 101 * k) for k, goods in enumerate(groups)]
    return SegData(*(torch.cat([getattr(d, f) for d in parts]) for f in ("images", "masks", "labels")))


def seg_data(goods: list[np.ndarray], per_kind: int, kinds, seed: int, donors_from=None) -> SegData:
    """Synthetic anomalies from ``goods`` and as many good images, seeded; masks are exact."""
    synth = synthesize_set(goods, per_kind=per_kind, kinds=kinds, seed=seed)
    rng = np.random.default_rng([seed, 7])
    plain = [goods[i] for i in rng.permutation(len(goods))[: len(synth)]]
    images = np.stack([s.image for s in synth] + plain)
    h, w = images.shape[-2:]
    masks = np.concatenate([np.stack([s.mask for s in synth]), np.zeros((len(plain), h, w), bool)])
    labels = np.array([1.0] * len(synth) + [0.0] * len(plain), np.float32)
    return SegData(torch.from_numpy(images), torch.from_numpy(masks[:, None].astype(np.float32)),
                   torch.from_numpy(labels))


# ---------------------------------------------------------------- loops


def train_head(model, data: SegData, epochs: int, batch_size: int, seed: int, log, params=None,
               frozen: bool = True, desc: str = "", hardware=None) -> float:
    """AdamW over the head (and ``params``, e.g. LoRA's); frozen backbones get their tokens cached.
    The images stay on the CPU and each batch goes to the model's device; ``hardware`` brings autocast."""
    from ..context import cpu_hardware
    from ..device import model_device, step

    hardware = hardware or cpu_hardware()
    device, scaler = model_device(model), hardware.scaler()
    cfg = model.config
    cached = cache_tokens(model, data.images, batch_size) if frozen else None
    groups = [{"params": list(model.head.parameters()), "lr": cfg.head_lr}]
    if params:
        groups.append({"params": list(params), "lr": cfg.lr})
    optimiser = torch.optim.AdamW(groups)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    loss_value = float("nan")
    for epoch in range(epochs):
        started, total, steps = time.perf_counter(), 0.0, 0
        for idx in torch.randperm(len(data), generator=generator).split(batch_size):
            images = data.images[idx].to(device, non_blocking=True)
            with hardware.autocast():
                if cached is not None:
                    tokens = cached[idx.to(cached.device)]
                elif frozen:
                    with torch.no_grad():
                        tokens = model.tokens(images)
                else:
                    tokens = model.tokens(images)
                loss = step_loss(model, tokens, data.masks[idx].to(device), data.labels[idx].to(device))
            step(loss.float(), optimiser, scaler)
            total, steps = total + loss.item(), steps + 1
        loss_value = total / max(steps, 1)
        log(f"{desc}: epoch {epoch + 1}/{epochs} loss {loss_value:.4f} ({time.perf_counter() - started:.0f} s)")
    model.eval()
    return loss_value


@torch.no_grad()
def cache_tokens(model, images: torch.Tensor, batch_size: int) -> torch.Tensor | None:
    from ..device import model_device

    model.eval()
    device = model_device(model)  # the cache is built, and kept, on the model's device
    first = model.tokens(images[:1].to(device))
    if first.numel() * 4 * len(images) > CACHE_LIMIT_BYTES:
        return None
    return torch.cat([model.tokens(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def validate(model, data: SegData, batch_size: int) -> dict:
    """Image and pixel AUROC on held-out good images and synthetic anomalies; ``select`` is their mean."""
    from sklearn.metrics import roc_auc_score

    from ..device import model_device

    model.eval()
    device = model_device(model)
    maps, scores = [], []
    for i in range(0, len(data), batch_size):
        amap, score = model(data.images[i:i + batch_size].to(device))
        maps.append(amap.float().cpu())
        scores.append(score.float().cpu())
    maps, scores = torch.cat(maps), torch.cat(scores)
    image = float(roc_auc_score(data.labels.numpy(), scores.numpy()))
    pixel = float(roc_auc_score(data.masks.flatten().numpy() > 0.5, maps.flatten().numpy()))
    return {"image_auroc": round(image, 4), "pixel_auroc": round(pixel, 4), "select": round((image + pixel) / 2, 4)}


# ---------------------------------------------------------------- the whole fit


def fit_segmentation(model, context) -> dict:
    cfg, log = model.config, context.log
    batch_size = int(context.options.get("batch_size", 16))
    train_groups, val_groups = station_goods(context, "train"), station_goods(context, "val")
    if min(len(g) for g in train_groups) < 2:
        raise LinesideError(f"dinov2-lora needs at least two good training images per station, found "
                            f"{[len(g) for g in train_groups]}")
    train = stations_seg_data(train_groups, cfg.per_kind, cfg.kinds, cfg.seed)
    # held-out synthetic anomalies from each station's validation images (its training images if it has too few)
    own_val = all(len(g) >= 2 for g in val_groups)
    val_source = "validation split" if own_val else "training images (no validation split)"
    val = stations_seg_data(val_groups if own_val else train_groups, max(2, cfg.per_kind // 3), cfg.kinds,
                            cfg.seed + 1)
    goods = [im for group in train_groups for im in group]
    val_goods = [im for group in val_groups for im in group] if own_val else []
    stations = f" over {len(train_groups)} stations" if len(train_groups) > 1 else ""
    log(f"dinov2-lora: {len(train)} training images ({int(train.labels.sum())} synthetic anomalies){stations}, "
        f"{len(val)} validation images from the {val_source}")
    record = {"train_images": len(train), "synthetic_anomalies": int(train.labels.sum()),
              "epochs": cfg.epochs,
              # the images its own selection used (the shared validation, train_host/validation.py, is "validation")
              "lora_validation": {"images": len(val), "source": val_source}}
    if len(train_groups) > 1:
        record["stations"] = {"count": len(train_groups), "good_images": [len(g) for g in train_groups],
                              "validation_good_images": [len(g) for g in val_groups]}
    initial = copy.deepcopy(model.state_dict())
    results = {}

    if cfg.adapt in ("baseline", "best"):
        started = time.perf_counter()
        train_head(model, train, cfg.epochs, batch_size, cfg.seed, log, desc="baseline (frozen backbone)",
                   hardware=context.hardware)
        results["baseline"] = {**validate(model, val, batch_size), "seconds": round(time.perf_counter() - started, 1)}
        log(f"baseline: validation {results['baseline']}")
        baseline_state = copy.deepcopy(model.state_dict())
        if cfg.adapt == "best":  # LoRA starts from the same untrained head
            model.load_state_dict(initial)

    if cfg.adapt in ("lora", "best"):
        rank = choose_rank(model, train, val, batch_size, log, record, context.hardware) if cfg.rank == "auto" \
            else None
        rank, alpha, targets = lora_settings(cfg, rank)
        started = time.perf_counter()
        adapter = LoRAAdapter(model, rank, alpha, targets, seed=cfg.seed)
        report = adapter.report()
        log(f"LoRA rank {rank}, alpha {alpha:g}: {report['lora_parameters']:,} trainable parameters "
            f"= {100 * report['share_of_backbone']:.2f}% of the backbone's {report['backbone_parameters']:,}")
        if report["share_of_backbone"] > SHARE_NOTE:
            log(f"note: these adapters are {100 * report['share_of_backbone']:.2f}% of the {cfg.backbone} backbone, "
                f"over the {100 * SHARE_NOTE:g}% the default aims for (vitb14 at rank 16: 0.69%)")
        train_head(model, train, cfg.epochs, batch_size, cfg.seed, log, params=adapter.parameters(),
                   frozen=False, desc=f"LoRA r{rank}", hardware=context.hardware)
        record["merge_check"] = merge_checked(model, adapter, real_images(val, val_goods, goods))
        results["lora"] = {**validate(model, val, batch_size), "seconds": round(time.perf_counter() - started, 1),
                           **report}
        log(f"LoRA: validation {results['lora']}; merged (max relative difference "
            f"{record['merge_check']['max_relative_error']:.1e})")

    kept = cfg.adapt if cfg.adapt != "best" else max(results, key=lambda k: results[k]["select"])
    if kept == "baseline" and "lora" in results:
        model.load_state_dict(baseline_state)  # the merged LoRA model has the same keys as the baseline
    if cfg.adapt == "best":
        log(f"kept {kept}: validation {results[kept]['select']} vs "
            f"{results['lora' if kept == 'baseline' else 'baseline']['select']}")
    record.update(kept=kept, results=results)
    if kept == "lora":
        record.update(rank=results["lora"]["rank"], alpha=results["lora"]["alpha"])
    return record


def choose_rank(model, train: SegData, val: SegData, batch_size: int, log, record: dict, hardware=None) -> int:
    """Adaptive rank: a short training per candidate rank on a copy of the model; best validation wins."""
    cfg, sweep = model.config, {}
    for rank in cfg.ranks:
        trial = copy.deepcopy(model)
        r, alpha, targets = lora_settings(cfg, rank)
        adapter = LoRAAdapter(trial, r, alpha, targets, seed=cfg.seed)
        train_head(trial, train, cfg.sweep_epochs, batch_size, cfg.seed, log, params=adapter.parameters(),
                   frozen=False, desc=f"rank sweep r{rank}", hardware=hardware)
        sweep[rank] = validate(trial, val, batch_size)["select"]
    best = max(sweep, key=sweep.get)
    log(f"rank sweep ({cfg.sweep_epochs} epochs each): {sweep} → rank {best}")
    record["rank_sweep"] = {str(k): v for k, v in sweep.items()}
    return best


def real_images(val: SegData, val_goods: list, goods: list) -> torch.Tensor:
    """Real good images, plus a few synthetic ones so the check also covers anomalous inputs."""
    real = np.stack((val_goods or goods)[:8])
    return torch.cat([torch.from_numpy(real), val.images[:4]])


@torch.no_grad()
def merge_checked(model, adapter, images: torch.Tensor) -> dict:
    """Merge the adapters, and prove the merged model scores ``images`` as the adapted one did."""
    from edge_infer.backends.base import relative_error

    from ..device import model_device

    model.eval()
    images = images.to(model_device(model))
    adapted_map, adapted_score = (t.cpu() for t in model(images))
    adapter.merge()
    merged_map, merged_score = (t.cpu() for t in model(images))
    if any("lora_" in k for k in model.state_dict()):
        raise LinesideError("LoRA adapters are still in the model after merging: report this with the run")
    worst = max(relative_error(merged_map.numpy(), adapted_map.numpy()),
                relative_error(merged_score.numpy(), adapted_score.numpy()))
    if not worst <= MERGE_TOLERANCE:
        raise LinesideError(f"the merged model differs from the adapted one by {worst:.2e} (relative) on real "
                            f"images, over {MERGE_TOLERANCE:g}: the run is not saved; report this")
    return {"images": len(images), "max_relative_error": worst, "tolerance": MERGE_TOLERANCE}
