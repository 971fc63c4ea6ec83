"""`lineside bench train-step`: where a family's training time goes on this machine, and how two
source trees compare on it.

Each (family, tree) run is a real `lineside train` in its own process, with PYTHONPATH set to the
tree (train_step_probe.py instruments it). From the probe's timestamps, per run:

- **data**: the wait for each batch of ``TrainContext.loader`` inside ``fit`` (decode, resize,
  collate, a worker's hand-over; a batch kept in memory costs only the hand-over);
- **use**: the family's own work on a batch before it asks for the next one (a feature pass for
  rx and dinov2-knn, synthesis + a training step for cutpaste and draem);
- **step**: the span between two consecutive optimiser steps, less any batch wait inside it: the
  training step (forward, loss, backward, update, and per-step synthesis) whatever the batches
  come from (rddpm's images in memory, adtr's feature cache, dinov2-lora's tokens);
- **fit**: the whole ``fit`` call (what `train` reports as the run's seconds).

The first ``--warmup`` batches and steps of a run are left out of the per-batch and per-step
figures (lazy allocation, oneDNN's first-call kernels); totals count everything. With
``--baseline TREE`` the runs alternate between the trees (order reversed every repeat), so load
that drifts during the benchmark falls on both.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edge_infer.bundle import write_json_atomic
from edge_infer.errors import LinesideError

from .stats import bootstrap_ratio, summarize

HERE = Path(__file__).resolve().parent
PROBE = HERE / "train_step_probe.py"
LAUNCH = 'import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name="__main__")'

# Small versions of each family: every option here exists in the trees before and after issue 21.
# "{epochs}" is --epochs; sizes come from --size (ViT families: rounded down to their 14-px patches).
# dinov2-lora trains on synthetic anomalies of 4 kinds and as many good images: --per-kind images // 8
# gives it about --images training images, like the other families.
FAMILY_ARGS = {
    "rx": ["--feature-dim", "24"],
    "adtr": ["--backbone", "tf_efficientnet_lite0", "--hidden-dim", "32", "--heads", "2", "--ff-dim", "64",
             "--encoder-layers", "1", "--decoder-layers", "1", "--epochs", "{epochs}"],
    "rddpm": ["--channels", "1", "--unet", "tiny", "--epochs", "{epochs}", "--max-minutes", "30", "--t0", "100",
              "--steps", "2"],
    "cutpaste": ["--channels", "1", "--base-channels", "4", "--epochs", "{epochs}"],
    "draem": ["--channels", "1", "--base-channels", "4", "--epochs", "{epochs}"],
    "dinov2-lora": ["--backbone", "vits14", "--depth", "2", "--layers", "0,1", "--epochs", "{epochs}",
                    "--per-kind", "{per_kind}", "--adapt", "lora", "--rank", "4"],
    "dinov2-knn": ["--backbone", "vits14", "--depth", "2", "--bank-size", "30"],
}
VIT_FAMILIES = {"dinov2-lora", "dinov2-knn"}


def main(args) -> int:
    from . import machine

    families = parse_families(args.family)
    trees = [("current", HERE.parent)]
    if args.baseline:
        baseline = Path(args.baseline).resolve()
        if not (baseline / "train_host" / "train.py").is_file():
            raise LinesideError(f"--baseline {args.baseline}: not a lineside source tree (no train_host/train.py); "
                                "make one with `git worktree add DIR COMMIT`")
        trees.insert(0, ("baseline", baseline))
    doc = {"schema": 1, "kind": "train-step", "command": command_line(args), "machine": machine.describe(),
           "settings": {"data": args.data, "images": args.images, "epochs": args.epochs,
                        "batch_size": args.batch_size, "size": args.size, "warmup": args.warmup,
                        "repeats": args.repeats, "threads": args.threads},
           "trees": {name: tree_info(path) for name, path in trees}, "runs": []}
    for repeat in range(args.repeats):
        order = trees if repeat % 2 == 0 else trees[::-1]
        for family in families:
            for name, path in order:
                print(f"repeat {repeat + 1}/{args.repeats}: {family} on {name} ({path}) ...", flush=True)
                run = run_one(family, path, args)
                doc["runs"].append({"family": family, "tree": name, "repeat": repeat, **run})
    doc["summary"] = summary(doc["runs"], families, [name for name, _ in trees])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "train-step.json", doc)
    print(table(doc))
    print(f"\nwrote {out / 'train-step.json'}")
    return 0 if all(r["status"] == "ok" for r in doc["runs"] if r["tree"] == "current") else 1


def parse_families(names: list[str]) -> list[str]:
    if names == ["all"]:
        return list(FAMILY_ARGS)
    unknown = [n for n in names if n not in FAMILY_ARGS]
    if unknown:
        raise LinesideError(f"unknown famil{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}: choose from "
                            f"{', '.join(FAMILY_ARGS)} (or all)")
    return names


def train_argv(family: str, args, out: Path) -> list[str]:
    size = args.size - args.size % 14 if family in VIT_FAMILIES else args.size
    if size < 14:
        raise LinesideError(f"--size {args.size} is too small for {family}: its ViT needs at least 14 px")
    argv = ["train", family, "--data", str(args.data), "--out", str(out), "--limit", str(args.images),
            "--size", str(size), "--batch-size", str(args.batch_size), "--seed", "0"]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    return argv + [a.format(epochs=args.epochs, per_kind=max(1, args.images // 8)) for a in FAMILY_ARGS[family]]


def run_one(family: str, tree: Path, args) -> dict:
    """One probe process: the tree's own `lineside train`, timed; its events summarised."""
    with tempfile.TemporaryDirectory(prefix="lineside-train-step-") as tmp:
        tmp = Path(tmp)
        argv = train_argv(family, args, tmp / "run")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        load_before = os.getloadavg()
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-c", LAUNCH, str(PROBE), str(tmp / "events.json"), *argv],
                                  cwd=tmp, env=env, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            return {"status": "failed", "reason": f"did not finish in {args.timeout} s (--timeout)",
                    "argv": argv}
        common = {"argv": argv, "process_s": round(time.perf_counter() - started, 2),
                  "load_average": {"before": [round(v, 2) for v in load_before],
                                   "after": [round(v, 2) for v in os.getloadavg()]}}
        events_path = tmp / "events.json"
        if proc.returncode != 0 or not events_path.is_file():
            return {"status": "failed", "reason": last_error(proc.stderr), **common}
        events = json.loads(events_path.read_text())
    return {"status": "ok", **common, "threads": events["threads"], "torch": events["torch"],
            **timings(events, args.warmup)}


