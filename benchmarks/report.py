"""Benchmark reports: a table on screen, JSON for regression tracking (with the machine and
the exact command), and a PNG of the latency CDF per configuration."""

from __future__ import annotations

import os
import shlex
import sys
from datetime import datetime, timezone
from pathlib import Path

from edge_infer.bundle import Bundle, write_json_atomic
from edge_infer.errors import LinesideError

from . import machine
from .stats import cdf

SCHEMA = 1
HIDDEN_ARGS = ("handler", "command", "bench_command")


def command_of(args, positionals: tuple[str, ...]) -> str:
    """The command with every option's effective value: what to type to measure the same thing."""
    values = {k: v for k, v in vars(args).items() if k not in HIDDEN_ARGS}
    parts = ["lineside", "bench", args.bench_command]
    for p in positionals:  # a positional may take several values (nargs="+")
        value = values.pop(p)
        parts += [str(v) for v in value] if isinstance(value, list) else [str(value)]
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(parts)


def header(args, kind: str, positionals: tuple[str, ...]) -> dict:
    return {
        "schema": SCHEMA, "kind": kind,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command_of(args, positionals),
        "argv": [Path(sys.argv[0]).name, *sys.argv[1:]], "cwd": os.getcwd(),
        "machine": machine.describe(),
    }


def bundle_info(bundle: Bundle) -> dict:
    m = bundle.manifest
    return {"path": str(bundle.root), "family": m.model.family, "name": m.model.name, "version": m.model.version,
            "input": bundle.input_spec.to_dict(), "max_batch": m.input.max_batch, "variants": m.variants,
            "sha256": {name: m.files[name].sha256 for name in m.variants.values() if name in m.files}}


def tiles_note(spec: dict) -> str:
    """A tiled bundle's tiling, for the table's heading: its latency per frame is for every tile."""
    tiles = spec.get("tiles")
    return f", tiles of {tiles['size']} px overlapping {tiles['overlap']} px" if tiles else ""


def latency_document(args, bundle: Bundle, images, results: list[dict]) -> dict:
    return {
        **header(args, "latency", ("bundle",)),
        "bundle": bundle_info(bundle),
        "images": images.describe(),
        "settings": {"warmup_s": args.warmup, "duration_s": args.duration, "iterations": args.iterations,
                     "threads": args.threads, "latency": "per batch: decode + preprocess + compute + decide"},
        "results": results,
    }


def write(doc: dict, out: Path, stem: str) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "png": out / f"{stem}.png"}
    write_json_atomic(paths["json"], doc)
    plot_cdf(doc, paths["png"])
    return paths


def plot_cdf(doc: dict, path: Path) -> None:
    """One CDF line per measured configuration, of the latency the table summarises."""
    try:
        import matplotlib
    except ImportError:
        raise LinesideError("matplotlib is not installed, so the latency CDF cannot be drawn: "
                            "pip install lineside[bench]") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    for r in doc["results"]:
        if r["status"] == "ok":
            x, y = cdf(r["samples_ms"]["total"])
            ax.step(x, y, where="post", label=f"{r['key']}  (p50 {r['latency_ms']['p50']:.1f} ms)")
    ax.set_xlabel("latency per batch (ms)" if doc["kind"] == "latency" else "capture-to-verdict latency (ms)")
    ax.set_ylabel("fraction of samples at or below")
    lows = [line.get_xdata().min() for line in ax.lines]
    highs = [line.get_xdata().max() for line in ax.lines]
    if lows and min(lows) > 0 and max(highs) / min(lows) > 20:
        ax.set_xscale("log")  # batch 1 next to batch 8, or a long tail: keep both readable
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    cpu = doc["machine"]["cpu"]
    ax.set_title(f"lineside bench {doc['kind']}: {cpu['model']}, {cpu['logical_cores']} cores", fontsize=10)
    if ax.lines:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no configuration could run here: see the JSON's reasons", ha="center",
                transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def latency_table(doc: dict) -> str:
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    b, s = doc["bundle"], doc["settings"]
    span = f"{s['iterations']} iterations" if s["iterations"] else f"≥{s['duration_s']} s"
    lines = [f"bundle {b['family']}/{b['name']} {b['version']} "
             f"({b['input']['width']}x{b['input']['height']}x{b['input']['channels']}{tiles_note(b['input'])})   "
             f"images: {doc['images']['source']}, {doc['images']['count']} in rotation",
             machine.summary(doc["machine"]),
             f"latency per batch in ms (warm-up {s['warmup_s']} s excluded, {span} measured); "
             "throughput in images/s", ""]
    cols = ("min", "mean", "p50", "p90", "p95", "p99", "max", "std")
    lines.append(f"{'configuration':<20s} {'n':>6s} " + " ".join(f"{c:>8s}" for c in cols) + f" {'img/s':>8s}")
    for r in ok:
        st = r["latency_ms"]
        lines.append(f"{r['key']:<20s} {st['count']:6d} " + " ".join(f"{st[c]:8.2f}" for c in cols)
                     + f" {r['throughput_ips']:8.1f}")
    if ok:
        lines += ["", "median per stage in ms per batch (n/a: not applicable; incl.: inside compute)"]
        stages = list(ok[0]["stages_ms"])
        lines.append(f"{'configuration':<20s} " + " ".join(f"{n:>11s}" for n in stages))
        for r in ok:
            lines.append(f"{r['key']:<20s} " + " ".join(f"{_stage(r['stages_ms'][n]):>11s}" for n in stages))
        notes = sorted({v["status"] for r in ok for v in r["stages_ms"].values() if "status" in v})
        lines += [f"  h2d/d2h {n}" for n in notes]
    lines += _skipped_lines(doc["results"])
    return "\n".join(lines)


