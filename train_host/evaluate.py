"""`lineside evaluate RUN`: image (and pixel, where masks exist) metrics on the test split."""

from __future__ import annotations

from pathlib import Path

from edge_infer.bundle import write_json_atomic

from .infer import predict
from .metrics import evaluate_scores
from .run import load_run, run_data, run_split
from .train import set_threads


def main(args) -> int:
    set_threads(args.threads)
    model, record = load_run(args.run)
    data = run_data(record, args.data, args.run)
    split = run_split(record, data, args.limit)
    metrics = evaluate_model(model, record, split, batch_size=args.batch_size)
    print(format_metrics(metrics))
    if args.json:
        write_json_atomic(Path(args.json), metrics)
        print(f"wrote {args.json}")
    return 0


def evaluate_model(model, record: dict, split, batch_size: int = 16) -> dict:
    from edge_infer.preprocess import InputSpec

    spec = InputSpec.from_dict(record["input"])
    pred = predict(model, split.test, spec, batch_size, keep_maps=split.has_masks, progress="evaluating")
    metrics = evaluate_scores(pred.labels, pred.scores, pred.masks, pred.maps)
    metrics.update(family=record["family"], data=split.name, images=len(pred.scores),
                   skipped_images=[p for p, _ in pred.skipped])
    return metrics


def format_metrics(metrics: dict) -> str:
    rows = [f"{k:>18s}  {v:.4f}" for k, v in metrics.items() if isinstance(v, float)]
    head = f"{metrics.get('family', '')} on {metrics.get('data', '')}: {metrics.get('images', 0)} test images"
    return "\n".join([head, *rows])

