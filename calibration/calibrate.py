"""`lineside calibrate`: score, choose the thresholds, write them with provenance, report.

Three flows share the choosing and writing:
- one bundle and image folders (the usual case);
- several bundles: scores normalised per model and fused (see fusion.py);
- ``--from-journal``: the line's recent verdicts instead of images, plus a drift check.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_infer.bundle import MANIFEST, Bundle, Thresholds, sha256_file, write_json_atomic
from edge_infer.drift import drift_from_provenance, reference_sample
from edge_infer.errors import LinesideError
from edge_infer.score import Scorer

from . import fusion
from .evt import evt_threshold
from .journal import read_journal
from .labelled import cost_threshold, f1_threshold
from .pixel import pixel_threshold
from .quantile import ThresholdResult, add_escapes, quantile_threshold
from .report import curves, write_report
from .scores import ScoreSet, defect_images, good_images, read_scores, score_images, write_scores
from .station import scoring_settings, station_config, update_overrides


def main(args) -> int:
    out = Path(args.out or f"calibration-{args.station}")
    if args.station_config:
        if len(args.bundles) > 1:
            raise LinesideError("a station config names one bundle; fuse several bundles without --station-config")
        cfg = station_config(args.station_config, args.station, args.bundles[0] if args.bundles else None)
        args.bundles = args.bundles or [str(cfg.bundle)]
    if args.from_journal:
        return from_journal(args, out)
    if not args.bundles:
        raise LinesideError("give the bundle to calibrate: `lineside calibrate BUNDLE --station NAME --good DIR`")
    if args.scores:
        return from_scores(args, out)
    if not args.good:
        raise LinesideError("give the station's good images with --good DIR (or recalibrate with --from-journal)")
    if args.method in ("f1", "cost") and not args.defects:
        raise LinesideError(f"--method {args.method} needs labelled defects: pass --defects DIR")
    bundles = [load_for_station(path, args.station) for path in args.bundles]
    good_paths = good_images(args.good)
    defect_paths, classes = defect_images(args.defects) if args.defects else ([], {})
    if len(bundles) > 1:
        return fused(args, out, bundles, good_paths, defect_paths, classes)

    bundle = bundles[0]
    line = scoring_settings(args, bundle)
    scorer = Scorer(bundle, backend=args.backend, precision=line["precision"], roi=line["roi"],
                    tiles=line["tiles"])
    try:
        good = score_images(scorer, good_paths, "good", keep_maps=True)
        defects = score_images(scorer, defect_paths, "defect") if defect_paths else None
        backend = scorer.backend.describe()
    finally:
        scorer.close()
    write_scores(out / "scores.csv", {"good": good, "defect": defects})
    result = choose(args, good.scores, None if defects is None else defects.scores)
    pixel = pixel_threshold(good.maps, args.pixel_rate, image_threshold=result.threshold)
    provenance = base_provenance(args, result, good.scores, classes)
    tiles = bundle.input_spec.tiles
    provenance.update(bundle_identity(bundle, line["precision"]), backend=backend, roi=line["roi"],
                      tiles=tiles.to_dict() if tiles else None, unreadable_images=len(good.errors) + (len(defects.errors) if defects else 0),
                      pixel=pixel["details"])
    thresholds = Thresholds(image=result.threshold, pixel=pixel["pixel"], min_area=pixel["min_area"],
                            provenance=provenance)
    finish(args, out, bundle, thresholds, result, good.scores, None if defects is None else defects.scores)
    return 0


def from_scores(args, out: Path) -> int:
    """Choose again from an earlier run's scores.csv: the same bundle's scores, no scoring."""
    if len(args.bundles) != 1:
        raise LinesideError("--scores re-uses one bundle's scores: give exactly one bundle")
    bundle = load_for_station(args.bundles[0], args.station)
    earlier = Path(args.scores)
    try:
        report = json.loads((earlier / "report.json").read_text())
        before = Thresholds.model_validate(report["thresholds"])
    except (OSError, ValueError, KeyError) as exc:
        raise LinesideError(f"{earlier} holds no calibration report ({exc}): give the --out folder of an earlier "
                            "`lineside calibrate` run") from None
    identity = bundle_identity(bundle, scoring_settings(args, bundle)["precision"])
    if before.provenance.get("model_sha256") != identity["model_sha256"]:
        raise LinesideError(f"the scores in {earlier} came from another model (sha256 "
                            f"{before.provenance.get('model_sha256')}), not this bundle's {identity['precision']} model: "
                            "score the images again with --good/--defects")
    scores = read_scores(earlier / "scores.csv")
    defects = scores["defect"] if scores["defect"].size else None
    if args.method in ("f1", "cost") and defects is None:
        raise LinesideError(f"--method {args.method} needs labelled defects, and {earlier} scored none")
    result = choose(args, scores["good"], defects)
    pixel = before.pixel if before.pixel is None else min(before.pixel, result.threshold)
    provenance = base_provenance(args, result, scores["good"], before.provenance.get("defect_classes", {}))
    pixel_details = dict(before.provenance.get("pixel") or {})
    if pixel != before.pixel:
        pixel_details["note"] = ("pixel threshold lowered to the new image threshold; min_area kept from the earlier "
                                 "run: calibrate from the images to refit it")
    provenance.update(identity, scores_from=str(earlier / "scores.csv"), backend=before.provenance.get("backend"),
                      roi=before.provenance.get("roi"),
                      pixel=pixel_details)
    thresholds = Thresholds(image=result.threshold, pixel=pixel, min_area=before.min_area, provenance=provenance)
    finish(args, out, bundle, thresholds, result, scores["good"], defects)
    return 0


def load_for_station(path: str, station: str) -> Bundle:
    bundle = Bundle.load(path)
    if bundle.manifest.station not in (None, station):
        raise LinesideError(
            f"bundle {path} belongs to station {bundle.manifest.station!r}, not {station!r}: calibrate the bundle "
            f"exported for {station!r}, or pass --station {bundle.manifest.station}")
    return bundle


def choose(args, good: np.ndarray, defects: np.ndarray | None) -> ThresholdResult:
    """The image threshold by the requested method, with the escape rate when defects are known."""
    if args.method == "quantile":
        result = quantile_threshold(good, args.target_frr, args.confidence)
    elif args.method == "evt":
        result = evt_threshold(good, args.target_frr, args.confidence, tail_fraction=args.tail_fraction)
    elif args.method == "f1":
        return f1_threshold(good, defects, args.confidence)
    else:
        return cost_threshold(good, defects, args.cost_escape, args.cost_reject, args.defect_rate, args.confidence)
    if not result.enough and not args.allow_few:
        raise LinesideError(f"{result.message}; or pass --allow-few to write this threshold with its real bound")
    return result if defects is None or defects.size == 0 else add_escapes(result, defects)


def base_provenance(args, result: ThresholdResult, good: np.ndarray, classes: dict) -> dict:
    """What a reviewer needs to trust (or question) the threshold, and the drift reference."""
    from edge_infer.review_cmd import operator

    quantiles = {f"p{q:g}": float(np.quantile(good, q / 100)) for q in (50, 90, 99, 99.9)}
    return {
        "method": result.method, "station": args.station, "who": operator(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": {k: v for k, v in sorted(vars(args).items())
                    if k not in ("handler", "command") and v not in (None, False, [])},
        "good_count": result.good_count, "defect_count": result.defect_count, "defect_classes": classes,
        "target_frr": result.target_frr, "confidence": result.confidence,
        "expected_frr": result.expected_frr, "frr_bound": result.frr_bound, "observed_frr": result.observed_frr,
        "escape_rate": result.escape_rate, "escape_bound": result.escape_bound,
        "message": result.message, "method_details": result.details,
        "good_quantiles": {**quantiles, "max": float(np.max(good))},
        "reference_scores": reference_sample(good),
    }


def bundle_identity(bundle: Bundle, precision: str) -> dict:
    model = bundle.manifest.variants.get(precision)
    entry = bundle.manifest.files.get(model) if model else None
    return {"bundle": str(bundle.root), "bundle_manifest_sha256": sha256_file(bundle.root / MANIFEST),
            "precision": precision, "model_sha256": entry.sha256 if entry else None}


def finish(args, out: Path, bundle: Bundle | None, thresholds: Thresholds, result: ThresholdResult,
           good: np.ndarray, defects: np.ndarray | None, extra: dict | None = None) -> None:
    """Write the thresholds (bundle and a standalone file), the report, and say what was done."""
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "station-thresholds.json",
                      {"station": args.station, "bundle": str(bundle.root) if bundle else None,
                       "thresholds": thresholds.model_dump()})
    report = {"station": args.station, "result": result.to_dict(), "thresholds": thresholds.model_dump(), **(extra or {})}
    if defects is not None and defects.size:
        c = curves(np.sort(good), np.sort(defects))
        report["separation"] = {"auroc": c["auroc"], "average_precision": c["average_precision"]}
    write_report(out, report, result, good, defects)
    wrote = f"{out / 'station-thresholds.json'}"
    if bundle is not None and not args.dry_run:
        bundle.manifest.station = args.station
        written = bundle.write_thresholds(thresholds, produced_by=f"lineside calibrate --method {args.method}")
        wrote = f"{written} and {wrote}"
        if bundle.signed:  # the device's own data: the signed content (and its engines) stay valid
            print(f"  {bundle.root} is signed: the new thresholds went to {written} (the device's calibration, "
                  "outside the signed content); the signature and any built engine stay valid")
        if args.station_config:
            cfg = station_config(args.station_config, args.station, bundle.root)
            print(f"  {update_overrides(args.station_config, cfg, thresholds)}")
    print(f"station {args.station}: image threshold {thresholds.image:.6g}"
          + (f", pixel {thresholds.pixel:.6g}, min area {thresholds.min_area} px" if thresholds.pixel is not None else ""))
    print(f"  {result.message}")
    if result.escape_rate is not None and args.method in ("quantile", "evt"):
        print(f"  defects escaping: {result.escape_rate:.2%} of {result.defect_count} "
              f"(≤ {result.escape_bound:.2%} at {result.confidence:.0%})")
    if "drift" in report:
        print(f"  drift: {report['drift']['status']}: {report['drift']['message']}")
    print(f"  wrote {wrote}; report {out / 'report.json'} with {', '.join(report['figures'].values())}")
    if bundle is not None and not args.dry_run:
        print("  apply them on a running station with `lineside ctl CONTROL_ADDRESS reload` (or restart serve)")


def fused(args, out: Path, bundles: list[Bundle], good_paths, defect_paths, classes: dict) -> int:
    """Several detectors: normalise each against its good scores, fuse, calibrate the fused score."""
    goods, defects, backends = [], [], []
    for bundle in bundles:
        line = scoring_settings(args, bundle)
        scorer = Scorer(bundle, backend=args.backend, precision=line["precision"], roi=line["roi"],
                            tiles=line["tiles"])
        try:
            goods.append(score_images(scorer, good_paths, f"good [{bundle.root.name}]"))
            defects.append(score_images(scorer, defect_paths, f"defect [{bundle.root.name}]") if defect_paths else None)
            backends.append(scorer.backend.describe())
        finally:
            scorer.close()
    normalisers = [fusion.fit_normaliser(g.scores) for g in goods]
    good = fusion.fuse(aligned(goods), normalisers, args.fuse)
    defect = fusion.fuse(aligned(defects), normalisers, args.fuse) if defect_paths else None
    result = choose(args, good, defect)
    models = [{**bundle_identity(b, be["precision"]), "normaliser": n, "backend": be}
              for b, n, be in zip(bundles, normalisers, backends)]
    provenance = base_provenance(args, result, good, classes)
    provenance["fusion"] = {"how": args.fuse, "models": models}
    thresholds = Thresholds(image=result.threshold, provenance=provenance)
    # the fused threshold is on the normalised scale, so it goes into fusion.json, not into any one bundle
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "fusion.json", {"station": args.station, "fuse": args.fuse, "models": models,
                                            "thresholds": thresholds.model_dump()})
    finish(args, out, None, thresholds, result, good, defect, {"fusion": {"how": args.fuse, "models": models}})
    return 0


def aligned(sets: list[ScoreSet]) -> list[np.ndarray]:
    """Each model's scores on the images every model could score, in one order."""
    common = set.intersection(*(set(s.sources) for s in sets))
    order = [src for src in sets[0].sources if src in common]
    return [np.array([dict(zip(s.sources, s.scores))[src] for src in order]) for s in sets]