def _stage(stats: dict) -> str:
    if "status" in stats:
        return "n/a" if stats["status"].startswith("not applicable") else "incl."
    return f"{stats['p50']:.2f}"


def _skipped_lines(results: list[dict]) -> list[str]:
    """Skipped combinations grouped by reason, so five batch sizes read as one line."""
    grouped: dict[tuple, list] = {}
    for r in results:
        if r["status"] != "ok":
            grouped.setdefault((r["backend"], r["precision"], r["reason"]), []).append(str(r["batch"]))
    if not grouped:
        return []
    lines = ["", "not run here:"]
    for (backend, precision, reason), batches in grouped.items():
        lines.append(f"  {backend} {precision} batch {','.join(batches)}: {reason}")
    return lines


def e2e_table(doc: dict) -> str:
    f, st = doc["frames"], doc["station"]
    lines = [f"station {st['name']} on {st['backend']} {st['precision']}, queue {st['queue']['capacity']} "
             f"({st['queue']['policy']}), batch {st['batch']['max_frames']};  frames {f['resolution'][0]}x"
             f"{f['resolution'][1]} {f['encoding']} (~{f['mean_payload_kib']} KiB) from {f['images']['source']}",
             machine.summary(doc["machine"]),
             f"capture-to-verdict latency in ms, at the subscriber (warm-up {doc['settings']['warmup_s']} s "
             f"excluded, {doc['settings']['duration_s']} s measured per trial)", ""]
    lines.append(f"{'trial':<16s} {'frames':>6s} {'OK':>5s} {'NG':>5s} {'DROP':>5s} {'ERR':>4s} {'lost':>4s} "
                 f"{'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s} {'img/s':>7s} {'cpu%':>6s} {'RSS MiB':>8s}")
    for r in doc["results"]:
        c, srv = r["counts"], r.get("server", {})
        head = (f"{r['key']:<16s} {r['frames']:6d} {c['OK']:5d} {c['NG']:5d} {c['DROPPED']:5d} {c['ERROR']:4d} "
                f"{r['missing']:4d} ")
        if r["status"] != "ok":
            lines.append(head + f"failed: {r['reason']}")
            continue
        lat = r["latency_ms"]
        lines.append(head + " ".join(f"{lat[k]:8.1f}" for k in ("p50", "p90", "p99", "max"))
                     + f" {r['throughput_ips']:7.1f} {srv.get('cpu_percent_mean', float('nan')):6.0f}"
                     f" {srv.get('rss_mib_peak', float('nan')):8.0f}")
    ok = [r for r in doc["results"] if r["status"] == "ok"]
    if ok:
        best = (doc.get("sweep") or {}).get("max_fps_per_camera")
        r = next((x for x in ok if x["fps"] == best), ok[-1])
        o = r["overhead_ms"]
        lines += ["", f"pipeline overhead in {r['key']}: e2e median {r['latency_ms']['p50']:.1f} ms − compute "
                  f"median {r['stages_ms']['compute']['p50']:.1f} ms = {o['e2e_p50_minus_compute_p50']:.1f} ms; "
                  "where it goes (medians, so they need not add up exactly):"]
        lines.append("  " + "  ".join(f"{k} {v:.1f}" for k, v in o["where"].items() if v is not None)
                     + "   (transport: camera→server socket + server→subscriber, per frame"
                     + ("; camera_shm_write: the part of it that is the copy into the ring slot)"
                        if o["where"].get("camera_shm_write") is not None else ")"))
        if r.get("throughput_per_core_ips") is not None:
            lines.append(f"throughput in {r['key']}: {r['throughput_ips']:.1f} img/s with {r['workers']} worker(s): "
                         f"{r['throughput_per_core_ips']:.1f} img/s per server core used, "
                         f"{r['throughput_per_backend_ips']:.1f} img/s per backend")
    missed = sum(r.get("camera_missed_slots", 0) for r in doc["results"])
    if missed:
        lines.append(f"{missed} camera slot(s) skipped: the load generator itself was starved of CPU, so fewer "
                     "frames were offered than asked for (throughput shows what was offered and scored)")
    if any(r["unsent"] for r in doc["results"]):
        lines.append("unsent: frames a camera could not hand to a busy server (its queue was full)")
    if doc.get("sweep"):
        s = doc["sweep"]
        lines += ["", f"sweep: highest FPS per camera with p99 ≤ {s['budget_ms']} ms and nothing dropped: "
                  + (f"{s['max_fps_per_camera']:g} ({s['max_total_fps']:g} frames/s in all)"
                     if s["max_fps_per_camera"] else "none of the trials held")]
    return "\n".join(lines)
