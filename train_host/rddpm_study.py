"""Robust vs MSE rddpm training at several contamination levels, side by side.

    python -m train_host.rddpm_study --data elpv --out STUDY [--robust huber] [--levels 0,0.05,0.1]
    python -m train_host.rddpm_study --latency RUN --out DIR [--ks 2,4,8]   # ONNX Runtime ms per K

For each contamination level it trains one rddpm run with the robust loss and one with MSE
(same split, seed, budget and selection protocol), then evaluates all of them on ONE test
set: the test split of the highest level, which holds none of the images any run trained
on (the contaminants of a lower level are a subset of those of a higher one). Results go to
STUDY/results.json and STUDY/report.md after every run, so an interrupted study keeps what
it finished; finished runs are reused when the study is started again.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

from edge_infer.bundle import write_json_atomic
from edge_infer.preprocess import InputSpec

from .data import load_split
from .data.records import subsample_both_classes
from .evaluate import evaluate_model
from .run import load_run
from .train import set_threads, train_run


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m train_host.rddpm_study", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="elpv")
    p.add_argument("--out", required=True)
    p.add_argument("--latency", metavar="RUN", help="instead of a study: export RUN at each K in --ks and time "
                   "ONNX Runtime on the CPU, batch 1")
    p.add_argument("--ks", default="2,4,8", help="step counts for --latency")
    p.add_argument("--repeats", type=int, default=200, help="timed runs per K for --latency")
    p.add_argument("--robust", default="huber", choices=["huber", "lts", "tukey"])
    p.add_argument("--levels", default="0,0.05,0.1", help="contamination shares, comma-separated")
    p.add_argument("--test-contamination", type=float, help="take the common test set from the split at this "
                   "contamination if it is above every level (by default the highest level's split, whose test set "
                   "no run trained on): to run a level alone and still compare with the other levels' runs")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--channels", type=int, default=1, choices=[1, 3])
    p.add_argument("--epochs", type=int, default=30, help="passes over the training images per run: a fixed step "
                   "count, so runs compare at equal training whatever else the machine is doing")
    p.add_argument("--max-minutes", type=float, default=24 * 60.0, help="wall-clock cap per run (default: none in "
                   "practice; a cap makes runs on a shared machine get different step counts)")
    p.add_argument("--losses", help="train only these of the robust loss and mse (comma-separated), e.g. to run "
                   "the two halves of a study side by side in two folders")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--test-limit", type=int, help="evaluate on a seeded subset of this many test images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--refit", action="store_true", help="redo the post-training steps (map statistics, t0/K "
                   "choice) of runs already in --out with the current code, keeping their trained UNets")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another rddpm config value for every run, e.g. --set unet=small")
    return p.parse_args(argv)


def extra_config(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def main(argv=None) -> int:
    args = parse(argv)
    set_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.latency:
        return latency(Path(args.latency), out, [int(k) for k in args.ks.split(",")], args.repeats, args.threads)
    levels = [float(v) for v in args.levels.split(",")]
    spec = InputSpec(args.size, args.size, args.channels)
    common = load_split(args.data, seed=args.seed, contamination=max(levels + [args.test_contamination or 0]))
    test = common.test
    if args.test_limit:
        test = subsample_both_classes(test, args.test_limit, args.seed)
    results = {"data": args.data, "spec": spec.to_dict(), "test_images": len(test),
               "test_defects": sum(s.label for s in test), "robust": args.robust,
               "epochs": args.epochs, "max_minutes": args.max_minutes, "runs": []}
    for level in levels:
        split = load_split(args.data, seed=args.seed, contamination=level)
        for loss in (args.losses.split(",") if args.losses else (args.robust, "mse")):
            run_dir = out / f"c{level:g}_{loss}"
            config = {"loss": loss, "epochs": args.epochs, "max_minutes": args.max_minutes, **extra_config(args.set)}
            if not (run_dir / "run.json").is_file():
                # yes: the study's epochs and cap are its own explicit choice, for unattended runs
                options = {"batch_size": args.batch_size, "seed": args.seed, "data": args.data,
                           "contamination": level, "yes": True}
                train_run("rddpm", config, spec, split, run_dir, options)
            elif args.refit:
                refit(run_dir, args.batch_size)
            model, record = load_run(run_dir)
            started = time.perf_counter()
            metrics = evaluate_model(model, record, replace(split, test=test), batch_size=32)
            training = record["training"]
            results["runs"].append({
                "contamination": level, "loss": loss, "image_auroc": metrics["image_auroc"],
                "image_auprc": metrics["image_auprc"], "train_contaminated": training["contaminated"],
                "train_seconds": training["train_seconds"], "train_steps": training["steps"],
                "t0": record["config"]["t0"], "steps": record["config"]["steps"],
                "eval_seconds": round(time.perf_counter() - started, 1), "run": str(run_dir)})
            write_json_atomic(out / "results.json", results)
            (out / "report.md").write_text(report(results))
            print(report(results), flush=True)
    return 0


def refit(run_dir: Path, batch_size: int = 16, log=print) -> None:
    """Redo a run's map statistics and t0/K choice with the current code; its trained UNet is kept as it is,
    so a change to those post-training steps is measured without training again."""
    from dataclasses import asdict

    from safetensors.torch import load_file

    from .context import TrainContext
    from .models import rddpm
    from .run import read_record, run_split
    from .train import save_fitted

    record = read_record(run_dir)
    spec = InputSpec.from_dict(record["input"])
    given = record["training"]["selection"].get("method") == "given"
    model = rddpm.build({**record["config"], **({} if given else {"t0": None, "steps": None})}, spec)
    weights = load_file(str(run_dir / record["weights"]))
    model.backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in weights.items()
                                    if k.startswith("backbone.")})
    split = run_split(record, record["data"]["data"], limit=record["data"].get("limit"))
    context = TrainContext(split, spec, {"batch_size": batch_size}, log)
    selection = rddpm.finish(model, context, rddpm.load_images(context, split.train, "train"))
    training = {**record["training"], "selection": selection, "config": asdict(model.config),
                "refit": "map statistics and t0/K redone by rddpm_study --refit; the UNet is the trained one"}
    save_fitted(run_dir, "rddpm", asdict(model.config), spec, model, split, training, batch_size, log,
                context.skipped)


def latency(run: Path, out: Path, ks: list[int], repeats: int, threads: int | None) -> int:
    """ONNX Runtime CPU latency of the run's graph unrolled at each K (batch 1, after 20 warm-up runs)."""
    from benchmarks.stats import format_row

    from .auto import onnx_latency
    from .export import export_onnx

    model, record = load_run(run)
    spec = InputSpec.from_dict(record["input"])
    rows = {}
    for k in ks:
        model.set_inference(model.t0, k)
        path = out / f"model_k{k}.onnx"
        export_onnx(model, spec, path, max_batch=2)  # a dynamic batch needs max > min
        rows[f"K={k}"] = onnx_latency(path, spec, threads, warmup=20, repeats=repeats)
        print(format_row(f"K={k}", rows[f"K={k}"]), flush=True)
    write_json_atomic(out / "latency.json", {"run": str(run), "t0": model.t0, "threads": threads,
                                             "input": spec.to_dict(), "latency_ms": rows})
    return 0


def report(results: dict) -> str:
    lines = [f"# rddpm: {results['robust']} vs MSE under contamination ({results['data']})", "",
             f"Input {results['spec']['height']}x{results['spec']['width']}x{results['spec']['channels']}, "
             f"{results.get('epochs')} epochs per run (cap {results['max_minutes']} min); one common test set of "
             f"{results['test_images']} images ({results['test_defects']} defective).", "",
             "| contamination | loss | train defects | image AUROC | image AUPRC | t0 | K | train s | steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["runs"]:
        lines.append(f"| {r['contamination']:.0%} | {r['loss']} | {r['train_contaminated']} | "
                     f"{r['image_auroc']:.4f} | {r['image_auprc']:.4f} | {r['t0']} | {r['steps']} | "
                     f"{r['train_seconds']} | {r['train_steps']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
