"""`lineside train auto`: train every detector family that fits the time budget here, keep the one that validates best.

1. **Estimate.** Each candidate family is built and one training step (gradient families, as
   `schedule.py` times them) or one forward pass (closed-form families: rx, dinov2-knn) is
   measured on this hardware, with the real input shapes; validation and export are added.
2. **Plan.** Closed-form families cost what they cost: they run if that fits. The rest of the
   budget is shared equally by the gradient families whose shortest useful run (one epoch,
   plus validation) fits their share; each is capped at its share (``max_minutes``, or fewer
   epochs). A family that does not fit is skipped, and the table says why.
3. **Train** each into ``RUN/candidates/FAMILY`` (the same split, seed and input for all),
   export its graph to ONNX and time it with ONNX Runtime (batch 1, this CPU).
4. **Choose** the highest ``validation_auroc`` (`train_host.validation`: the station's
   held-out good images vs synthetic kinds the family did not train on, plus ``--val-defects``;
   never the test split) among the candidates whose latency is within ``--latency-ms``.
   The winner's run moves to ``RUN`` itself (so `lineside evaluate/export RUN` work); the
   table of every candidate is ``RUN/auto.md`` and ``RUN/auto.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_infer.bundle import write_json_atomic
from edge_infer.errors import LinesideError

from .families import FAMILIES
from .run import RECORD

# The candidates, in the order they are tried, with the settings auto trains them at (their own defaults
# otherwise). dinov2-* need pretrained weights to be worth their cost; without them the budget usually skips them.
# rx-mix is not a default candidate: on ELPV validation preferred its clusters and the test did not
# (docs/rx-mix.md); `--families rx,rx-mix,...` tries it.
CANDIDATES = ("rx", "dinov2-knn", "draem", "cutpaste", "rddpm", "adtr", "dinov2-lora")
CLOSED_FORM = {"rx", "rx-mix", "dinov2-knn"}
FIT_PASSES = {"rx-mix": 2}  # passes over the training images a closed-form fit makes (1 unless listed)
# how many epochs each gradient family's default schedule runs (the estimate's unit: one epoch is the least)
EPOCHS = {
    "adtr": lambda model, opts: model.config.epochs + (model.config.px_epochs if model.config.anomaly_available else 0),
    "rddpm": lambda model, opts: model.config.epochs,
    "cutpaste": lambda model, opts: int(opts.get("epochs") or 5),
    "draem": lambda model, opts: int(opts.get("epochs") or 10),
    "dinov2-lora": lambda model, opts: model.config.epochs * (2 if model.config.adapt == "best" else 1),
}
# validation passes over the shared validation set: once per epoch (draem, cutpaste), per t0/K trial (rddpm)
VALIDATION_PASSES = {"draem": "epochs", "cutpaste": "epochs", "rddpm": 8}
LATENCY_RUNS = 20
# Measured on ELPV: synthetic anomalies (local edits of good images) do not show how a family scores real
# defective parts, and ranked families differently from the test (docs/train-auto.md); so the table says so.
SYNTHETIC_ONLY = ("**Chosen on synthetic anomalies only.** They can rank families differently from real defects "
                  "(measured on ELPV: docs/train-auto.md). Give `--val-defects N` with a few real NG images so that "
                  "real defects weigh half of the choice.")


@dataclass
class Candidate:
    family: str
    status: str = "planned"  # planned | trained | skipped | failed
    reason: str = ""
    estimate: dict = field(default_factory=dict)  # minutes: full, least (one epoch), planned
    settings: dict = field(default_factory=dict)  # what auto set: max_minutes, epochs
    minutes: float | None = None  # measured: training + validation
    validation_auroc: float | None = None
    validation_kinds: list = field(default_factory=list)
    latency_ms: float | None = None
    size_mb: float | None = None
    chosen: bool = False

    def row(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def main(args) -> int:
    from .device import hardware_from_args
    from .train import input_spec, set_threads, training_split

    if not args.budget_minutes or args.budget_minutes <= 0:
        raise LinesideError(f"--budget-minutes {args.budget_minutes}: give the minutes training may take, e.g. 30")
    families = parse_families(args.families)
    set_threads(args.threads)
    started = time.monotonic()
    deadline = started + 60 * args.budget_minutes
    hardware = hardware_from_args(args)
    if hardware.world_size > 1:
        raise LinesideError("train auto runs in one process (it times each candidate on this machine): start it "
                            "without torchrun, with --device cuda for one GPU")
    spec = input_spec(args)
    split = training_split(args)
    out = Path(args.out)
    prepare_out(out)
    print(f"data: {split.name}: {len(split.train)} train, {len(split.val)} validation"
          + (f" (+{len(split.val_defects)} defect)" if split.val_defects else "") + f"; device: {hardware.describe()}")
    options = {k: v for k, v in vars(args).items() if k not in ("handler", "command", "budget_minutes",
                                                                 "latency_ms", "families")}
    options.update(yes=True)  # the plan already fitted every run to the budget
    candidates = [estimate(family, spec, split, options, hardware) for family in families]
    plan(candidates, (deadline - time.monotonic()) / 60)
    print(format_plan(candidates))
    for candidate in candidates:
        if candidate.status != "planned":
            continue
        left = (deadline - time.monotonic()) / 60
        if candidate.estimate["planned"] > left * 1.1:
            skip(candidate, f"the candidates before it left {left:.1f} minutes of the budget; it needs about "
                 f"{candidate.estimate['planned']:.1f}")
            continue
        train_candidate(candidate, spec, split, options, hardware, out / "candidates" / candidate.family)
    winner = choose(candidates, args.latency_ms)
    table = write_table(out, candidates, args, winner, (time.monotonic() - started) / 60, len(split.val_defects))
    print(table)
    if winner is None:
        raise LinesideError(no_winner_advice(candidates, args.latency_ms))
    promote(out, winner, args)
    print(f"chose {winner.family} (validation AUROC {winner.validation_auroc:.4f}); the run is {out} "
          f"(the others are under {out / 'candidates'}); next: `lineside evaluate {out}` and "
          f"`lineside export {out} --out BUNDLE`")
    return 0


def parse_families(text: str | None) -> list[str]:
    if not text:
        return list(CANDIDATES)
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown or not names:
        raise LinesideError(f"--families {text!r}: choose among {', '.join(CANDIDATES)} (or leave it out: all)")
    return names


def prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise LinesideError(f"--out {out} exists and is not empty: give a new folder (auto writes the winner's run "
                            "and every candidate there)")
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------- estimate and plan


def estimate(family: str, spec, split, options: dict, hardware) -> Candidate:
    """Build the family and time its unit of work here; a family that cannot be built at this input is skipped."""
    import torch

    from .context import TrainContext
    from .families import load_family
    from .schedule import PLANS, time_step
    from .validation import GOOD_IMAGES, PER_GOOD

    candidate = Candidate(family)
    module = load_family(family)
    try:
        with torch.random.fork_rng():  # probes leave the runs' random draws alone
            model = module.build({"seed": options.get("seed", 0)}, spec).to(hardware.device)
            context = TrainContext(split, spec, options, log=lambda *_: None, hardware=hardware)
            n = max(1, min(8, int(options.get("batch_size") or 16)))  # scoring runs in batches
            x = torch.randint(0, 256, (n, spec.channels, spec.height, spec.width), dtype=torch.uint8)
            with torch.no_grad():
                forward_s = time_step(lambda: model(x.to(hardware.device))) / n  # per image
            if family in PLANS:
                steps, step_fn = PLANS[family](model, context)
                step_s = time_step(step_fn)
    except (LinesideError, ValueError, RuntimeError) as exc:
        return skip(candidate, f"cannot be built for this input ({spec.height}x{spec.width}x{spec.channels}): "
                    f"{first_line(exc)}")
    val_images = GOOD_IMAGES * (1 + PER_GOOD) + len(split.val_defects)
    passes = VALIDATION_PASSES.get(family, 1)
    epochs = EPOCHS[family](model, options) if family in PLANS else 1
    passes = epochs if passes == "epochs" else passes
    scoring = forward_s * (val_images * passes + 2 * LATENCY_RUNS + len(split.val)) / 60  # + export, val scores
    if family in PLANS:
        per_epoch = steps / max(epochs, 1) * step_s / 60
        candidate.estimate = {"full": round(epochs * per_epoch + scoring, 2),
                              "least": round(per_epoch + forward_s * val_images / 60 + scoring / passes, 2),
                              "step_seconds": round(step_s, 4), "epochs": epochs, "epoch_minutes": per_epoch,
                              "scoring_minutes": scoring}
    else:  # passes over the training images, and what the family does beyond them (its own estimate)
        overhead = getattr(module, "fit_overhead_seconds", None)
        extra = overhead(model, len(split.train)) / 60 if overhead else 0.0
        fit = forward_s * len(split.train) * FIT_PASSES.get(family, 1) / 60 + extra
        candidate.estimate = {"full": round(fit + scoring, 2), "least": round(fit + scoring, 2),
                              "forward_seconds": round(forward_s, 4), "overhead_minutes": round(extra, 2)}
    return candidate


def plan(candidates: list[Candidate], budget: float) -> None:
    """Closed-form families first (their cost is fixed), then an equal share of what is left for each gradient
    family whose least run fits it; a family that does not fit is skipped with the numbers."""
    live = [c for c in candidates if c.status == "planned"]
    for c in [c for c in live if c.family in CLOSED_FORM]:
        if c.estimate["full"] <= budget:
            c.estimate["planned"] = c.estimate["full"]
            budget -= c.estimate["full"]
        else:
            passes = FIT_PASSES.get(c.family, 1)
            skip(c, f"{'one pass' if passes == 1 else f'{passes} passes'} over the training images take"
                 f"{'s' if passes == 1 else ''} about {c.estimate['full']:.1f} minutes here, {budget:.1f} are left "
                 "of the budget")
    gradient = sorted((c for c in live if c.family not in CLOSED_FORM), key=lambda c: c.estimate["least"])
    count = len(gradient)
    while count and gradient[count - 1].estimate["least"] > budget / count:
        count -= 1
    share = budget / count if count else budget
    for c in gradient[count:]:
        skip(c, f"its shortest run (one epoch + validation) takes about {c.estimate['least']:.1f} minutes here; "
             f"its share of the budget would be {budget / (count + 1):.1f} (raise --budget-minutes, or lower --size)")
    for c in gradient[:count]:
        c.estimate["planned"] = round(min(share, c.estimate["full"]), 2)
        if c.estimate["full"] <= share:
            continue  # the family's whole default schedule fits
        train_minutes = max(share - c.estimate["scoring_minutes"], c.estimate["epoch_minutes"])
        if c.family == "dinov2-lora":  # no wall-clock cap: fewer epochs
            epochs = max(1, math.floor(train_minutes / max(c.estimate["epoch_minutes"], 1e-9)))
            c.settings["epochs"] = min(epochs, c.estimate["epochs"])
        else:
            c.settings["max_minutes"] = round(train_minutes, 3)


def skip(candidate: Candidate, reason: str) -> Candidate:
    candidate.status, candidate.reason = "skipped", reason
    return candidate


def first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def format_plan(candidates: list[Candidate]) -> str:
    lines = ["plan:"]
    for c in candidates:
        if c.status == "planned":
            cap = ", ".join(f"{k} {v:g}" for k, v in c.settings.items())
            lines.append(f"  {c.family}: about {c.estimate['planned']:.1f} min" + (f" ({cap})" if cap else ""))
        else:
            lines.append(f"  {c.family}: skipped: {c.reason}")
    return "\n".join(lines)


# ---------------------------------------------------------------- train, measure, choose


def train_candidate(candidate: Candidate, spec, split, options: dict, hardware, out: Path) -> None:
    from dataclasses import replace

    from .train import CNN_FAMILIES, train_run

    hardware = replace(hardware, channels_last=hardware.device.type != "cpu" and candidate.family in CNN_FAMILIES)
    config = {"seed": options.get("seed", 0), **candidate.settings}
    opts = {**options, **candidate.settings}
    started = time.monotonic()
    print(f"--- {candidate.family} ---", flush=True)
    try:
        training = train_run(candidate.family, config, spec, split, out, options=opts, hardware=hardware)
    except LinesideError as exc:
        candidate.status, candidate.reason = "failed", first_line(exc)
        print(f"{candidate.family} failed: {candidate.reason}")
        return
    candidate.minutes = round((time.monotonic() - started) / 60, 2)
    candidate.status = "trained"
    candidate.validation_auroc = training.get("validation_auroc")
    candidate.validation_kinds = training.get("validation", {}).get("kinds", [])
    if candidate.validation_auroc is None:
        candidate.reason = training.get("validation_skipped", "no validation AUROC")
    candidate.latency_ms, candidate.size_mb = measure_graph(out, options.get("threads"))


def measure_graph(run: Path, threads: int | None) -> tuple[float, float]:
    """(median ms of one image through the exported ONNX graph with ONNX Runtime here, the graph's MB)."""
    from edge_infer.preprocess import InputSpec

    from .export import export_onnx
    from .run import load_run

    model, record = load_run(run)
    spec = InputSpec.from_dict(record["input"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, spec, path, max_batch=2)
        stats = onnx_latency(path, spec, threads, warmup=5, repeats=LATENCY_RUNS)
        return round(stats["p50"], 3), round(path.stat().st_size / 2**20, 2)


def onnx_latency(path: Path, spec, threads: int | None, warmup: int = 20, repeats: int = 100) -> dict:
    """Latency statistics (ms) of one uint8 image through an ONNX graph with ONNX Runtime (batch 1)."""
    import numpy as np

    from benchmarks.stats import summarize
    from edge_infer.backends.ort import OrtBackend

    image = np.random.default_rng(0).integers(0, 256, (1, spec.channels, spec.height, spec.width), dtype=np.uint8)
    backend = OrtBackend(path, spec, max_batch=2, threads=threads)
    try:
        for _ in range(warmup):
            backend.run(image)
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            backend.run(image)
            samples.append((time.perf_counter() - started) * 1000)
    finally:
        backend.close()
    return summarize(samples)


def choose(candidates: list[Candidate], latency_ms: float | None) -> Candidate | None:
    """The highest validation AUROC among trained candidates within ``latency_ms``; ties: the faster."""
    eligible = []
    for c in candidates:
        if c.status != "trained" or c.validation_auroc is None:
            continue
        if latency_ms is not None and (c.latency_ms is None or c.latency_ms > latency_ms):
            c.reason = f"{c.latency_ms:.2f} ms per image is over --latency-ms {latency_ms:g}"
            continue
        eligible.append(c)
    if not eligible:
        return None
    winner = max(eligible, key=lambda c: (c.validation_auroc, -(c.latency_ms or 0.0)))
    winner.chosen = True
    return winner


def no_winner_advice(candidates: list[Candidate], latency_ms: float | None) -> str:
    trained = [c for c in candidates if c.status == "trained"]
    if trained and latency_ms is not None:
        fastest = min(trained, key=lambda c: c.latency_ms or math.inf)
        return (f"no candidate scores an image within --latency-ms {latency_ms:g} on this machine (the fastest, "
                f"{fastest.family}, takes {fastest.latency_ms:.2f} ms): raise --latency-ms or lower --size; the "
                "table above and the candidates' runs are kept")
    return ("no candidate could be trained and validated within --budget-minutes: see the reasons in the table "
            "above; raise --budget-minutes or lower --size")


def promote(out: Path, winner: Candidate, args) -> None:
    """The winner's run becomes ``out`` itself; its record says how it was chosen."""
    source = out / "candidates" / winner.family
    for item in list(source.iterdir()):
        shutil.move(str(item), str(out / item.name))
    source.rmdir()
    record = json.loads((out / RECORD).read_text())
    record["auto"] = {"chosen_by": "validation_auroc" + (f" within --latency-ms {args.latency_ms:g}"
                                                         if args.latency_ms is not None else ""),
                      "budget_minutes": args.budget_minutes, "table": "auto.json", "candidates": "candidates/"}
    write_json_atomic(out / RECORD, record)


def write_table(out: Path, candidates: list[Candidate], args, winner: Candidate | None, minutes: float,
                real_defects: int) -> str:
    rows = [c.row() for c in candidates]
    write_json_atomic(out / "auto.json", {"budget_minutes": args.budget_minutes, "latency_ms": args.latency_ms,
                                          "minutes_used": round(minutes, 2), "chosen": winner.family if winner else None,
                                          "real_defects_in_validation": real_defects, "candidates": rows})
    lines = [f"# train auto: {args.data}, {args.size} px, {args.channels} channel(s); budget {args.budget_minutes:g} "
             f"min, used {minutes:.1f}" + (f"; latency limit {args.latency_ms:g} ms" if args.latency_ms else ""), "",
             "| family | status | validation AUROC | latency ms (ORT, batch 1) | size MB | minutes | note |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in candidates:
        status = "**chosen**" if c.chosen else c.status
        lines.append(f"| {c.family} | {status} | {fmt(c.validation_auroc, '.4f')} | {fmt(c.latency_ms, '.2f')} | "
                     f"{fmt(c.size_mb, '.2f')} | {fmt(c.minutes, '.2f')} | {c.reason} |")
    if not real_defects:
        lines += ["", SYNTHETIC_ONLY]
    text = "\n".join(lines) + "\n"
    (out / "auto.md").write_text(text)
    return text


def fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)
