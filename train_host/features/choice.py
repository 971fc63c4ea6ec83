"""`--features random|station|FILE`: which backbone rx / dinov2-knn fit on, chosen on validation for ``station``.

``station`` fits the detector twice, on the backbone as built and on the backbone after the
pretext, and scores both on the same validation set: the station's held-out good images
against synthetic anomalies of kinds the pretext never makes (`train_host.validation` with
the pretext's Cut&Paste rectangles and CutPaste scars held out), plus real defects when
``--val-defects`` gave some. Test labels are never read. The learned features are kept by
the rule every setting is chosen by (`train_host.validation.choose_on`): they must beat the
random ones by more than its tolerance and in most paired bootstrap resamples of the
validation images; otherwise the random ones, which cost nothing to reproduce, stay. Both
AUROCs and the bootstrap share go into the run record either way.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

from edge_infer.errors import LinesideError

from train_host.validation import CONFIDENCE, ROUNDS, TOLERANCE, choose_on
from train_host.validation import build_validation as build

from .pretext import KINDS as PRETEXT_KINDS
from .pretext import train_pretext

MODES = ("random", "station")
BACKBONE_FILE = "station-backbone.safetensors"
DEFAULT_PRETEXT_MINUTES = 10.0
RULE = (f"the station features only if their validation AUROC beats the random ones' by more than {TOLERANCE} and "
        f"in at least {CONFIDENCE:.0%} of {ROUNDS} paired bootstrap resamples (train_host.validation.choose_on)")


def fit_with_features(model, context, fit: Callable) -> dict:
    """Run the family's closed-form ``fit(model, context)`` on the features ``--features`` asks for."""
    options = getattr(context, "options", None) or {}
    source = options.get("features") or "random"
    if source == "random":
        record = fit(model, context)
        record["features"] = {"source": "random", "note": "the backbone as built (random init, or --weights)"}
        return record
    if options.get("weights"):
        raise LinesideError(f"--features {source} and --weights both set the backbone: give one of them "
                            "(--features station trains from the random init; --weights with --features random)")
    if source == "station":
        return station_features(model, context, fit, options)
    return file_features(model, context, fit, source)


def file_features(model, context, fit: Callable, path: str) -> dict:
    """A backbone from an earlier pretext run (its station-backbone.safetensors, or the run folder holding it)."""
    file = Path(path)
    if file.is_dir():
        file = file / BACKBONE_FILE
    if not file.is_file():
        raise LinesideError(f"--features {path}: no such file; give 'random', 'station', or the "
                            f"{BACKBONE_FILE} (or the run folder) of an earlier --features station run")
    meta = load_backbone(model, file)
    record = fit(model, context)
    validation = build_validation(context, options_seed(context))
    result = validation.evaluate(model)
    record["features"] = {"source": "file", "file": str(file), "sha256": sha256(file), "origin": meta,
                          "validation_signal": validation.signal,
                          "validation_auroc": {"file": result["validation_auroc"]}}
    return {**record, **validation.record(result)}


def station_features(model, context, fit: Callable, options: dict) -> dict:
    seed = options_seed(context)
    validation = build_validation(context, seed)
    random_record = fit(model, context)
    random_scores = validation.scores(model)
    random_auroc = validation.summarise(random_scores)["validation_auroc"]
    random_state = copy.deepcopy(model.state_dict())
    context.log(f"features: random backbone, validation AUROC {random_auroc:.4f}")

    minutes = options.get("pretext_minutes")
    pretext = train_pretext(model, context, DEFAULT_PRETEXT_MINUTES if minutes is None else minutes,
                            options.get("pretext_steps"), options.get("pretext_lr") or 5e-4, seed,
                            options.get("pretext_crop"))
    saved = save_backbone(model, options.get("out"), pretext)
    station_record = fit(model, context)
    station_scores = validation.scores(model)
    # overall, and per part (synthetic, per kind; real with --val-defects), for both sides
    kept, parts, share = choose(validation, random_scores, station_scores, seed)
    station_auroc = parts["station"]["validation_auroc"]
    context.log(f"features: station backbone, validation AUROC {station_auroc:.4f}")
    if kept == "random":
        model.load_state_dict(random_state)  # the random backbone and the Gaussians / bank fitted on it
    won = "" if share is None else f"; the station side won {share:.0%} of the bootstrap resamples"
    context.log(f"features: keeping the {kept} features (validation AUROC random {random_auroc:.4f}, "
                f"station {station_auroc:.4f}{won})")
    record = station_record if kept == "station" else random_record
    record["features"] = {"source": "station", "kept": kept, "pretext": pretext, "backbone_file": saved,
                          "validation_signal": validation.signal,
                          "validation_auroc": {side: parts[side]["validation_auroc"] for side in parts},
                          "validation_parts": parts, "rule": RULE, "bootstrap_share": share}
    # the kept side's numbers are the run's validation (`train auto` compares families by them)
    return {**record, **validation.record(parts[kept])}


def choose(validation, random_scores, station_scores, seed: int) -> tuple[str, dict, float | None]:
    """(kept side, each side's validation parts, the share of bootstrap resamples the station side won, None
    when its AUROC was not ahead by more than the tolerance): the rule every setting is chosen by."""
    kept, results, checked = choose_on(validation, {"random": random_scores, "station": station_scores},
                                       "random", seed)
    return kept, results, checked.get("station")


def build_validation(context, seed: int):
    """train_host.validation's set, without the kinds the pretext trains on."""
    return build(context, trained_on=PRETEXT_KINDS, seed=seed)


def save_backbone(model, out, pretext: dict) -> str | None:
    """The learned backbone beside the run, for other stations' ``--features FILE``; None without a run folder."""
    if not out:
        return None
    from safetensors.torch import save_file

    path = Path(out) / BACKBONE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    meta = {"backbone": str(getattr(model.config, "backbone", "")), "detector": type(model).__name__,
            "pretext": json.dumps({k: v for k, v in pretext.items() if k != "loss_curve"})}
    save_file(state, str(path), metadata=meta)
    return str(path)


def load_backbone(model, path: Path) -> dict:
    """Load a station backbone into ``model.backbone``, refusing one of another architecture."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata() or {}
        state = {k: handle.get_tensor(k) for k in handle.keys()}
    wanted = str(getattr(model.config, "backbone", ""))
    if meta.get("backbone") and meta["backbone"] != wanted:
        raise LinesideError(f"{path} holds a {meta['backbone']} backbone and this run builds {wanted}: pass "
                            f"--backbone {meta['backbone']}, or train station features for {wanted}")
    own = model.backbone.state_dict()
    wrong = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if wrong:
        raise LinesideError(f"{path} does not fit this backbone ({len(wrong)} tensors missing or of another shape, "
                            f"e.g. {wrong[0]}): use the same --backbone, --layers / --depth and --size as the run "
                            "that wrote it")
    model.backbone.load_state_dict({k: state[k] for k in own})
    return {k: (json.loads(v) if k == "pretext" else v) for k, v in meta.items()}


def options_seed(context) -> int:
    return int(context.options.get("seed", 0))


def sha256(path: Path) -> str:
    from edge_infer.bundle import sha256_file

    return sha256_file(path)

