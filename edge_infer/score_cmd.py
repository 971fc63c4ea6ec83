"""`lineside score`: verdicts for image files, as text or JSON lines."""

from __future__ import annotations

import json
import sys

from .score import Scorer, expand_inputs


def main(args) -> int:
    paths = expand_inputs(args.inputs)
    scorer = Scorer(args.bundle, backend=args.backend, precision=args.precision)
    if args.threshold is not None:
        scorer.thresholds = scorer.thresholds.model_copy(update={"image": args.threshold})
    counts: dict[str, int] = {}
    for scored in scorer.score_paths(paths, batch=args.batch):
        v = scored.verdict
        counts[v.status] = counts.get(v.status, 0) + 1
        if args.json:
            print(json.dumps({"source": scored.source, **v.to_dict()}))
        else:
            score = "-" if v.score is None else f"{v.score:.4f}"
            extra = f"  {v.reason}" if v.reason else (f"  regions={len(v.regions)}" if v.regions else "")
            print(f"{v.status:5s} {score:>10s}  {scored.source}{extra}")
    print("  ".join(f"{k}={n}" for k, n in sorted(counts.items())), file=sys.stderr)
    return 1 if counts.get("ERROR") else 0
