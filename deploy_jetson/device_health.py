"""Is the new version really running: the service's health answer, its last verdict, the engine it runs."""

from __future__ import annotations

import json
import time
from pathlib import Path

from edge_infer.errors import LinesideError

from .device_layout import link_info, read_station

HEALTH_KEY = "keys/health.key_secret"  # the health check's CurveZMQ key pair, relative to the device root


def _mentions(obj, text: str) -> bool:
    if isinstance(obj, str):
        return text in obj
    if isinstance(obj, dict):
        return any(_mentions(v, text) for v in obj.values())
    if isinstance(obj, list):
        return any(_mentions(v, text) for v in obj)
    return False


def wait_healthy(address: str, timeout: float, station: str | None = None, old_bundle: str | None = None,
                 curve: tuple[Path, Path] | None = None) -> dict:
    """Ask the control socket {"cmd": "health"} until it answers ok/ready (for this station) or time runs out.

    With ``old_bundle``, an answer whose bundle names that id (and is thus still the old service) does
    not count: a restart that did not happen must not pass for a healthy new version.
    With ``curve`` (the server's key file, this client's NAME.key_secret) the request goes over CurveZMQ.
    """
    import zmq

    deadline, last = time.monotonic() + timeout, "no answer"
    ctx = zmq.Context.instance()
    while True:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, int(1000 * min(1.0, max(deadline - time.monotonic(), 0.05))))
        if curve is not None:
            from edge_infer.security import secure_client

            secure_client(sock, *curve)
        try:
            sock.connect(address)
            sock.send_json({"cmd": "health"})
            answer = sock.recv_json()
            if (isinstance(answer, dict) and answer.get("ok") is True and answer.get("status") == "ready"
                    and (station is None or answer.get("station") == station)):
                if not (old_bundle and _mentions(answer.get("bundle"), old_bundle)):
                    return answer
                last = f"still the old bundle {old_bundle}: {json.dumps(answer)[:250]}"
            else:
                last = json.dumps(answer)[:300]
        except (zmq.ZMQError, ValueError) as exc:
            last = f"no answer ({exc})" if not isinstance(exc, zmq.Again) else "no answer"
        finally:
            sock.close()
        if time.monotonic() >= deadline:
            raise LinesideError(f"the service did not report healthy on {address} within {timeout:g} s "
                                f"(last: {last}); check `journalctl -u lineside@{station or 'STATION'}`")
        time.sleep(0.2)


def health_endpoint(args) -> tuple[str, tuple[Path, Path] | None]:
    """--address, else the running station's control socket; with CurveZMQ, the keys to speak it."""
    from .configfile import control_endpoint

    if args.root is None:
        return args.address, None
    address, server_key = control_endpoint(args.root / "current")
    if server_key is None:
        return args.address or address, None
    client_key = Path(args.client_key) if args.client_key else args.root / HEALTH_KEY
    if not client_key.is_file():
        raise LinesideError(f"the station's control socket uses CurveZMQ, and the health check's client key "
                            f"{client_key} does not exist: make it on the device with `lineside keys --out "
                            f"{client_key.parent} {client_key.name.removesuffix('.key_secret')}` and copy its "
                            "public .key into the station's curve.authorized_clients (docs/security.md)")
    return args.address or address, (server_key, client_key)


def last_verdict(root: Path) -> dict:
    """When the running station's journal last recorded a verdict (read-only; the service keeps writing)."""
    import sqlite3
    from datetime import datetime, timezone

    from .configfile import journal_path

    path = journal_path(root / "current")
    if not path.is_file():
        return {"journal": str(path), "last_verdict_at": None}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            (latest,) = db.execute("SELECT MAX(decided_at) FROM verdicts WHERE station = ?",
                                   (read_station(root),)).fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise LinesideError(f"cannot read the journal {path}: {exc}") from None
    when = datetime.fromtimestamp(latest, timezone.utc).isoformat(timespec="seconds") if latest else None
    return {"journal": str(path), "last_verdict_at": when}


def engine_mismatch(answer: dict, engine: dict | None) -> str | None:
    """Why a health answer shows the service not running ``engine`` (a built engine's sidecar), or None.

    One rule for every path that flashes (flash, the Ansible role, the Mender module): a device that
    built an engine and then silently falls back to a slower backend has failed its update.
    """
    bundle = answer.get("bundle") or {}
    if engine is None or (bundle.get("backend"), bundle.get("precision")) == (engine["backend"], engine["precision"]):
        return None
    return (f"the device built a {engine['precision']} engine for {engine['backend']}, but the service runs "
            f"backend {bundle.get('backend', '?')}, precision {bundle.get('precision', '?')}: it fell back (its log "
            "says why; check the station config's backend and precision, which `auto` lets follow the engine)")


def expect_built_engine(root: Path, answer: dict) -> dict:
    """The health answer, if the service runs the engine built for ROOT/current; LinesideError if not."""
    current = link_info(root, "current")
    built = engines(root, current["id"])["engines"] if current else []
    problem = engine_mismatch(answer, built[0] if built else None)
    if problem:
        raise LinesideError(problem)
    return answer


def engines(root: Path, ident: str) -> dict:
    """The engines built in bundles/<id>/engines (their sidecars), newest first: what the service should run."""
    from edge_infer.backends.engine_meta import built_engines

    keep = ("precision", "backend", "built", "onnx_sha256", "tensorrt_version", "gpu_name")
    return {"engines": [{k: m.get(k) for k in keep} for m in built_engines(root / "bundles" / ident)]}
