"""The calibration report: one JSON with every number, and PNG figures a person can read.

- ``scores.png``: good vs defect score histograms with the threshold;
- ``roc_pr.png``: ROC and precision-recall curves with the operating point (needs defects);
- ``tail.png``: the good scores' tail (share above each score, log scale), the target
  rate, the threshold and, for ``evt``, the fitted generalised Pareto tail.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from edge_infer.bundle import write_json_atomic
from edge_infer.numeric import trapezoid

from .labelled import candidates
from .quantile import ThresholdResult

GOOD, DEFECT, THRESH = "#2b7bba", "#d7301f", "#222222"


def write_report(out: Path, report: dict, result: ThresholdResult, good, defects=None) -> dict:
    """Draw the figures into ``out``, add their names to the report and write report.json."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    good = np.sort(np.asarray(good, dtype=np.float64))
    defects = None if defects is None or np.size(defects) == 0 else np.sort(np.asarray(defects, np.float64))
    figures = {"scores": histogram(out / "scores.png", result, good, defects),
               "tail": tail(out / "tail.png", result, good)}
    if defects is not None:
        figures["roc_pr"] = roc_pr(out / "roc_pr.png", result, good, defects)
    report["figures"] = figures
    write_json_atomic(out / "report.json", report)
    return report


def _title(result: ThresholdResult) -> str:
    text = (f"{result.method}: threshold {result.threshold:.4g}   FRR {result.observed_frr:.2%} seen, "
            f"≤ {result.frr_bound:.2%} at {result.confidence:.0%}")
    if result.escape_rate is not None:
        text += f"   escapes {result.escape_rate:.1%} (≤ {result.escape_bound:.1%})"
    return text


def histogram(path: Path, result: ThresholdResult, good: np.ndarray, defects: np.ndarray | None) -> str:
    import matplotlib.pyplot as plt

    both = good if defects is None else np.concatenate([good, defects])
    lo, hi = np.quantile(both, [0.0, 1.0])
    hi = max(hi, result.threshold)
    bins = np.linspace(lo, hi + 1e-12, 60)
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    ax.hist(good, bins=bins, color=GOOD, alpha=0.6, label=f"good (n={good.size})")
    if defects is not None:
        ax.hist(defects, bins=bins, color=DEFECT, alpha=0.6, label=f"defect (n={defects.size})")
    ax.axvline(result.threshold, color=THRESH, lw=2, ls="--", label=f"threshold {result.threshold:.4g}")
    ax.set_yscale("log")
    ax.set_xlabel("anomaly score (higher = more anomalous; above the threshold = NG)")
    ax.set_ylabel("images (log scale)")
    ax.set_title(_title(result), fontsize=10)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def tail(path: Path, result: ThresholdResult, good: np.ndarray) -> str:
    import matplotlib.pyplot as plt
    from scipy import stats

    n = good.size
    share_above = 1.0 - np.arange(1, n + 1) / (n + 1)  # plotting positions: never 0 on a log axis
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=110)
    ax.plot(good, share_above, ".", color=GOOD, ms=3, label="good scores: share above (empirical)")
    d = result.details
    if "shape" in d:
        xs = np.linspace(d["tail_start"], max(good[-1], result.threshold) * 1.02 + 1e-12, 200)
        fitted = d["tail_count"] / n * stats.genpareto.sf(xs - d["tail_start"], d["shape"], 0, d["scale"])
        ax.plot(xs, fitted, color="#ff7f00", lw=2,
                label=f"generalised Pareto tail (shape {d['shape']:.2f}, fit p={d['gof_pvalue']:.2f})")
        ax.axvline(d["tail_start"], color="#999999", lw=1, ls=":", label="tail start")
    if result.target_frr:
        ax.axhline(result.target_frr, color=DEFECT, lw=1.5, ls="-.", label=f"target FRR {result.target_frr:.2%}")
    ax.axvline(result.threshold, color=THRESH, lw=2, ls="--",
               label=f"threshold {result.threshold:.4g} (FRR ≤ {result.frr_bound:.2%})")
    ax.set_yscale("log")
    ax.set_ylim(bottom=min(share_above[-1], result.target_frr or 1, result.expected_frr or 1) / 3, top=1.2)
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("false-reject rate if the threshold were here")
    ax.set_title("\n".join(textwrap.wrap(f"good-score tail, {n} images: {result.message}", 120)), fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name


def curves(good: np.ndarray, defects: np.ndarray) -> dict:
    """ROC (FPR, TPR), PR (recall, precision) and their areas, from every distinct cut."""
    _, fp, tp = candidates(good, defects)
    fpr, tpr = fp / good.size, tp / defects.size
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    order = np.argsort(fpr, kind="stable")
    auroc = trapezoid(tpr[order], fpr[order])
    rec_order = np.argsort(tpr, kind="stable")
    ap = float(np.sum(np.diff(tpr[rec_order], prepend=0.0) * precision[rec_order]))
    return {"fpr": fpr, "tpr": tpr, "precision": precision, "auroc": auroc, "average_precision": ap}


def roc_pr(path: Path, result: ThresholdResult, good: np.ndarray, defects: np.ndarray) -> str:
    import matplotlib.pyplot as plt

    c = curves(good, defects)
    op_fpr, op_tpr = result.observed_frr, 1.0 - result.escape_rate
    op_prec = op_tpr * defects.size / max(op_tpr * defects.size + op_fpr * good.size, 1e-12)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8), dpi=110)
    left.plot(c["fpr"], c["tpr"], color=DEFECT, lw=2, label=f"ROC (AUROC {c['auroc']:.3f})")
    chance = np.concatenate([[0.0], np.logspace(np.log10(0.5 / good.size), 0, 100)])
    left.plot(chance, chance, color="#bbbbbb", ls=":", label="chance")
    # the rates a line can live with are small: a log-like axis (linear below one image in n) shows them
    left.set_xscale("symlog", linthresh=1.0 / good.size, linscale=0.5)
    left.plot(op_fpr, op_tpr, "o", color=THRESH, ms=8, label=f"threshold: FRR {op_fpr:.2%}, catch {op_tpr:.1%}")
    left.set_xlabel("false-reject rate (good parts rejected; log scale above 1/n)")
    left.set_ylabel("share of defects caught")
    right.plot(c["tpr"], c["precision"], color=GOOD, lw=2, label=f"PR (AP {c['average_precision']:.3f})")
    prior = defects.size / (defects.size + good.size)
    right.axhline(prior, color="#bbbbbb", ls=":", label=f"chance (share of defects {prior:.0%})")
    right.plot(op_tpr, op_prec, "o", color=THRESH, ms=8, label=f"threshold: precision {op_prec:.1%}")
    right.set_xlabel("recall (share of defects caught)")
    right.set_ylabel("precision (share of NG that are defects)")
    left.set_xlim(0, 1.05)
    right.set_xlim(-0.02, 1.02)
    for ax, title in ((left, "ROC"), (right, "precision-recall")):
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is left else "lower left", fontsize=9)
        ax.set_title(f"{title}: {good.size} good, {defects.size} defect images", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