def last_error(stderr: str) -> str:
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr or "") if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["exited without a message"])[-1][:500]


def timings(events: dict, warmup: int) -> dict:
    """The probe's timestamps → per-batch and per-step samples (ms) and totals (s)."""
    batches = [b for b in events["batches"] if b["in_fit"]]
    fetch = [b["fetch"] for b in batches]
    data = [1000 * (b - a) for a, b in fetch]
    use = [1000 * (b["use"][1] - b["use"][0]) for b in batches]
    steps = step_spans(events["steps"], fetch)
    steps_cpu = step_spans(events["steps_cpu"], [b["fetch_cpu"] for b in batches])
    loaders: dict[str, dict] = {}
    for b in batches:
        label = re.sub(r"\b\d+\b", "N", events["loaders"][b["loader"]]) or "(unlabelled)"  # epoch 3 → epoch N
        entry = loaders.setdefault(label, {"batches": 0, "images": 0, "data_s": 0.0, "use_s": 0.0})
        entry["batches"] += 1
        entry["images"] += b["images"]
        entry["data_s"] += b["fetch"][1] - b["fetch"][0]
        entry["use_s"] += b["use"][1] - b["use"][0]
    fit_s = events["fit"][1] - events["fit"][0] if events["fit"] else None
    return {
        "fit_s": round(fit_s, 3) if fit_s is not None else None,
        "data_total_s": round(sum(data) / 1000, 3), "use_total_s": round(sum(use) / 1000, 3),
        "steps": len(events["steps"]), "step_total_s": round(sum(steps) / 1000, 3),
        "loaders": {k: {**v, "data_s": round(v["data_s"], 3), "use_s": round(v["use_s"], 3)}
                    for k, v in loaders.items()},
        "samples_ms": {"data": data[warmup:], "use": use[warmup:], "step": steps[warmup:]},
        "cpu_samples_ms": {"data": [1000 * (b - a) for a, b in (x["fetch_cpu"] for x in batches)][warmup:],
                           "use": [1000 * (b - a) for a, b in (x["use_cpu"] for x in batches)][warmup:],
                           "step": steps_cpu[warmup:]},
    }


def step_spans(steps: list[float], fetches: list[list[float]]) -> list[float]:
    """ms between consecutive optimiser steps, less the batch waits that fall between them."""
    spans = []
    for previous, current in zip(steps, steps[1:]):
        waiting = sum(b - a for a, b in fetches if a >= previous and b <= current)
        spans.append(1000 * (current - previous - waiting))
    return spans


