"""The self-supervised pretext that teaches a detector's backbone the station: CutPaste 3-way classification.

Each step takes a batch of the station's good images and makes two edited copies of each
with `train_host.synth`: a plain Cut&Paste rectangle and a CutPaste-style irregular,
rotated, re-toned patch ("scar"), both cut from another good image of the batch. A linear
head on the detector's own patch features (averaged over the image) learns to tell the
three apart (Li et al., CutPaste, CVPR 2021). The backbone learns what the station's
surfaces look like and what a local break in them looks like; the head is thrown away.

Those two kinds are the pretext's; whoever validates the learned features must use others
(`choice.build_validation` holds ``KINDS`` out of train_host.validation). Training stops at ``steps`` or ``minutes``, whichever first.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge_infer.errors import LinesideError

KINDS = ("cutpaste", "contextual")  # classes 1 and 2; class 0 is the good image itself
CURVE_POINTS = 50  # the loss curve in the record is averaged down to at most this many points


class PretextHead(nn.Module):
    """The detector's features averaged over the image, then a linear 3-way classifier.

    A detector with ``pretext_features`` (a CNN: any input size) gives all its stages' channels
    and trains on crops; otherwise (a ViT, whose position embeddings fix the input size) its
    ``features`` (N×L×d) on the whole image are averaged."""

    def __init__(self, detector: nn.Module, dim: int):
        super().__init__()
        self.detector = detector
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 1 + len(KINDS)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(pooled_features(self.detector, image))


def pooled_features(detector: nn.Module, image: torch.Tensor) -> torch.Tensor:
    if hasattr(detector, "pretext_features"):
        return detector.pretext_features(image)
    return detector.features(image).mean(1)


def crop_side(detector: nn.Module, spec, crop: int | None) -> int | None:
    """The pretext's square crop (CutPaste's patch-level training, and a quarter of the cost at half the side):
    ``crop`` px, default half the shorter side but at least 64; None where the detector needs whole images."""
    if not hasattr(detector, "pretext_features"):
        return None
    side = min(spec.height, spec.width)
    size = crop or max(64, side // 2)
    return None if size >= side else size


def random_crops(images: torch.Tensor, size: int | None, rng: np.random.Generator) -> torch.Tensor:
    if size is None:
        return images
    h, w = images.shape[-2:]
    out = []
    for image in images:
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out.append(image[:, y:y + size, x:x + size])
    return torch.stack(out).contiguous()


def edited_batch(images: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The good images, their Cut&Paste copies and their scar copies (uint8, 3N) with labels 0, 1, 2."""
    from train_host.synth import synthesize

    arrays = [im.numpy() for im in images]
    out, labels = list(images), [0] * len(arrays)
    for label, kind in enumerate(KINDS, start=1):
        for i, image in enumerate(arrays):
            donors = [a for j, a in enumerate(arrays) if j != i] or [image]
            edited, _ = synthesize(kind, image, rng, donors)
            out.append(torch.from_numpy(edited))
            labels.append(label)
    return torch.stack(out), torch.tensor(labels)


@torch.enable_grad()  # the families' fit runs under no_grad; this is the one part that trains
def train_pretext(model: nn.Module, context, minutes: float, steps: int | None = None, lr: float = 5e-4,
                  seed: int = 0, crop: int | None = None) -> dict:
    """Train ``model.backbone`` in place on the pretext; returns the record (loss curve, steps, minutes)."""
    if context.hardware.world_size > 1:
        raise LinesideError("--features station trains its pretext in one process and this run is under torchrun: "
                            "run the pretext once without torchrun (its backbone is RUN/station-backbone.safetensors) "
                            "and pass that file as --features FILE to the distributed run")
    if minutes <= 0 and not steps:
        raise LinesideError(f"--pretext-minutes {minutes}: give a positive number of minutes (or --pretext-steps N)")
    device = context.device
    samples = context.split.train
    if len(samples) < 2:
        raise LinesideError("the station pretext cuts patches from one good image into another and needs at least "
                            f"two training images; the data has {len(samples)}")
    side = crop_side(model, context.spec, crop)
    with torch.no_grad():
        probe = next(iter(context.loader(samples[:1], batch_size=1)))["image"]
        dim = pooled_features(model, probe).shape[-1]
    net = PretextHead(model, dim).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    scaler = context.hardware.scaler()  # FP16 autocast (--amp) needs one; FP32 and BF16 none
    rng = np.random.default_rng([seed, 23])
    losses, correct, seen = [], 0, 0
    started = time.perf_counter()
    deadline = started + minutes * 60 if minutes > 0 else float("inf")
    net.train()
    batch_size = max(2, context.options.get("batch_size", 16))
    while (steps is None or len(losses) < steps) and time.perf_counter() < deadline:
        for batch in context.loader(samples, shuffle=True, batch_size=batch_size, keep=True, on_device=False,
                                    progress="pretext"):
            if len(batch["image"]) < 2:
                continue  # no donor for a one-image tail batch
            images, labels = edited_batch(random_crops(batch["image"], side, rng), rng)
            images, labels = images.to(device), labels.to(device)
            with context.autocast():
                logits = net(images)
            loss = F.cross_entropy(logits.float(), labels)
            clipped_step(net, loss, optimizer, scaler)
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
            if (steps is not None and len(losses) >= steps) or time.perf_counter() >= deadline:
                break
        if seen == 0:
            raise LinesideError("the station pretext found no batch of two or more readable good images: check --data")
    model.eval()
    spent = (time.perf_counter() - started) / 60
    tail = losses[-max(1, len(losses) // 10):]
    context.log(f"pretext: {len(losses)} steps in {spent:.1f} min, loss {losses[0]:.3f} -> {np.mean(tail):.3f}")
    return {"pretext": "cutpaste-3way", "kinds": list(KINDS), "crop": side, "steps": len(losses), "minutes": round(spent, 2),
            "lr": lr, "batch_size": batch_size, "images_per_step": 3 * batch_size,
            "loss_first": round(losses[0], 4), "loss_last": round(float(np.mean(tail)), 4),
            "train_accuracy": round(correct / max(seen, 1), 4), "loss_curve": curve(losses)}


def clipped_step(net: nn.Module, loss: torch.Tensor, optimizer, scaler=None, max_norm: float = 5.0) -> None:
    """zero_grad, backward, clip the gradient norm (a random init's first steps can be wild), step; FP16 through
    the GradScaler, unscaled before clipping."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    nn.utils.clip_grad_norm_(net.parameters(), max_norm)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def curve(losses: list[float], points: int = CURVE_POINTS) -> list[list[float]]:
    """[[last step of the window, mean loss over it], ...]: at most ``points`` windows of equal length."""
    size = max(1, -(-len(losses) // points))
    return [[min(i + size, len(losses)), round(float(np.mean(losses[i:i + size])), 4)]
            for i in range(0, len(losses), size)]
