"""Choosing rddpm's noising depth t0 and step count K without test labels.

Each candidate setting scores the shared validation set (`train_host.validation`: the station's
held-out good images against synthetic anomalies made from them, plus real defects given with
``--val-defects``); its ``validation_auroc`` ranks the settings. Each setting first takes its
per-pixel map statistics from the training images (``fit_map_statistics``), as the final model
does. t0 is chosen first at the cheapest K, then the smallest K whose AUROC is within
``TOLERANCE`` of the best K — latency grows linearly with K, so this is the best AUROC per
millisecond that does not give up accuracy. Test labels are never looked at.
"""

from __future__ import annotations

import torch

TOLERANCE = 0.01


def use(model, t0: int, steps: int, norm_images: torch.Tensor) -> None:
    model.set_inference(t0, steps)
    model.fit_map_statistics(norm_images)


def choose_inference(model, validation, norm_images: torch.Tensor, log=print) -> dict:
    """Set model's t0 and K (those the config leaves open) from ``validation`` (a `train_host.validation.Validation`,
    or None), and its map statistics from ``norm_images`` (good training images); returns what was tried, and the
    validation result of the setting kept."""
    cfg = model.config
    fixed_t0, fixed_k = cfg.t0, cfg.steps
    if fixed_t0 is not None and fixed_k is not None:
        use(model, fixed_t0, fixed_k, norm_images)
        return {"method": "given", "t0": fixed_t0, "steps": fixed_k}
    if validation is None:
        log("rddpm: no validation images: t0 and K keep their defaults (give --t0 and --steps)")
        use(model, fixed_t0 or model.t0, fixed_k or model.steps, norm_images)
        return {"method": "defaults (no validation images)", "t0": model.t0, "steps": model.steps}
    tried, results = [], {}

    def trial(t0: int, k: int) -> float:
        use(model, t0, k, norm_images)
        results[t0, k] = validation.evaluate(model)
        auroc = results[t0, k]["validation_auroc"]
        tried.append({"t0": t0, "steps": k, "auroc": auroc})
        log(f"rddpm: validation t0={t0} K={k}: validation AUROC {auroc:.4f}")
        return auroc

    first_k = fixed_k or min(cfg.steps_grid)
    t0_grid = (fixed_t0,) if fixed_t0 else cfg.t0_grid
    by_t0 = {t0: trial(t0, min(first_k, t0)) for t0 in t0_grid}
    t0 = max(by_t0, key=by_t0.get)
    if fixed_k:
        k = fixed_k
    else:
        by_k = {first_k: by_t0[t0], **{k: trial(t0, k) for k in cfg.steps_grid if k != first_k and k <= t0}}
        best = max(by_k.values())
        k = min(k for k, v in by_k.items() if v >= best - TOLERANCE)
    use(model, t0, k, norm_images)
    log(f"rddpm: chose t0={t0}, K={k} on {validation.signal}")
    return {"method": "validation: " + validation.signal, "t0": t0, "steps": k, "tried": tried,
            "kept": results[t0, min(k, t0)]}
