"""Several devices at once: one worker per device, a progress line per step, a table at the end."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from edge_infer.errors import LinesideError

from .flash import Outcome
from .targets import Target
from .transport import open_shell


def run_fleet(targets: list[Target], job, parallel: int = 4, stream=None) -> list[Outcome]:
    """Run job(target, shell, progress) -> Outcome on every target, `parallel` at a time, in target order."""
    stream = stream or sys.stdout
    lock = threading.Lock()
    width = max(len(t.name) for t in targets)

    def one(target: Target) -> Outcome:
        start = time.monotonic()

        def progress(text: str) -> None:
            with lock:
                print(f"[{target.name:<{width}}] {time.monotonic() - start:6.1f}s  {text}", file=stream, flush=True)

        try:
            shell = open_shell(target)
        except (OSError, LinesideError) as exc:
            return Outcome(target.name, message=f"cannot open a connection: {exc}")
        try:
            outcome = job(target, shell, progress)
        finally:
            shell.close()
        progress(f"{outcome.result}: {outcome.message}" if outcome.message else outcome.result)
        return outcome

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(targets)))) as pool:
        return list(pool.map(one, targets))


def format_table(outcomes: list[Outcome]) -> str:
    rows = [("device", "old → new", "result", "time")]
    rows += [(o.device, f"{o.old} → {o.new}", o.result, f"{o.seconds:.1f} s") for o in outcomes]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"{o.device}: {o.message}" for o in outcomes if not o.ok]
    notes += [f"{o.device}: warning: {w}" for o in outcomes for w in o.warnings]
    return "\n".join(lines + ([""] + notes if notes else []))
