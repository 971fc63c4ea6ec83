"""What cutpaste's upper level validates on (the epoch kept is chosen on `train_host.validation`, as for every
family).

The issue's order of preference:

1. **Real labelled defects**, where the station has a few (``--val-defects N`` moves N out
   of the test set into ``Split.val_defects``), next to held-out good images. With masks
   for every defect the loss is pixel-level focal + Dice; without (ELPV) it is image-level:
   class-balanced BCE on the detector's own image score.
2. Otherwise **a held-out synthetic family different from Cut&Paste**: `train_host.synth`'s
   texture, structural and confetti anomalies (one per held-out good image, exact masks),
   so the upper level cannot make its task easy by pasting what it is scored on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from edge_infer.errors import LinesideError

from ..validation import GOOD_IMAGES, validation_good
from ..validation import read_images_and_masks as read_set
from .segmentation_loss import focal_dice_loss

SYNTH_KINDS = ("texture", "structural", "confetti")  # not Cut&Paste-like: contextual/cutpaste left out


@dataclass
class ValidationSet:
    images: torch.Tensor  # float N×C×H×W, 0-255
    labels: torch.Tensor  # N, 1 = defect
    masks: torch.Tensor | None  # N×1×H×W for a pixel-level loss; None for an image-level one
    signal: str  # what it is, for the run record

    @property
    def real(self) -> bool:
        return self.signal.startswith("real")

    def to(self, device) -> "ValidationSet":
        masks = self.masks.to(device) if self.masks is not None else None
        return ValidationSet(self.images.to(device), self.labels.to(device), masks, self.signal)

    def loss(self, model, logits: torch.Tensor) -> torch.Tensor:
        """The validation loss of the network's ``logits`` on these images (differentiable)."""
        if self.masks is not None:
            return focal_dice_loss(logits, self.masks)
        score = model.image_score(model.smooth(torch.sigmoid(logits))).clamp(1e-6, 1 - 1e-6)
        return balanced_bce(score, self.labels)


def balanced_bce(score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE averaged within each class, then over the classes: 20 defects weigh as much as 32 goods."""
    per_image = F.binary_cross_entropy(score, labels, reduction="none")
    return torch.stack([per_image[labels == c].mean() for c in (0.0, 1.0) if (labels == c).any()]).mean()


def build_validation(context, seed: int) -> ValidationSet:
    good, _ = read_set(context, validation_good(context.split, GOOD_IMAGES, seed))  # no val: overlap, said below
    if len(good) == 0:
        raise LinesideError("cutpaste needs some good images to validate on: the data has none; "
                            "add images to train/good (and keep --val-share above 0)")
    overlap = "" if context.split.val else " (no validation split: the last training images, overlapping)"
    defects = getattr(context.split, "val_defects", [])
    if defects:
        bad, bad_masks = read_set(context, defects)
        if len(bad):
            return real_defects(good, bad, bad_masks, [s.mask_path for s in defects], overlap)
    images, masks = synthetic_family(good, seed)
    return ValidationSet(images, torch.ones(len(images)), masks,
                         f"synthetic family ({', '.join(SYNTH_KINDS)} from train_host.synth) on "
                         f"{len(images)} held-out good images, pixel focal + Dice{overlap}")


def real_defects(good, bad, bad_masks, mask_paths, overlap: str) -> ValidationSet:
    images = torch.cat([good, bad]).float()
    labels = torch.cat([torch.zeros(len(good)), torch.ones(len(bad))])
    counts = f"{len(bad)} real labelled defects + {len(good)} good images"
    if all(p is not None for p in mask_paths):
        masks = torch.cat([torch.zeros(len(good), 1, *good.shape[-2:]), bad_masks])
        return ValidationSet(images, labels, masks, f"real defects, pixel focal + Dice: {counts}{overlap}")
    return ValidationSet(images, labels, None,
                         f"real defects, image-level balanced BCE on the image score (no masks): {counts}{overlap}")


def synthetic_family(good: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One texture / structural / confetti anomaly per good image, in turn, with its exact mask."""
    from train_host.synth import synthesize

    out, masks = [], []
    arrays = [g.numpy() for g in good]
    for i, image in enumerate(arrays):
        rng = np.random.default_rng([seed, 11, i])
        anomalous, mask = synthesize(SYNTH_KINDS[i % len(SYNTH_KINDS)], image, rng)
        out.append(torch.from_numpy(anomalous).float())
        masks.append(torch.from_numpy(mask.astype(np.float32))[None])
    return torch.stack(out), torch.stack(masks)
