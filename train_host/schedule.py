"""Schedules that fit the hardware: on a CPU, `train` says how long the run will take before it starts.

The families' defaults are the papers' schedules (ADTR 500 epochs, RDDPM 200, DINOv2-LoRA 10 at
224 px): right on a GPU, days on a CPU. Before a gradient family trains on the CPU, one training
step is timed on a copy of the model (random inputs of the real shapes, the global RNG left
alone) and multiplied by the steps the schedule asks for. Past ``CPU_BOUND_MINUTES`` the run asks
on a terminal, and otherwise refuses, unless ``--max-minutes`` caps it or ``--yes`` accepts it.
"""

from __future__ import annotations

import copy
import math
import sys
import time

from edge_infer.errors import LinesideError

CPU_BOUND_MINUTES = 60.0


def check_schedule(module, model, context, bound_minutes: float = CPU_BOUND_MINUTES, ask=None) -> dict | None:
    """Print the expected time of a CPU run; refuse (or ask) past ``bound_minutes``. Returns the estimate."""
    hw = context.hardware
    if hw.device.type != "cpu" or hw.world_size > 1:  # torchrun: every rank would have to agree; it was asked for
        return None
    plan = PLANS.get(getattr(module, "FAMILY", ""))
    if plan is None:
        return None  # closed-form families: one pass over the images
    import torch

    with torch.random.fork_rng():  # the probe's random inputs must not move the run's draws
        steps, step_fn = plan(model, context)
        seconds = time_step(step_fn)
    minutes = steps * seconds / 60
    cap = context.options.get("max_minutes") or getattr(getattr(model, "config", None), "max_minutes", None)
    expected = min(minutes, cap) if cap else minutes
    context.log(f"schedule: {steps:,} training steps at {seconds:.3g} s each on this CPU (measured): about "
                f"{fmt_minutes(minutes)}" + (f", capped at --max-minutes {cap:g}" if cap and cap < minutes else ""))
    estimate = {"steps": steps, "step_seconds": round(seconds, 4), "expected_minutes": round(minutes, 1)}
    if expected <= bound_minutes or context.options.get("yes"):
        return estimate
    advice = (f"this schedule would take about {fmt_minutes(minutes)} on this CPU (the papers' defaults are sized for "
              f"a GPU). Pass --max-minutes N to cap it (epochs and learning-rate drops scale to fit where the family "
              f"supports it), fewer --epochs, or --yes to run it anyway; or train on a GPU (--device cuda)")
    ask = ask or _ask_terminal
    if ask is not False and ask(advice):
        return estimate
    raise LinesideError(advice)


def _ask_terminal(advice: str) -> bool:
    if not sys.stdin.isatty():
        return False
    answer = input(f"{advice}.\nRun it anyway? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def fmt_minutes(minutes: float) -> str:
    if minutes < 90:
        return f"{minutes:.1f} minutes"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} hours"
    return f"{minutes / 1440:.1f} days"


def time_step(step_fn, repeats: int = 2) -> float:
    """Seconds of one training step: the faster of ``repeats`` runs (the first pays for allocation)."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        step_fn()
        best = min(best, time.perf_counter() - started)
    return best


def _batches(context, images: int) -> int:
    return math.ceil(max(images, 1) / int(context.options.get("batch_size") or 16))


def _batch(context, channels: int | None = None):
    import torch

    spec = context.spec
    n = max(1, min(int(context.options.get("batch_size") or 16), len(context.split.train)))
    return torch.randint(0, 256, (n, channels or spec.channels, spec.height, spec.width), dtype=torch.uint8)


def _train_step(module, forward):
    """A closure: forward → loss → backward → Adam step on a copy of ``module``."""
    import torch

    trial = copy.deepcopy(module).train()
    params = [p for p in trial.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-6)

    def run():
        loss = forward(trial)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def plan_adtr(model, context):
    import torch

    cfg = model.config
    epochs = cfg.epochs + (cfg.px_epochs if cfg.anomaly_available else 0)
    steps = epochs * _batches(context, len(context.split.train))
    x = _batch(context)
    with torch.no_grad():
        feats = model.features(x).float()
    return steps, _train_step(model.reconstructor, lambda net: (net(feats) - feats).pow(2).mean())


def plan_rddpm(model, context):
    import torch

    cfg = model.config
    steps = cfg.epochs * _batches(context, len(context.split.train))
    x = _batch(context).float() / 127.5 - 1
    t = torch.randint(0, cfg.train_t_max + 1, (len(x),))
    return steps, _train_step(model.backbone, lambda net: (net(x, t) - x).pow(2).mean())


def plan_cutpaste(model, context):
    epochs = int(context.options.get("epochs") or 5)
    steps = epochs * _batches(context, len(context.split.train))
    x = model.normalize(_batch(context))
    factor = 3 if context.options.get("learned_synthesis") else 1  # the unrolled upper step: ~2 more passes
    return steps * factor, _train_step(model.backbone, lambda net: net(x).sigmoid().mean())


def plan_draem(model, context):
    import torch.nn.functional as F

    epochs = int(context.options.get("epochs") or 10)
    steps = epochs * _batches(context, len(context.split.train))
    x = _batch(context)

    def loss(m):  # both networks forward and backward, as a training step runs them
        rec, logits = m.outputs(x)
        return F.mse_loss(rec, m.to_unit(x)) + logits.sigmoid().mean()

    return steps, _train_step(model, loss)


def plan_dinov2_lora(model, context):
    cfg = model.config
    stations = max(1, len(context.split.info.get("stations", [])))
    images = 2 * cfg.per_kind * len(cfg.kinds) * stations  # synthetic anomalies and as many good images
    runs = 2 if cfg.adapt == "best" else 1
    steps = runs * cfg.epochs * _batches(context, images)
    x = _batch(context)
    return steps, _train_step(model, lambda m: m.head_logits(m.tokens(x))[0].mean())


PLANS = {"adtr": plan_adtr, "rddpm": plan_rddpm, "cutpaste": plan_cutpaste, "draem": plan_draem,
         "dinov2-lora": plan_dinov2_lora}
