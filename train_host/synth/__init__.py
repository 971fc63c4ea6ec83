"""Synthetic anomalies for training and checking detectors, each with its exact mask.

Every synthesiser has the signature ``fn(image, rng, **params) -> (image, mask)`` on uint8
C×H×W arrays in model-input geometry (after `edge_infer.preprocess`); the mask (bool H×W)
is exactly the set of pixels that changed. ``contextual`` and ``cutpaste`` also take
``donors``: other images of the station, same geometry. Kinds:

- texture: Perlin-noise stains or grain blended into a Perlin blob (DRAEM style)
- structural: foreign shapes, cuts, scratches, local warps
- contextual: CutPaste-style irregular patches from other images, rotated and re-toned
- cutpaste: plain Cut&Paste of a rectangle from another image
- confetti: ADTR's confetti noise
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compose import check_image
from .confetti import confetti
from .contextual import contextual, cutpaste
from .structural import structural
from .texture import texture

KINDS = {"texture": texture, "structural": structural, "contextual": contextual, "cutpaste": cutpaste,
         "confetti": confetti}
NEEDS_DONORS = {"contextual", "cutpaste"}

DEFAULT_KINDS = ("texture", "structural", "contextual", "cutpaste")
PER_KIND = 30


@dataclass
class Synthetic:
    image: np.ndarray  # uint8 C×H×W
    mask: np.ndarray  # bool H×W, exactly the changed pixels
    kind: str
    source: int  # index of the good image it was made from


def synthesize(kind: str, image: np.ndarray, rng: np.random.Generator, donors: list[np.ndarray] | None = None,
               **params) -> tuple[np.ndarray, np.ndarray]:
    if kind not in KINDS:
        raise ValueError(f"unknown anomaly kind {kind!r}: choose from {', '.join(KINDS)}")
    check_image(image)
    if kind in NEEDS_DONORS:
        params["donors"] = donors
    return KINDS[kind](image, rng, **params)


def synthesize_set(images: list[np.ndarray], per_kind: int = PER_KIND, kinds=DEFAULT_KINDS,
                   seed: int = 0) -> list[Synthetic]:
    """``per_kind`` anomalies of each kind from the given good images; the same seed gives the same set.

    Each sample draws from its own generator (seed, kind, number), so the set does not depend
    on the order kinds are made in, and adding a kind leaves the others unchanged.
    """
    if not images:
        raise ValueError("anomaly synthesis needs at least one good image")
    out = []
    for kind in kinds:
        salt = sum(kind.encode())  # a stable number per kind name
        for i in range(per_kind):
            rng = np.random.default_rng([seed, salt, i])
            source = int(rng.integers(len(images)))
            donors = [im for j, im in enumerate(images) if j != source] or [images[source]]
            image, mask = synthesize(kind, images[source], rng, donors)
            out.append(Synthetic(image, mask, kind, source))
    return out
