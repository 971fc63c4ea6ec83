"""`lineside demo`: the whole path on ELPV solar cells, on the CPU.

Train `rx`, evaluate it, export a bundle, set a first threshold from held-out good cells,
score the test cells through the bundle with the runtime's own code, and report a
confusion matrix, image AUROC and latency. The ELPV dataset (Deitsch et al.) is licensed
CC BY-NC-SA 4.0: non-commercial use only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

QUICK_LIMIT = 60


def main(args) -> int:
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    step = Steps(6)

    step("loading the ELPV split (CC BY-NC-SA 4.0: non-commercial use only)")
    from train_host.data import load_split
    from train_host.train import set_threads

    set_threads(args.threads)
    split = load_split("elpv", limit=QUICK_LIMIT if args.quick else None)
    print(f"    {len(split.train)} train (good), {len(split.val)} validation (good), {len(split.test)} test "
          f"({sum(s.label for s in split.test)} defective)")

    step("training rx (random-init resnet18 features; closed-form Gaussian fit)")
    from edge_infer.preprocess import InputSpec
    from train_host.train import train_run

    spec = InputSpec(224, 224, 3)
    run = out / "run"
    training = train_run("rx", {}, spec, split, run, options={"batch_size": 16, "seed": 0})
    print(f"    fitted in {training['seconds']:.1f} s")

    step("evaluating with PyTorch on the test split")
    from train_host.evaluate import evaluate_model
    from train_host.run import load_run

    model, record = load_run(run)
    metrics = evaluate_model(model, record, split)
    print(f"    image AUROC {metrics['image_auroc']:.4f}, AUPRC {metrics['image_auprc']:.4f}")
    if "per_defect" in metrics:  # ELPV's classes: probability 1 and 2/3 (docs/data.md)
        print("    per defect class: " + ", ".join(f"{kind} {row['image_auroc']:.4f} ({row['n']} cells)"
                                                 for kind, row in metrics["per_defect"].items()))

    step("exporting the ONNX bundle (parity-checked against PyTorch)")
    from train_host.export import export_bundle

    bundle = export_bundle(run, out / "bundle", data="elpv", force=True)
    parity = bundle.manifest.files["model.onnx"].checks["parity"]
    print(f"    max relative error vs PyTorch: score {parity['score_rel_err']:.1e}, map {parity['map_rel_err']:.1e}")

    step("setting a first threshold from held-out good cells (quantile method, 2% target false-reject rate)")
    thresholds = first_threshold(bundle, split.val)
    print(f"    image threshold {thresholds.image:.4f} from {len(split.val)} validation cells")

    step("scoring the test cells through the bundle (ONNX Runtime, CPU)")
    report = score_test(bundle, split.test, threads=args.threads)
    report.update(torch_metrics=metrics, parity=parity, threshold=thresholds.model_dump(),
                  split=split.info, seconds=round(time.perf_counter() - started, 1))
    (out / "demo-report.json").write_text(json.dumps(report, indent=2))
    print_report(report)
    print(f"\nreport: {out / 'demo-report.json'}   bundle: {bundle.root}   total {report['seconds']:.0f} s")
    return 0


class Steps:
    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def __call__(self, text: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {text}  (+{time.perf_counter() - self.t0:.0f} s)", flush=True)


def first_threshold(bundle, good_samples, target_frr: float = 0.02):
    """The calibration package's quantile method on the held-out good cells, through the bundle."""
    from calibration.quantile import quantile_threshold
    from edge_infer.bundle import Thresholds
    from edge_infer.imageio import read_image
    from edge_infer.score import Scorer

    scores = Scorer(bundle).run([read_image(s.path) for s in good_samples]).score
    result = quantile_threshold(scores, target_frr=target_frr)
    print(f"    {result.message}")
    thresholds = Thresholds(image=result.threshold, provenance={**result.to_dict(), "source": "lineside demo"})
    bundle.write_thresholds(thresholds, "lineside demo (calibration.quantile)")
    return thresholds


def score_test(bundle, samples, threads=None) -> dict:
    from benchmarks.stats import summarize
    from edge_infer.score import Scorer
    from train_host.metrics import image_auroc

    scorer = Scorer(bundle, threads=threads)
    labels = {str(s.path): s.label for s in samples}
    verdicts, stages = [], {}
    for scored in scorer.score_paths([s.path for s in samples], batch=1):
        verdicts.append((labels[scored.source], scored.verdict))
        for stage, ms in scored.verdict.latency_ms.items():
            stages.setdefault(stage, []).append(ms)
    stages["total"] = [sum(v) for v in zip(*stages.values())]
    scored_ok = [(y, v) for y, v in verdicts if v.score is not None]
    y = np.array([y for y, _ in scored_ok])
    s = np.array([v.score for _, v in scored_ok])
    ng = np.array([v.status == "NG" for _, v in scored_ok])
    confusion = {"good_OK": int(((y == 0) & ~ng).sum()), "good_NG": int(((y == 0) & ng).sum()),
                 "defect_OK": int(((y == 1) & ~ng).sum()), "defect_NG": int(((y == 1) & ng).sum()),
                 "ERROR": sum(v.status == "ERROR" for _, v in verdicts)}
    return {"bundle_image_auroc": image_auroc(y, s), "confusion": confusion,
            "latency_ms": {k: summarize(v) for k, v in stages.items()}, "backend": scorer.backend.describe()}


def print_report(report: dict) -> None:
    from benchmarks.stats import format_row

    c = report["confusion"]
    print("\n    confusion matrix (rows: truth, columns: verdict)")
    print(f"    {'':>8s} {'OK':>6s} {'NG':>6s}")
    print(f"    {'good':>8s} {c['good_OK']:6d} {c['good_NG']:6d}")
    print(f"    {'defect':>8s} {c['defect_OK']:6d} {c['defect_NG']:6d}      errors: {c['ERROR']}")
    print(f"\n    image AUROC through the bundle: {report['bundle_image_auroc']:.4f} "
          f"(PyTorch: {report['torch_metrics']['image_auroc']:.4f})")
    print("    per-image latency, batch 1, CPU:")
    for stage, stats in report["latency_ms"].items():
        print("    " + format_row(stage, stats))
