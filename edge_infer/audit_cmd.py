"""`lineside audit`: the journal's audit log (who changed what, when), filtered."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone

from .errors import LinesideError
from .journal import parse_duration, read_events
from .review_cmd import journal_of


def parse_since(text: str | None, now: float | None = None) -> float | None:
    """A duration back from now (90m, 8h, 2d) or an ISO time (UTC unless it names a zone)."""
    if text is None:
        return None
    try:
        return (now or time.time()) - parse_duration(text)
    except LinesideError:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise LinesideError(f"--since {text!r}: give an ISO time (2026-12-01T08:00, UTC unless it names a zone) "
                            "or a duration (90m, 8h, 2d)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def matches_who(who: str, wanted: str | None) -> bool:
    return wanted is None or who == wanted or who.split("@", 1)[0] == wanted


def main(args) -> int:
    journal, station = journal_of(args.journal)
    events = [e for e in read_events(journal, station=station, since=parse_since(args.since), kind=args.kind)
              if matches_who(str(e["who"]), args.who)]
    for e in events:
        if args.json:
            print(json.dumps(e, default=str))
            continue
        at = datetime.fromtimestamp(e["at"], timezone.utc).isoformat(timespec="seconds")
        detail = {k: v for k, v in e.items() if k not in ("at", "station", "kind", "who")}
        print(f"{at}  {e['station']}  {e['who']:<20} {e['kind']:<16} {json.dumps(detail, default=str)}")
    return 0
