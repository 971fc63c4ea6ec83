"""`lineside calibrate`: argparse only, so `lineside --help` stays fast."""

from __future__ import annotations

from edge_infer.cli import handler

METHODS = ("quantile", "evt", "f1", "cost")


def register(sub) -> None:
    p = sub.add_parser(
        "calibrate", help="set a station's thresholds from good (and defect) images, with a report",
        description="Score a station's good images (and optionally defects) through the bundle on the line's "
        "backend, choose the image threshold (quantile with a confidence bound, an extreme-value tail, best F1 "
        "or least cost), a pixel threshold and minimum defect area, write them into the bundle with their "
        "provenance, and write a report (JSON + PNG figures). Several bundles: their scores are normalised "
        "against their own good scores and fused. --from-journal: recalibrate from the line's recent verdicts "
        "and check the scores for drift.")
    p.add_argument("bundles", nargs="*", metavar="BUNDLE",
                   help="bundle directory; give several to fuse detectors (optional with --from-journal)")
    p.add_argument("--station", required=True, help="station name; must match the bundle's station if it has one")
    p.add_argument("--good", help="folder of good images from this station")
    p.add_argument("--defects", help="folder of defect images, or an MVTec-layout test/ folder "
                   "(its non-`good` class folders are the defects)")
    p.add_argument("--method", choices=METHODS, default="quantile",
                   help="quantile (default): good-score quantile with a binomial bound; evt: generalised Pareto "
                   "tail for rates finer than the sample; f1 / cost: from labelled defects")
    p.add_argument("--target-frr", type=float, default=0.005,
                   help="false-reject rate to stay under on good parts (default: 0.005 = 0.5%%)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence of the bounds (default: 0.95)")
    p.add_argument("--allow-few", action="store_true",
                   help="write the threshold even when there are too few good images for the bound to meet "
                   "the target (the report states the real bound)")
    p.add_argument("--tail-fraction", type=float, default=0.1,
                   help="evt: share of the highest good scores the tail is fitted to (default: 0.1)")
    p.add_argument("--cost-escape", type=float, default=10.0, help="cost: cost of one escaped defect (default: 10)")
    p.add_argument("--cost-reject", type=float, default=1.0, help="cost: cost of one false reject (default: 1)")
    p.add_argument("--defect-rate", type=float,
                   help="cost: share of defective parts on the line (default: the share among the given images)")
    p.add_argument("--pixel-rate", type=float, default=0.001,
                   help="share of good pixels allowed above the pixel threshold (default: 0.001)")
    p.add_argument("--fuse", choices=("max", "mean"), default="max",
                   help="several bundles: fuse the normalised scores by max (default) or mean")
    p.add_argument("--backend", default="auto", help="inference backend, as `lineside score` (default: auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"],
                   help="the bundle's model variant to calibrate (default: the one the line runs: the station "
                   "config's precision, where `auto` follows the engine built for the bundle, else fp32)")
    p.add_argument("--out", help="report folder (default: ./calibration-STATION)")
    p.add_argument("--scores", metavar="DIR",
                   help="choose again from an earlier run's --out folder (its scores.csv) instead of scoring; "
                   "the bundle's model must be the one that made them")
    p.add_argument("--station-config", metavar="FILE",
                   help="the station's config (serve's YAML): checked against --station and the bundle (its bundle "
                   "when none is given); images are scored with its `roi` crop and precision, as serve scores "
                   "them (default: the config packed in the bundle, if any); threshold keys it pins over the "
                   "bundle's are rewritten to the new values (not in a signed bundle)")
    p.add_argument("--dry-run", action="store_true", help="write the report but leave the bundle unchanged")
    p.add_argument("--from-journal", metavar="JOURNAL",
                   help="recalibrate from the line's verdict journal (SQLite file, or the plant's verdict store postgresql://…) instead of image folders")
    p.add_argument("--since", default="7d", help="--from-journal: how far back, e.g. 7d, 12h (default: 7d)")
    p.add_argument("--confirmed-only", action="store_true",
                   help="--from-journal: use only verdicts an operator reviewed")
    p.set_defaults(handler=handler("calibration.calibrate:main"))
