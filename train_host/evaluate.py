"""`lineside evaluate RUN [RUN ...]`: image (and pixel, where masks exist) metrics on the test split.

Several runs are scored side by side on the test images that none of them trained or validated
on (a contaminated run trained on some of the defects that another run's test set holds)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from edge_infer.bundle import write_json_atomic
from edge_infer.errors import LinesideError

from .infer import predict
from .metrics import breakdown, evaluate_scores
from .run import load_run, read_record, run_data, run_split
from .train import set_threads


def main(args) -> int:
    set_threads(args.threads)
    if len(args.run) > 1:
        return compare(args)
    if getattr(args, "correlate", False):
        raise LinesideError("--correlate ranks several runs: give two or more (e.g. RUN RUN/candidates/*)")
    model, record = load_run(args.run[0], device=args_device(args))
    data = run_data(record, args.data, args.run[0])
    split = run_split(record, data, args.limit)
    metrics = evaluate_model(model, record, split, batch_size=args.batch_size, groups=getattr(args, "groups", None))
    print(format_metrics(metrics))
    if found := format_breakdown(metrics):
        print(found)
    if args.json:
        write_json_atomic(Path(args.json), metrics)
        print(f"wrote {args.json}")
    return 0


def compare(args) -> int:
    records = [read_record(run) for run in args.run]
    datas = {run_data(record, args.data, run) for run, record in zip(args.run, records)}
    if len(datas) > 1:
        raise LinesideError(f"these runs were trained on different data ({', '.join(sorted(datas))}): give --data "
                            "to score them all on one dataset")
    data = datas.pop()
    splits = [run_split(record, data, args.limit) for record in records]
    shared = set.intersection(*({str(s.path) for s in split.test} for split in splits))
    test = [s for s in splits[0].test if str(s.path) in shared]
    if not test:
        raise LinesideError("these runs share no test image (each trained or validated on the others' test "
                            "images): compare runs made from one split, or give --data another dataset")
    rows = []
    for run, split in zip(args.run, splits):
        model, record = load_run(run, device=args_device(args))
        metrics = evaluate_model(model, record, replace(split, test=test), batch_size=args.batch_size,
                                 groups=getattr(args, "groups", None))
        rows.append({"run": str(run), **setting(record), **metrics})
    rows.sort(key=lambda row: row["contamination"])  # stable: runs at one level stay in the order given
    print(format_table(rows, test))
    extra = {}
    if getattr(args, "correlate", False):
        extra["validation_vs_test"] = correlation(rows)
        print(format_correlation(extra["validation_vs_test"]))
    if args.json:
        write_json_atomic(Path(args.json), {"test_images": len(test), "runs": rows, **extra})
        print(f"wrote {args.json}")
    return 0


def args_device(args):
    from .device import resolve_device

    return resolve_device(getattr(args, "device", "auto"))


def setting(record: dict) -> dict:
    """What tells runs apart in a comparison: family, training loss where it has one, contamination."""
    return {"family": record["family"], "loss": record["config"].get("loss", ""),
            "contamination": record["data"].get("contamination") or 0.0,
            "train_defects": record["training"].get("contaminated", 0),
            "validation_auroc": record["training"].get("validation_auroc")}


def evaluate_model(model, record: dict, split, batch_size: int = 16, groups: str | None = None) -> dict:
    """The metrics, and where the defects are missed: per defect class, and per group with ``groups``
    (a --groups CSV, train_host.data.groups)."""
    from edge_infer.preprocess import InputSpec

    from .data.groups import groups_of, read_table

    table = read_table(groups) if groups else None  # a bad file is refused before the scoring
    spec = InputSpec.from_dict(record["input"])
    pred = predict(model, split.test, spec, batch_size, keep_maps=split.has_masks, progress="evaluating")
    metrics = evaluate_scores(pred.labels, pred.scores, pred.masks, pred.maps)
    metrics.update(family=record["family"], data=split.name, images=len(pred.scores),
                   skipped_images=[p for p, _ in pred.skipped])
    named = groups_of(pred.samples, table, groups, what="test images") if table is not None else None
    metrics.update(breakdown(pred.labels, pred.scores, [s.defect for s in pred.samples], named))
    return metrics


def format_metrics(metrics: dict) -> str:
    rows = [f"{k:>18s}  {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
    head = f"{metrics.get('family', '')} on {metrics.get('data', '')}: {metrics.get('images', 0)} test images"
    return "\n".join([head, *rows])


def format_breakdown(metrics: dict) -> str:
    lines = []
    if "per_defect" in metrics:
        lines.append("per defect class (its defects against every good image):")
        lines += [f"  {kind:>22s}  {row['n']:5d} images  image_auroc {row['image_auroc']:.4f}"
                  for kind, row in metrics["per_defect"].items()]
    if "per_group" in metrics:
        lines.append("per group (its images alone):")
        for name, row in metrics["per_group"].items():
            auroc = "–" if row["image_auroc"] is None else f"{row['image_auroc']:.4f}"
            median = "–" if row["good_median_score"] is None else f"{row['good_median_score']:.4g}"
            lines.append(f"  {name:>22s}  {row['n_good']:5d} good {row['n_defect']:5d} defective  image_auroc "
                         f"{auroc}  median good score {median}")
        if metrics["groups_score_apart"]:
            lines.append(f"every group separates better alone than all pooled ({metrics['image_auroc']:.4f}): the "
                         "groups' scores sit at different levels, which one threshold cannot serve; train one model "
                         "per group, or `lineside train rx-mix --groups CSV` (one Gaussian set per group, one graph)")
    return "\n".join(lines)


def correlation(rows: list[dict]) -> dict:
    """Spearman's rank correlation between the runs' validation AUROC (train_host.validation, from their records)
    and their image AUROC on the shared test images: does validation choose what the test would?"""
    from scipy.stats import spearmanr

    pairs = [(r["validation_auroc"], r["image_auroc"]) for r in rows if r.get("validation_auroc") is not None]
    missing = [r["run"] for r in rows if r.get("validation_auroc") is None]
    out = {"runs": len(pairs), "without_validation": missing, "spearman": None, "p_value": None}
    if len(pairs) >= 3:
        rho, p = spearmanr(*zip(*pairs))
        out.update(spearman=None if rho != rho else round(float(rho), 4), p_value=None if p != p else round(float(p), 4))
    return out


def format_correlation(result: dict) -> str:
    if result["spearman"] is None:
        why = "fewer than 3 runs with a validation AUROC" if result["runs"] < 3 else "a constant column"
        text = f"validation vs test: no rank correlation ({why})"
    else:
        text = (f"validation vs test image AUROC over {result['runs']} runs: Spearman {result['spearman']:+.3f} "
                f"(p = {result['p_value']:.3g})")
    if result["without_validation"]:
        text += f"; left out (no validation_auroc in run.json, trained before it existed): " \
                f"{', '.join(result['without_validation'])}"
    return text


def format_table(rows: list[dict], test: list) -> str:
    keys = [k for k in ("image_auroc", "image_auprc", "pixel_auroc", "au_pro_30") if k in rows[0]]
    head = (f"{len(rows)} runs on the {len(test)} test images none of them trained or validated on "
            f"({sum(s.label for s in test)} defective)")
    lines = [head, "", "| run | family | loss | contamination | defects in train | validation AUROC | "
             + " | ".join(keys) + " |", "| --- " * (6 + len(keys)) + "|"]
    for row in rows:
        val = "" if row["validation_auroc"] is None else f"{row['validation_auroc']:.4f}"
        lines.append(f"| {row['run']} | {row['family']} | {row['loss']} | {row['contamination']:.0%} | "
                     f"{row['train_defects']} | {val} | " + " | ".join(f"{row[k]:.4f}" for k in keys) + " |")
    return "\n".join(lines)
