"""What chooses draem's epoch: the station's own good images against anomalies it did NOT train on.

draem trains on Perlin-masked procedural textures; validating on those would reward
learning the synthesiser, not defects. The validation set is held-out good images
(label 0) against anomalies of other families from `train_host.synth` — structural
(shapes, cuts, scratches, warps), confetti and contextual patches — made from those same
good images (label 1), plus real labelled defects when ``--val-defects`` moved some out of
the test set. Test labels are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_infer.errors import LinesideError

from .cutpaste_validation import GOOD_IMAGES, read_set

SYNTH_KINDS = ("structural", "confetti", "contextual")  # no Perlin/texture: that is what draem trains on


@dataclass
class DraemValidation:
    images: torch.Tensor  # uint8 N×C×H×W
    labels: np.ndarray  # N, 1 = anomalous
    parts: np.ndarray  # N: "good", "synthetic" or "real"
    signal: str  # what it is, for the run record

    @torch.no_grad()
    def aurocs(self, model, batch: int = 16) -> dict:
        """Image AUROC over everything, and of the good images against each anomaly part alone."""
        from sklearn.metrics import roc_auc_score

        was_training = model.training
        model.eval()
        scores = torch.cat([model(self.images[i:i + batch])[1] for i in range(0, len(self.images), batch)]).numpy()
        model.train(was_training)
        good = self.parts == "good"
        out = {"auroc": float(roc_auc_score(self.labels, scores))}
        for part in ("synthetic", "real"):
            chosen = good | (self.parts == part)
            if (self.parts == part).any():
                out[f"auroc_{part}"] = float(roc_auc_score(self.labels[chosen], scores[chosen]))
        return {k: round(v, 4) for k, v in out.items()}


def build_validation(context, seed: int) -> DraemValidation:
    good_samples = context.split.val or context.split.train[-GOOD_IMAGES:]  # no val: overlap, said in the record
    good, _ = read_set(context, good_samples[:GOOD_IMAGES])
    if len(good) == 0:
        raise LinesideError("draem validates on held-out good images and the data has none: add images to "
                            "train/good (and keep --val-share above 0)")
    synthetic = other_family(good, seed)
    parts = [good, synthetic]
    names = ["good"] * len(good) + ["synthetic"] * len(synthetic)
    real = ""
    if getattr(context.split, "val_defects", []):
        bad, _ = read_set(context, context.split.val_defects)
        parts.append(bad)
        names += ["real"] * len(bad)
        real = f" + {len(bad)} real labelled defects (--val-defects)"
    overlap = "" if context.split.val else " (no validation split: the last training images, overlapping)"
    names = np.array(names)
    return DraemValidation(torch.cat(parts), (names != "good").astype(int), names,
                           f"{len(good)} held-out good images vs {len(synthetic)} synthetic anomalies of a family "
                           f"draem does not train on ({', '.join(SYNTH_KINDS)} from train_host.synth){real}{overlap}")


def other_family(good: torch.Tensor, seed: int) -> torch.Tensor:
    """One structural / confetti / contextual anomaly per good image, in turn; donors are the other goods."""
    from train_host.synth import synthesize

    arrays = [g.numpy() for g in good]
    out = []
    for i, image in enumerate(arrays):
        rng = np.random.default_rng([seed, 22, i])
        donors = [a for j, a in enumerate(arrays) if j != i] or [image]
        anomalous, _ = synthesize(SYNTH_KINDS[i % len(SYNTH_KINDS)], image, rng, donors)
        out.append(torch.from_numpy(anomalous))
    return torch.stack(out)
