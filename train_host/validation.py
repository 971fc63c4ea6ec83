"""What every family chooses its settings on, and what `lineside train auto` compares families by.

The validation set is the station's held-out good images (label 0) against synthetic
anomalies made from those same images (label 1), plus the real labelled defects that
``--val-defects`` moved out of the test set. Every family sees the same images and the same
anomaly instances (anomaly ``j`` of good image ``i`` is kind ``POOL[(2i + j) % len(POOL)]``,
drawn from its own seeded generator; a kind the turn does not reach with few good images gets one
instance of its own), so per-kind AUROCs are comparable across families.

A family is scored only on the kinds it did NOT train on (its module's ``trains_on(config)``;
none for families that train on no synthetic anomaly): validating on the training synthesiser
would reward learning the synthesiser, not defects. ``validation_auroc`` is the image AUROC
of the good images against those held-out anomalies; with real defects it is the mean of that
and the AUROC of the good images against the real defects, so a handful of real defects weigh
as much as the synthetic set.

``choose_on`` is how a family picks among candidate settings (rx, dinov2-knn, adtr's checkpoints): the
default stays unless the best beats it by more than ``TOLERANCE`` and in ``CONFIDENCE`` of paired bootstrap
resamples of these images.

Only ``split.val`` (good), ``split.val_defects`` and, when there is no validation split, the
last training images are read: never ``split.test``, so test labels cannot leak into the choice
of an epoch, a t0, or a family.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edge_infer.errors import LinesideError

POOL = ("texture", "structural", "confetti", "contextual", "cutpaste")  # train_host.synth kinds
GOOD_IMAGES = 32  # held-out good images in the validation set
PER_GOOD = 2  # synthetic anomalies made from each good image


@dataclass
class Validation:
    images: torch.Tensor  # uint8 N×C×H×W
    parts: np.ndarray  # N: "good", "real", or the synthetic kind
    kinds: tuple[str, ...]  # the synthetic kinds scored (the family did not train on them)
    trained_on: tuple[str, ...]
    signal: str  # what it is, in words, for the run record

    @property
    def labels(self) -> np.ndarray:
        return (self.parts != "good").astype(int)

    def scores(self, model, batch: int = 16) -> np.ndarray:
        """The model's image scores of every validation image (eval mode, restored after)."""
        from .device import model_device

        was_training = model.training
        model.eval()
        device = model_device(model)
        with torch.no_grad():
            out = [model(self.images[i:i + batch].to(device))[1].float().cpu()
                   for i in range(0, len(self.images), batch)]
        model.train(was_training)
        return torch.cat(out).numpy()

    def evaluate(self, model, batch: int = 16) -> dict:
        """``validation_auroc`` (what settings and families are chosen by) and its parts."""
        return self.summarise(self.scores(model, batch))

    def paired_wins(self, scores: np.ndarray, other: np.ndarray, seed: int = 0) -> float:
        """The share of ``ROUNDS`` stratified bootstrap resamples of the validation images (good, each synthetic
        kind and the real defects resampled apart) in which ``scores`` has the higher ``validation_auroc``."""
        rng = np.random.default_rng([seed, 4022, 2])
        groups = [np.flatnonzero(self.parts == part) for part in dict.fromkeys(self.parts)]
        wins = 0
        for _ in range(ROUNDS):
            index = np.concatenate([rng.choice(g, len(g)) for g in groups])
            parts = self.parts[index]
            wins += overall(parts, self.kinds, scores[index]) > overall(parts, self.kinds, other[index])
        return wins / ROUNDS

    def summarise(self, scores: np.ndarray) -> dict:
        good = self.parts == "good"
        synthetic = np.isin(self.parts, self.kinds)
        out = {"auroc_synthetic": _auroc(scores, good, synthetic)}
        if (self.parts == "real").any():
            out["auroc_real"] = _auroc(scores, good, self.parts == "real")
        out["validation_auroc"] = round(float(np.mean(list(out.values()))), 4)
        out["per_kind"] = {k: _auroc(scores, good, self.parts == k) for k in self.kinds}
        return out

    def record(self, result: dict) -> dict:
        """The run record's part: the numbers, and which images and kinds they came from."""
        return {"validation_auroc": result["validation_auroc"],
                "validation": {**result, "kinds": list(self.kinds), "trained_on": list(self.trained_on),
                               "good_images": int((self.parts == "good").sum()),
                               "synthetic_anomalies": int(np.isin(self.parts, self.kinds).sum()),
                               "real_defects": int((self.parts == "real").sum()), "signal": self.signal}}