def from_journal(args, out: Path) -> int:
    """Recalibrate from the line's recent verdicts and check them for drift against calibration."""
    js = read_journal(args.from_journal, args.station, args.since, args.confirmed_only)
    if js.good.size == 0:
        raise LinesideError(f"no good verdicts for {args.station!r} in the last {args.since} "
                            f"{'that an operator confirmed ' if args.confirmed_only else ''}: widen --since")
    bundle = load_for_station(args.bundles[0], args.station) if args.bundles else None
    previous = bundle.thresholds if bundle else Thresholds()
    result = choose(args, js.good, js.defects if js.defects.size else None)
    drift = drift_from_provenance(previous.provenance, js.good) if bundle else {
        "status": "no-reference", "message": "give the bundle to compare the live scores with its calibration"}
    provenance = base_provenance(args, result, js.good, {})
    provenance.update(source="journal", journal=str(args.from_journal), since=args.since,
                      confirmed_only=args.confirmed_only, journal_rows=js.rows, unreviewed_ng=js.unreviewed_ng,
                      thresholds_seen=js.thresholds_seen, drift=drift)
    if bundle:
        provenance.update(bundle_identity(bundle, scoring_settings(args, bundle)["precision"]))
    if js.unreviewed_ng:
        # good parts above the old threshold are seen only when an operator overturns their NG
        print(f"calibrate: {js.unreviewed_ng} NG verdicts were never reviewed and are left out; the good tail above "
              f"the old threshold is seen only through overturned NGs", file=sys.stderr)
    thresholds = Thresholds(image=result.threshold, pixel=previous.pixel, min_area=previous.min_area,
                            provenance=provenance)
    finish(args, out, bundle, thresholds, result, js.good, js.defects if js.defects.size else None,
           {"drift": drift, "journal": {"rows": js.rows, "good": int(js.good.size),
                                        "defects": int(js.defects.size), "unreviewed_ng": js.unreviewed_ng}})
    return 0
