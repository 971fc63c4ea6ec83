"""`lineside review`: an operator's judgement of the line's verdicts, journaled with who and when.

``list`` shows verdicts from the journal (newest first); ``confirm`` says a verdict was right,
``overturn`` that it was wrong, ``clear`` takes a review back. Each review goes through
``edge_infer.journal.review`` (the operator page's buttons use it too), which sets the
verdict's ``confirmed`` and journals a ``review`` event in one transaction; `lineside
calibrate --from-journal` reads them back (``--confirmed-only``: only reviewed verdicts).
The journal is a file path or the station config that names it.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from pathlib import Path

from .errors import LinesideError
from .journal import iter_verdicts, parse_duration, review

STATION_SUFFIXES = (".yaml", ".yml", ".toml")
JUDGEMENTS = {"confirm": True, "overturn": False, "clear": None}
SHOWN = {1: "confirmed", 0: "overturned", None: "-"}


def operator() -> str:
    """Who runs the command, for the journal: the OS user (a service account has no login name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def journal_of(source: str) -> tuple[Path, str | None]:
    """A journal file, or a station config (then its journal.path and its station)."""
    path = Path(source)
    if path.suffix.lower() in STATION_SUFFIXES:
        from .station import load_station

        cfg = load_station(path, resolve_secrets=False)  # reading the journal needs no secrets
        return cfg.journal.path, cfg.station
    if not path.is_file():
        raise LinesideError(f"{source} is neither a journal file nor a station config (.yaml/.toml): give "
                            "the station's config or its journal.path")
    return path, None


def main(args) -> int:
    path, station = journal_of(args.source)
    if args.action == "list":
        return list_verdicts(path, args.station or station, args)
    who = args.who or operator()
    for verdict_id in args.ids:
        row = review(path, verdict_id, JUDGEMENTS[args.action], who, note=args.note or "")
        if args.json:
            print(json.dumps(row, default=str))
        else:
            print(f"verdict {row['id']} ({row['status']}, {row['station']}/{row['camera']}#{row['frame_id']}): "
                  f"{SHOWN[row['confirmed']]} by {who}")
    return 0


def list_verdicts(path: Path, station: str | None, args) -> int:
    since = time.time() - parse_duration(args.since) if args.since else None
    rows = iter_verdicts(path, station=station, since=since, status=args.status,
                         reviewed=False if args.unreviewed else None, newest_first=True, limit=args.limit)
    if args.json:
        for row in rows:
            print(json.dumps(row, default=str))
        return 0
    print(f"{'id':>8}  {'decided':19}  {'station/camera#frame':28}  {'status':7} {'score':>9} {'threshold':>9}  "
          f"{'review':10}  reason")
    for r in rows:
        decided = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["decided_at"]))
        where = f"{r['station']}/{r['camera']}#{r['frame_id']}"
        print(f"{r['id']:>8}  {decided:19}  {where:28}  {r['status']:7} {_num(r['score']):>9} "
              f"{_num(r['threshold']):>9}  {SHOWN[r['confirmed']]:10}  {r['reason'] or ''}")
    return 0


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"