def overall(parts: np.ndarray, kinds, scores: np.ndarray) -> float:
    """``validation_auroc`` alone (unrounded), as ``Validation.summarise`` computes it."""
    from .metrics import image_auroc

    good = parts == "good"
    values = []
    for bad in (np.isin(parts, kinds), parts == "real"):
        if bad.any():
            chosen = good | bad
            finite = np.isfinite(scores[chosen]).all()
            values.append(image_auroc(bad[chosen].astype(int), scores[chosen]) if finite else 0.0)
    return float(np.mean(values))


def _auroc(scores: np.ndarray, good: np.ndarray, bad: np.ndarray) -> float:
    from .metrics import image_auroc

    chosen = good | bad
    if not np.isfinite(scores[chosen]).all():  # a diverged model ranks last, it does not crash the run
        return 0.0
    return round(image_auroc(bad[chosen].astype(int), scores[chosen]), 4)


def trained_kinds(family_module, config) -> tuple[str, ...]:
    """The synthetic kinds a family trains on (``trains_on(config)`` in its module; none if absent)."""
    fn = getattr(family_module, "trains_on", None)
    return tuple(fn(config)) if fn else ()


def held_out(trained_on) -> tuple[str, ...]:
    kinds = tuple(k for k in POOL if k not in set(trained_on))
    if not kinds:
        raise LinesideError(f"this family trains on every synthetic kind ({', '.join(trained_on)}): nothing is left "
                            "to validate on; train it on fewer kinds (e.g. --kinds texture,structural)")
    return kinds


def build_validation(context, trained_on=(), seed: int | None = None, good_images: int = GOOD_IMAGES) -> Validation:
    """The validation set for a family that trained on ``trained_on`` kinds, from ``context``'s split."""
    seed = int(context.options.get("seed", 0)) if seed is None else seed
    kinds = held_out(trained_on)
    split = context.split
    good = read_set(context, validation_good(split, good_images, seed))
    if len(good) == 0:
        raise LinesideError("validation needs held-out good images and the data has none: add images to "
                            "train/good (and keep --val-share above 0)")
    synthetic, names = synthetic_anomalies(good, seed, kinds)
    parts = [good, synthetic]
    labels = ["good"] * len(good) + names
    real = ""
    if split.val_defects:
        bad = read_set(context, split.val_defects)
        parts.append(bad)
        labels += ["real"] * len(bad)
        real = f" + {len(bad)} real labelled defects (--val-defects)"
    images, parts_arr = torch.cat(parts), np.array(labels)
    overlap = "" if split.val else " (no validation split: the last training images, overlapping)"
    drawn = f" (drawn from {len(split.val)})" if len(split.val) > good_images else ""
    signal = (f"{len(good)} held-out good images{drawn} vs {int(np.isin(parts_arr, kinds).sum())} synthetic anomalies of "
              f"kinds it did not train on ({', '.join(kinds)}, train_host.synth){real}{overlap}")
    return Validation(images, parts_arr, kinds, tuple(trained_on), signal)


def validation_good(split, n: int, seed: int) -> list:
    """The good images validation scores: ``n`` of ``split.val`` drawn at random (seeded), all when there are no
    more; without a validation split, the last ``n`` training images. Not the first ``n`` by file name: those can
    be one batch, one shift or one kind of part (on ELPV, 30 of the first 32 were poly cells, against 92 of 151)."""
    if not split.val:
        return split.train[-n:]
    if len(split.val) <= n:
        return list(split.val)
    pick = np.random.default_rng([seed, 4022, 1]).choice(len(split.val), n, replace=False)
    return [split.val[i] for i in sorted(pick)]


def synthetic_anomalies(good: torch.Tensor, seed: int, kinds=POOL) -> tuple[torch.Tensor, list[str]]:
    """The anomalies of ``kinds`` among ``PER_GOOD`` per good image (the pool's kinds in turn), plus one of each
    kind the turn did not reach (few good images). Anomaly (i, kind) is drawn from its own generator, so a family
    gets the same instance of it as every other family; donors (contextual, cutpaste) are the other good images."""
    from .synth import synthesize

    pairs = [(i, POOL[(PER_GOOD * i + j) % len(POOL)]) for i in range(len(good)) for j in range(PER_GOOD)]
    pairs = [(i, kind) for i, kind in pairs if kind in kinds]
    reached = {kind for _, kind in pairs}
    pairs += [(POOL.index(kind) % len(good), kind) for kind in kinds if kind not in reached]
    arrays = [g.numpy() for g in good]
    out, names = [], []
    for i, kind in pairs:
        donors = [a for j, a in enumerate(arrays) if j != i] or [arrays[i]]
        rng = np.random.default_rng([seed, 4022, i, POOL.index(kind)])
        anomalous, _ = synthesize(kind, arrays[i], rng, donors)
        out.append(torch.from_numpy(anomalous))
        names.append(kind)
    return torch.stack(out), names


