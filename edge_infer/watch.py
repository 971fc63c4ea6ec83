"""`lineside watch`: subscribe to a server's verdicts and print one line each, live."""

from __future__ import annotations

import json
import sys
import time

from .errors import LinesideError


def format_line(event: dict, counts: dict) -> str:
    score = "-" if event.get("score") is None else f"{event['score']:.4f}"
    total = event.get("latency_ms", {}).get("total")
    latency = "" if total is None else f"{total:7.1f} ms"
    where = f"{event['station']}/{event.get('camera') or '?'}#{event.get('frame_id')}"
    extra = event.get("reason") or (f"regions={len(event['regions'])}" if event.get("regions") else "")
    running = " ".join(f"{k}={counts[k]}" for k in ("OK", "NG", "ERROR", "DROPPED") if counts.get(k))
    return f"{event['status']:7s} {score:>8s} {latency}  {where}  [{running}]  {extra}".rstrip()


def watch(address: str, station: str | None = None, alerts_only: bool = False, as_json: bool = False,
          count: int | None = None, timeout_s: float | None = None, server_key=None, client_key=None,
          out=sys.stdout) -> dict:
    """Print verdicts until ``count`` have arrived or ``timeout_s`` passes without one; return the counts."""
    import zmq

    from .security import secure_client
    from .wire import parse_verdict_message

    sock = zmq.Context.instance().socket(zmq.SUB)
    sock.linger = 0
    secure_client(sock, server_key, client_key)
    prefix = ("alert." if alerts_only else "verdict.") + (station or "")
    sock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sock.connect(address)
    print(f"watching {address} ({prefix}*)", file=sys.stderr, flush=True)
    counts: dict[str, int] = {}
    seen = 0
    try:
        while count is None or seen < count:
            if not sock.poll(int(timeout_s * 1000) if timeout_s else -1):
                break
            topic, event = parse_verdict_message(sock.recv_multipart())
            if station and topic.split(".", 1)[1] != station:  # PUB matches prefixes: weld-1 would get weld-10
                continue
            seen += 1
            counts[event["status"]] = counts.get(event["status"], 0) + 1
            print(json.dumps(event) if as_json else format_line(event, counts), file=out, flush=True)
    finally:
        sock.close()
    return counts


def main(args) -> int:
    started = time.time()
    counts = watch(args.address, args.station, args.alerts, args.json, args.count, args.timeout,
                   args.server_key, args.client_key)
    if not counts and args.timeout:
        raise LinesideError(f"no verdicts from {args.address} in {time.time() - started:.0f} s: is the server "
                            "running and are frames arriving? (with Curve: --server-key and --client-key)")
    print("  ".join(f"{k}={n}" for k, n in sorted(counts.items())), file=sys.stderr)
    return 0