def summary(runs: list[dict], families: list[str], trees: list[str]) -> dict:
    """Per family and tree: samples pooled over repeats; with two trees, current/baseline ratios."""
    out = {}
    for family in families:
        per_tree = {}
        for tree in trees:
            ok = [r for r in runs if r["family"] == family and r["tree"] == tree and r["status"] == "ok"]
            if not ok:
                failed = [r["reason"] for r in runs if r["family"] == family and r["tree"] == tree]
                per_tree[tree] = {"status": "failed", "reason": failed[0] if failed else "not run"}
                continue
            pooled = {f"{k}{clock}": [x for r in ok for x in r[samples][k]] for k in ("data", "use", "step")
                      for clock, samples in (("", "samples_ms"), ("_cpu", "cpu_samples_ms"))}
            per_tree[tree] = {"status": "ok", "runs": len(ok),
                              "fit_s": [r["fit_s"] for r in ok],
                              "data_total_s": [r["data_total_s"] for r in ok],
                              **{f"{k}_ms": summarize(v) if v else None for k, v in pooled.items()},
                              "_pooled": pooled}
        entry = {"trees": per_tree}
        if len(trees) == 2 and all(per_tree[t]["status"] == "ok" for t in trees):
            entry["ratios"] = ratios(per_tree[trees[0]]["_pooled"], per_tree[trees[1]]["_pooled"])
        for t in per_tree.values():
            t.pop("_pooled", None)
        out[family] = entry
    return out


def ratios(base: dict, cand: dict) -> dict:
    """current/baseline: mean data wait per batch (caches make it bimodal, so the mean is the cost per
    epoch), median step and median batch use; each with a 95 % bootstrap interval."""
    out = {}
    for key, stat in (("data", "mean"), ("step", "p50"), ("use", "p50"), ("step_cpu", "p50"), ("use_cpu", "p50")):
        if len(base[key]) >= 2 and len(cand[key]) >= 2:
            out[key] = bootstrap_ratio(base[key], cand[key], stat)
    return out


def headline(family: str, tree: dict) -> str:
    """The figure a family's training time is made of: the step, or the feature pass for closed forms."""
    if tree["status"] != "ok":
        return f"failed: {tree['reason']}"
    nan = {"mean": float("nan"), "p50": float("nan"), "p90": float("nan"), "count": 0}
    fit = "/".join(f"{s:.1f}" for s in tree["fit_s"] if s is not None)
    data = tree["data_ms"] or nan
    what = "step" if tree["step_ms"] else "pass"
    work = (tree["step_ms"] or tree["use_ms"]) or nan
    cpu = (tree["step_cpu_ms"] if tree["step_ms"] else tree["use_cpu_ms"]) or nan
    return (f"{fit:>11s}  {data['mean']:9.1f} {data['p50']:8.1f}  {what} {work['p50']:8.1f} {work['p90']:8.1f}"
            f"  {cpu['p50']:8.1f}  {work['count']:5d}")


def table(doc: dict) -> str:
    from .machine import summary as machine_summary

    s = doc["settings"]
    lines = [f"lineside bench train-step: data {s['data']}, {s['images']} images, {s['epochs']} epoch(s), batch "
             f"{s['batch_size']}, size {s['size']}, warm-up {s['warmup']} batches/steps excluded, {s['repeats']} "
             "repeat(s)", machine_summary(doc["machine"]), "",
             f"{'family':<12s} {'tree':<9s} {'fit s':>11s}  {'data ms/batch':>18s}  {'step or pass ms':>22s}  "
             f"{'CPU ms':>8s}  {'n':>5s}",
             f"{'':<12s} {'':<9s} {'(per run)':>11s}  {'mean':>9s} {'p50':>8s}  {'':4s} {'p50':>8s} {'p90':>8s}"
             f"  {'p50':>8s}"]
    for family, entry in doc["summary"].items():
        for tree, figures in entry["trees"].items():
            lines.append(f"{family:<12s} {tree:<9s} {headline(family, figures)}")
        for key, r in entry.get("ratios", {}).items():
            lines.append(f"{'':<12s} current/baseline {key} ({r['stat']}): {r['ratio']:.2f} "
                         f"[{r['low']:.2f}, {r['high']:.2f}]")
    return "\n".join(lines)


def tree_info(path: Path) -> dict:
    """The tree's path and commit (with a flag when it has uncommitted changes), where git can say."""
    info = {"path": str(path)}
    try:
        info["commit"] = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                                        text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=10).stdout
        info["uncommitted_changes"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        info["commit"] = None
    return info


def command_line(args) -> str:
    from .report import command_of

    return command_of(args, ("family",))
