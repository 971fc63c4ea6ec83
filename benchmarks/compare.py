"""`lineside bench compare A.json B.json`: candidate/baseline ratios per configuration,
with a change flagged only when it lies beyond the noise the two runs themselves show
(a bootstrap interval of the ratio) and beyond a smallest effect worth acting on."""

from __future__ import annotations

import json
from pathlib import Path

from edge_infer.errors import LinesideError

from .stats import bootstrap_ratio

REGRESSION, FASTER, NOISE = "REGRESSION", "faster", "within noise"


def main(args) -> int:
    baseline, candidate = load_report(args.baseline), load_report(args.candidate)
    rows = compare(baseline, candidate, args.stat, args.min_effect, args.level)
    print(format_table(baseline, candidate, rows, args.stat, args.min_effect, args.level))
    return 1 if any(r["verdict"] == REGRESSION for r in rows) else 0


def load_report(path: str | Path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise LinesideError(f"cannot read report {path}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise LinesideError(f"{path} is not JSON ({exc}): give a report from `lineside bench latency` or `e2e`") from None
    if not isinstance(doc, dict) or "results" not in doc or "machine" not in doc:
        raise LinesideError(f"{path} is not a lineside bench report (no `results`/`machine`): "
                            "give the JSON `lineside bench latency` or `e2e` wrote")
    return doc


def compare(baseline: dict, candidate: dict, stat: str = "p50", min_effect: float = 0.05,
            level: float = 0.95) -> list[dict]:
    """One row per configuration measured in both reports."""
    if baseline.get("kind") != candidate.get("kind"):
        raise LinesideError(f"cannot compare a {baseline.get('kind')} report with a {candidate.get('kind')} report: "
                            "compare latency with latency, e2e with e2e")
    ok_b = {r["key"]: r for r in baseline["results"] if r["status"] == "ok"}
    ok_c = {r["key"]: r for r in candidate["results"] if r["status"] == "ok"}
    common = [k for k in ok_b if k in ok_c]
    if not common:
        raise LinesideError("the two reports share no measured configuration (backend/precision/batch or "
                            f"cameras/fps): baseline has {sorted(ok_b) or 'none'}, candidate {sorted(ok_c) or 'none'}")
    rows = []
    for k in common:
        ci = bootstrap_ratio(ok_b[k]["samples_ms"]["total"], ok_c[k]["samples_ms"]["total"], stat, level=level)
        rows.append({"key": k, **ci, "verdict": judge(ci["low"], ci["high"], min_effect),
                     "throughput_ratio": _throughput_ratio(ok_b[k], ok_c[k])})
    return rows


def judge(low: float, high: float, min_effect: float) -> str:
    """Slower only when the whole interval lies above 1 + min_effect; faster likewise below."""
    if low > 1 + min_effect:
        return REGRESSION
    if high < 1 / (1 + min_effect):
        return FASTER
    return NOISE


def format_table(baseline: dict, candidate: dict, rows: list[dict], stat: str, min_effect: float,
                 level: float) -> str:
    lines = [f"baseline:  {baseline.get('command', '?')}  ({baseline.get('created', '?')})",
             f"candidate: {candidate.get('command', '?')}  ({candidate.get('created', '?')})"]
    lines += machine_warnings(baseline["machine"], candidate["machine"])
    lines += ["", f"ratio = candidate/baseline of {stat} latency; {level:.0%} bootstrap interval; "
              f"flagged beyond ±{min_effect:.0%}", ""]
    lines.append(f"{'configuration':<22s} {'ratio':>7s} {'interval':>16s} {'img/s ratio':>12s}  verdict")
    for r in rows:
        tput = "-" if r["throughput_ratio"] is None else f"{r['throughput_ratio']:.3f}"
        interval = f"[{r['low']:.3f}, {r['high']:.3f}]"
        lines.append(f"{r['key']:<22s} {r['ratio']:7.3f} {interval:>16s} {tput:>12s}  {r['verdict']}")
    regressions = sum(r["verdict"] == REGRESSION for r in rows)
    lines += ["", f"{regressions} regression(s) beyond noise" if regressions else "no regression beyond noise"]
    return "\n".join(lines)


def machine_warnings(a: dict, b: dict) -> list[str]:
    """Ratios across different machines or library versions compare those, not the code."""
    warnings = []
    if a["cpu"]["model"] != b["cpu"]["model"] or a["cpu"]["logical_cores"] != b["cpu"]["logical_cores"]:
        warnings.append(f"warning: different CPUs ({a['cpu']['model']} vs {b['cpu']['model']})")
    gpus = [[g.get("name") for g in m["gpu"].get("devices", [])] for m in (a, b)]
    if gpus[0] != gpus[1]:
        warnings.append(f"warning: different GPUs ({gpus[0] or 'none'} vs {gpus[1] or 'none'})")
    if (a.get("jetson") or {}).get("power_mode") != (b.get("jetson") or {}).get("power_mode"):
        warnings.append("warning: different Jetson power modes")
    changed = sorted(k for k in set(a["libraries"]) | set(b["libraries"])
                     if a["libraries"].get(k) != b["libraries"].get(k))
    if changed:
        warnings.append("note: library versions differ: " + ", ".join(
            f"{k} {a['libraries'].get(k, '-')} → {b['libraries'].get(k, '-')}" for k in changed))
    loads = [m["cpu"].get("load_average") for m in (a, b)]
    if all(loads):
        warnings.append(f"note: 1-min load average {loads[0][0]} vs {loads[1][0]} "
                        f"on {a['cpu']['logical_cores']} cores")
    return warnings


def _throughput_ratio(a: dict, b: dict) -> float | None:
    if a.get("throughput_ips") and b.get("throughput_ips"):
        return b["throughput_ips"] / a["throughput_ips"]
    return None