def read_set(context, samples) -> torch.Tensor:
    """uint8 images of ``samples`` in the model's input geometry, on the CPU (unreadable ones skipped)."""
    return read_images_and_masks(context, samples)[0]


def read_images_and_masks(context, samples) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images, float masks) of the samples, in the model's input geometry, on the CPU."""
    spec = context.spec
    images, masks = [], []
    for batch in context.loader(samples, batch_size=max(1, len(samples)), on_device=False):
        images.append(batch["image"])
        masks.append(batch["mask"])
    if not images:
        return (torch.zeros(0, spec.channels, spec.height, spec.width, dtype=torch.uint8),
                torch.zeros(0, 1, spec.height, spec.width))
    return torch.cat(images), torch.cat(masks)


def validate_fitted(module, model, context, training: dict) -> dict:
    """After ``fit``: the shared validation of a family that did not run it itself (it chose nothing with it,
    but `train auto` and the validation-vs-test correlation compare every family by it)."""
    if "validation_auroc" in training and "validation" in training:
        return training
    try:
        validation = build_validation(context, trained_kinds(module, model.config))
    except LinesideError as exc:  # the run is trained: say why it has no validation AUROC, keep it
        context.log(f"validation skipped: {exc}")
        return {**training, "validation_skipped": str(exc)}
    context.log(f"validation: {validation.signal}")
    result = validation.record(validation.evaluate(model, int(context.options.get("batch_size") or 16)))
    context.log(f"validation AUROC {result['validation_auroc']:.4f} "
                f"(per kind: {result['validation']['per_kind']})")
    return {**training, **result, "validation_used_for": training.get("validation_used_for", "reporting only")}


# A non-default setting is kept only when it beats the default clearly: by more than TOLERANCE in validation AUROC,
# and in at least CONFIDENCE of ROUNDS paired bootstrap resamples of the validation images (stratified: good,
# each synthetic kind, real). With 32 good images against 64 synthetic anomalies a candidate 0.015 ahead is often
# noise; the defaults were chosen across data sets, so noise must not move them.
TOLERANCE = 0.01
CONFIDENCE = 0.9
ROUNDS = 200


def choose_setting(results: dict, default, tolerance: float = TOLERANCE, wins=None):
    """The key of ``results`` (setting → `Validation.summarise` result) to keep: the best ``validation_auroc``
    (the first of equals, in the candidates' order) if it beats ``default``'s by more than ``tolerance`` and
    ``wins(best)`` (the share of bootstrap resamples in which it beats the default; not checked when None) is at
    least ``CONFIDENCE``; otherwise ``default``."""
    best = max(results, key=lambda key: results[key]["validation_auroc"])  # max keeps the first of equals
    if default not in results or best == default:
        return best
    if results[best]["validation_auroc"] <= results[default]["validation_auroc"] + tolerance:
        return default
    if wins is not None and wins(best) < CONFIDENCE:
        return default
    return best


def choose_on(validation: "Validation", scores: dict, default, seed: int = 0) -> tuple:
    """(kept key, results, the record's ``bootstrap`` part): ``choose_setting`` over the candidates' validation
    ``scores`` (key → image scores of ``validation.images``), with the paired bootstrap against the default."""
    results = {key: validation.summarise(s) for key, s in scores.items()}
    checked = {}

    def wins(key):
        checked[key] = validation.paired_wins(scores[key], scores[default], seed)
        return checked[key]

    kept = choose_setting(results, default, wins=wins)
    return kept, results, checked


def choice_record(results: dict, default, kept, validation: "Validation", names: tuple[str, ...],
                  checked: dict | None = None) -> dict:
    """The run record's account of a choice: every candidate's AUROCs, the default, the kept one, the rule."""
    def named(key):  # as run.json holds it: tuples are lists
        return {name: list(v) if isinstance(v, tuple) else v for name, v in zip(names, key)}

    def row(key):
        result = results[key]
        return {**named(key), **{k: v for k, v in result.items() if k != "per_kind"}}

    return {"method": f"validation: {validation.signal}",
            "rule": f"best validation AUROC; the default unless another beats it by more than {TOLERANCE} and in at "
                    f"least {CONFIDENCE:.0%} of {ROUNDS} paired bootstrap resamples of the validation images",
            "default": named(default), "chosen": named(kept), "tried": [row(key) for key in results],
            "bootstrap_wins": [{**named(key), "share": round(share, 3)} for key, share in (checked or {}).items()]}
