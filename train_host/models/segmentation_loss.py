"""The loss of the segmentation networks that learn from synthetic defect masks (cutpaste, draem).

Its own module so that the training and validation modules of those families import it
without importing the family module that, in turn, calls them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_dice_loss(logits: torch.Tensor, mask: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss (defects are a few pixels) plus soft Dice over the batch (their extent)."""
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    p_true = p * mask + (1 - p) * (1 - mask)
    focal = ((1 - p_true) ** gamma * ce).mean()
    dice = 1 - (2 * (p * mask).sum() + 1) / (p.sum() + mask.sum() + 1)
    return focal * 10 + dice  # focal's per-pixel mean is small; weighted so both terms matter
