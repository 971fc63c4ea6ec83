"""Bi-level training: the network learns from synthetic defects, the synthesis learns to help it.

Lower level: Adam steps on the segmentation network with focal + Dice loss on Cut&Paste
defects (synthesis held constant). Upper level (``learned_synthesis``), every few lower
steps: the hypergradient of a validation loss with respect to the synthesis parameters,
by **one-step truncated unrolling, second order** (DARTS's second-order approximation,
with the exact Hessian-vector product from autograd instead of DARTS's finite
difference): w' = w − ξ ∇_w L_train(w, φ), then ∇_φ L_val(w'). First-order DARTS would
give zero here — the validation loss does not depend on φ except through w'.

Validation signal of the upper level (`cutpaste_validation`): real labelled defects next to
held-out good images where the split has some (``--val-defects``), else a held-out synthetic
family different from Cut&Paste, so the upper level cannot make its own task easy. The epoch
kept is chosen on `train_host.validation` (good images vs the kinds cutpaste does not train on,
plus the real defects), as for every family.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call

from ..validation import build_validation as build_shared_validation
from .cutpaste_crops import load_defect_crops
from .cutpaste_synthesis import BRIGHTNESS, DEFECT, GAINS, CutPasteSynthesis
from .cutpaste_validation import ValidationSet, build_validation
from .segmentation_loss import focal_dice_loss


def train_bilevel(model, context, trained_on: tuple[str, ...]) -> dict:
    """The synthesis runs on the CPU (OpenCV and NumPy per image); the network trains on the device,
    under torchrun with DDP (each rank its slice of every synthesised global batch)."""
    from edge_infer.errors import LinesideError

    from ..device import step

    opts = context.options
    learned = bool(opts.get("learned_synthesis"))
    device = context.device
    if learned and context.hardware.world_size > 1:
        raise LinesideError("cutpaste --learned-synthesis under torchrun is not supported: its hypergradient "
                            "(an unrolled look-ahead of the whole network) is not split across processes. Train it "
                            "in one process (one GPU), or drop --learned-synthesis to train on several")
    epochs = int(opts.get("epochs") or 5)
    deadline = time.monotonic() + 60 * float(opts.get("max_minutes") or math.inf)
    upper_every = int(opts.get("upper_every") or 2)
    inner_lr = float(opts.get("inner_lr") or 0.01)
    crops = None
    if opts.get("defect_crops"):  # real defect crops: a third source the importance weights choose
        crops = load_defect_crops(opts["defect_crops"], context.spec, context.split, context.log)
        context.log(f"cutpaste: {len(crops.paths)} defect crops from {opts['defect_crops']}"
                    + (f" ({len(crops.skipped)} skipped)" if crops.skipped else ""))
    synth = CutPasteSynthesis(context.spec.channels, seed=int(opts.get("seed", 0)), crops=crops)
    vset = build_validation(context, int(opts.get("seed", 0))).to(device)
    context.log(f"cutpaste: validation signal: {vset.signal}")
    shared = build_shared_validation(context, trained_on, int(opts.get("seed", 0)))
    context.log(f"cutpaste: the epoch kept is chosen on {shared.signal}")
    preview = first_images(context, context.split.train, 8)
    synth_out = Path(opts["synth_out"]) if opts.get("synth_out") else None
    if synth_out:
        save_synthesis_pngs(synth, preview, vset, synth_out, "before")
    net_opt = torch.optim.Adam(model.parameters(), lr=float(opts.get("lr") or 1e-3))
    net, scaler = context.wrap(model.backbone), context.hardware.scaler()
    synth_opt = synthesis_optimizer(synth, opts)
    synth_lr, placement_lr = (g["lr"] for g in reversed(synth_opt.param_groups))
    steps, upper_steps, val_losses, losses, stopped = 0, 0, [], [], "epochs"
    epoch_aurocs, best = [], None  # the shared validation chooses the epoch kept: (result, epoch, state)
    for epoch in range(epochs):
        for batch in context.loader(context.split.train, shuffle=True, progress=f"cutpaste: epoch {epoch + 1}",
                                    keep=True, on_device=False):
            model.train()
            with torch.no_grad():
                x, m = (context.local(t).to(device, non_blocking=True) for t in synth(batch["image"]))
            with context.autocast():
                logits = net(model.normalize(x))
            loss = focal_dice_loss(logits.float(), m)
            step(loss, net_opt, scaler)
            losses.append(loss.item())
            steps += 1
            if learned and steps % upper_every == 0:
                val_losses.append(upper_step(model, synth, synth_opt, batch["image"], vset, inner_lr))
                upper_steps += 1
            if context.agree(time.monotonic() > deadline):
                stopped = "max_minutes"
                break
        result = shared.evaluate(model)
        auroc = result["validation_auroc"]
        epoch_aurocs.append(auroc)
        if best is None or auroc >= best[0]["validation_auroc"]:  # ties: the later, longer-trained epoch
            best = (result, epoch + 1, copy.deepcopy(model.state_dict()))
        context.log(f"cutpaste: epoch {epoch + 1}: mean loss {np.mean(losses[-50:]):.4f}"
                    + (f", validation (unrolled) {np.mean(val_losses[-20:]):.4f}" if val_losses else "")
                    + f", validation image AUROC {auroc:.4f}")
        if stopped == "max_minutes":
            break
    model.load_state_dict(best[2])
    model.eval()
    if synth_out:
        save_synthesis_pngs(synth, preview, vset, synth_out, "after")
        context.log(f"cutpaste: wrote synthesis samples and the placement map to {synth_out}")
    with torch.no_grad():
        val_loss = float(vset.loss(model, model.logits(vset.images)))
    return {
        "synthesis": "learned (bi-level)" if learned else "fixed (uniform placement and transforms)",
        "hypergradient": "one-step truncated unrolling, second order (exact Hessian-vector product)"
        if learned else None,
        "validation_signal": vset.signal,
        "validation_used_for": " and ".join(
            (["the upper level's hypergradient"] if learned else [])
            + ["choosing the epoch kept (validation image AUROC)"]),
        "synthesis_lr": {"transforms": synth_lr, "placement": placement_lr} if learned else None,
        "epochs_run": epoch + 1, "stopped_by": stopped, "lower_steps": steps, "upper_steps": upper_steps,
        "validation_auroc_per_epoch": epoch_aurocs,
        "epoch_kept": best[1], **shared.record(best[0]),
        "final_train_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
        "validation_loss": round(val_loss, 4),
        "transform_probabilities": synth.probabilities(),
        "defect_crops": {**crops.record(opts["defect_crops"]),
                         "source_weight": synth.probabilities()["source"][DEFECT]} if crops is not None else None,
        "polarity": polarity_summary(synth, preview),
        "placement": placement_summary(synth, preview),
    }


def synthesis_optimizer(synth, opts: dict) -> torch.optim.Adam:
    """Adam over the synthesis: transform weights at ``synth_lr``, the placement U-Net slower."""
    synth_lr = float(opts.get("synth_lr") or 0.05)
    # the placement U-Net gets a tenth: at 0.05 its bounded logits saturate within ~10 upper
    # steps (3·tanh at ±3 everywhere: exactly uniform, zero gradient), as on ELPV and random textures
    placement_lr = float(opts.get("placement_lr") or synth_lr / 10)
    return torch.optim.Adam([{"params": synth.placement.parameters(), "lr": placement_lr},
                             {"params": synth.logits.parameters()}], lr=synth_lr)


def upper_step(model, synth, synth_opt, images, vset: ValidationSet, inner_lr: float) -> float:
    """One hypergradient step on the synthesis; returns the unrolled validation loss."""
    seg = model.backbone  # the whole segmentation net; named so the precision export can find it
    params = dict(seg.named_parameters())
    buffers = {k: v.clone() for k, v in seg.named_buffers()}  # the look-ahead leaves BN statistics alone
    x, m = (t.to(model.normalize.mean.device) for t in synth(images))  # differentiable in the synthesis
    train_loss = focal_dice_loss(functional_call(seg, (params, buffers), (model.normalize(x),)), m)
    grads = torch.autograd.grad(train_loss, list(params.values()), create_graph=True)
    unrolled = {k: p - inner_lr * g for (k, p), g in zip(params.items(), grads)}
    val_loss = vset.loss(model, functional_call(seg, (unrolled, buffers), (model.normalize(vset.images),)))
    hyper = torch.autograd.grad(val_loss, list(synth.parameters()), allow_unused=True)
    synth_opt.zero_grad()
    for p, g in zip(synth.parameters(), hyper):
        p.grad = g
    synth_opt.step()
    return val_loss.item()


def first_images(context, samples, count: int) -> torch.Tensor:
    images = []
    for batch in context.loader(samples[:count], batch_size=count, on_device=False):
        images.append(batch["image"])
    return torch.cat(images) if images else torch.zeros(0, context.spec.channels, context.spec.height,
                                                         context.spec.width, dtype=torch.uint8)


@torch.no_grad()
def polarity_summary(synth, images: torch.Tensor, draws: int = 4) -> dict:
    """Whether the synthesis darkens or brightens: expected gain and shift, and measured change in masks."""
    probs = {k: synth.logits[k].detach().softmax(0) for k in ("gain", "brightness")}
    changes = []
    with torch.random.fork_rng():  # leave the training draws alone
        torch.manual_seed(1)
        state, share = synth.rng.bit_generator.state, synth.defect_share
        synth.defect_share = 1.0
        for _ in range(draws):
            out, mask = synth(images)
            inside = mask.expand_as(out).bool()
            changes += [float((o - i.float())[m].mean()) for o, i, m in zip(out, images, inside) if m.any()]
        synth.defect_share, synth.rng.bit_generator.state = share, state
    return {
        "expected_gain": round(float(probs["gain"] @ torch.tensor(GAINS)), 3),
        "expected_brightness_shift": round(float(probs["brightness"] @ torch.tensor(BRIGHTNESS)), 2),
        "mean_change_inside_masks": round(float(np.mean(changes)), 2) if changes else None,
        "darker_share": round(float(np.mean([c < 0 for c in changes])), 3) if changes else None,
    }


@torch.no_grad()
def placement_summary(synth, images: torch.Tensor) -> dict:
    """Where the placement map puts its mass, in numbers a person can read."""
    prob = synth.placement_map(images)[:, 0]  # N×H×W, each sums to 1
    logits = synth.placement(images.float())[:, 0]
    _, h, w = prob.shape
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    band = ((ys < 0.1) | (ys > 0.9) | (xs < 0.1) | (xs > 0.9)).float()
    gray = images.float().mean(1)
    entropy = -(prob * prob.clamp_min(1e-12).log()).sum((1, 2)).mean()
    return {
        "entropy_share_of_uniform": round(float(entropy / math.log(h * w)), 4),
        "logit_std_within_image": round(float(logits.flatten(1).std(1).mean()), 5),  # 0: exactly uniform
        "centre_of_mass_yx": [round(float((prob * ys).sum((1, 2)).mean()), 3),
                              round(float((prob * xs).sum((1, 2)).mean()), 3)],
        "border_band_mass": round(float((prob * band).sum((1, 2)).mean()), 4),
        "border_band_uniform": round(float(band.mean()), 4),
        "corr_with_brightness": round(correlation(prob, gray), 3),
        "corr_with_edges": round(correlation(prob, edge_strength(gray)), 3),
    }


def edge_strength(gray: torch.Tensor) -> torch.Tensor:
    dy = torch.zeros_like(gray)
    dx = torch.zeros_like(gray)
    dy[:, 1:] = (gray[:, 1:] - gray[:, :-1]).abs()
    dx[:, :, 1:] = (gray[:, :, 1:] - gray[:, :, :-1]).abs()
    return dx + dy


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    denom = float(a.norm() * b.norm())
    return float((a * b).sum()) / denom if denom > 0 else 0.0


@torch.no_grad()
def save_synthesis_pngs(synth, images, vset: ValidationSet, out: Path, tag: str) -> None:
    """samples_{tag}.png (mask outlines in red), placement_{tag}.png, validation_defects.png."""
    import cv2
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng():  # the same draws before and after learning
        torch.manual_seed(0)
        state = synth.rng.bit_generator.state
        synth.defect_share, share = 1.0, synth.defect_share
        x, m = synth(images)
        synth.defect_share, synth.rng.bit_generator.state = share, state
    cv2.imwrite(str(out / f"samples_{tag}.png"), tile([outlined(a, b) for a, b in zip(x, m)]))
    save_file({k: v.detach().contiguous() for k, v in synth.state_dict().items()}, str(out / f"synthesis_{tag}.safetensors"))
    prob = synth.placement_map(images)[:, 0]
    heat = [cv2.applyColorMap(np.uint8(255 * (p / p.max()).numpy()), cv2.COLORMAP_JET) for p in prob]
    cv2.imwrite(str(out / f"placement_{tag}.png"), tile([bgr(i) for i in images] + heat, columns=len(images)))
    # the validation set's defects (masks outlined where it has them)
    vset = vset.to("cpu")
    defects = vset.images[vset.labels == 1][:8]
    masks = vset.masks[vset.labels == 1][:8] if vset.masks is not None else torch.zeros_like(defects[:, :1])
    cv2.imwrite(str(out / "validation_defects.png"), tile([outlined(a, b) for a, b in zip(defects, masks)]))


def bgr(image: torch.Tensor) -> np.ndarray:
    a = image.float().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    return np.ascontiguousarray(np.repeat(a, 3, 2) if a.shape[2] == 1 else a[..., ::-1])


def outlined(image: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    import cv2

    a = bgr(image)
    contours, _ = cv2.findContours(mask[0].numpy().astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return np.concatenate([a, cv2.drawContours(a.copy(), contours, -1, (0, 0, 255), 1)], axis=1)


def tile(images: list[np.ndarray], columns: int = 4) -> np.ndarray:
    rows = []
    for i in range(0, len(images), columns):
        row = images[i:i + columns]
        row += [np.zeros_like(images[0])] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)
