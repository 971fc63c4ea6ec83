"""The control protocol (REQ/REP, JSON) and `lineside ctl`.

Request: one message part, a JSON object ``{"cmd": "health" | "stats" | "reload" | "threshold" |
"shutdown", ...args}``. Answer: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``;
every request gets exactly one answer, a malformed one (several parts, not JSON, wrong
types) an ``"ok": false`` naming what is wrong.

- ``health`` → ``{"ok", "status": "ready"|"draining"|..., "station", "bundle": {"path", "family",
  "version", "manifest_sha256", ...}, "pid"}``
- ``stats`` → counters, latency percentiles (ms), queue depth and high water, thresholds and
  ``threshold_layers`` (each layer, and which one every effective value comes from)
- ``reload`` ``{"bundle": PATH?, "image"?, "pixel"?, "min_area"?, "force"?, "who"?}`` → reads the
  station config again and loads its bundle (or PATH) with the bundle's current thresholds
  (what `lineside calibrate` wrote), verifying the signature when ``line.trusted_keys`` is
  set, beside the running model; then swaps between two batches: no frame is lost or
  scored twice. Settings a reload cannot apply (sockets, queue...) are listed in
  ``restart_needed``.
- ``threshold`` ``{"image"?, "pixel"?, "min_area"?, "force"?, "clear"?, "who"?}`` → runtime
  thresholds from the next batch; ``clear`` (true or a list of keys) removes runtime values
- ``shutdown`` → drains the queue, flushes the journal and exits (as SIGTERM does)

Thresholds follow one rule (edge_infer.thresholds): runtime → station pin → bundle. Runtime
values implausible for the bundle's calibration are refused unless ``force``. Every
threshold change and reload is journaled (``line_events``) with ``who``. Runtime values
last until cleared or the server stops; to keep them, edit the station config.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

from .errors import LinesideError
from .logs import log_event
from .thresholds import check_plausible

MAX_REQUEST_BYTES = 16 * 1024
THRESHOLD_KEYS = ("image", "pixel", "min_area")


def handle_request(server, parts: list[bytes]) -> dict:
    """A request as read off the REP socket (its parts) → one answer; never raises."""
    if len(parts) != 1:
        count = len(parts) if len(parts) < 3 else "3 or more"  # the server keeps at most 3 of a message
        return {"ok": False, "error": f"request has {count} message parts; a control request is exactly "
                                      'one part, a JSON object: {"cmd": "health"}'}
    return handle_command(server, bytes(parts[0]))


def encode_answer(answer: dict) -> bytes:
    """The answer as JSON; one that cannot be encoded (a bug) becomes an error answer, still JSON."""
    try:
        return json.dumps(answer, default=str).encode()
    except (TypeError, ValueError) as exc:
        log_event("control_answer_unencodable", error=repr(exc))
        return json.dumps({"ok": False, "error": f"internal error: answer not encodable ({exc})"}).encode()


def handle_command(server, raw: bytes) -> dict:
    """One request → one answer; never raises (the REP socket must always answer)."""
    try:
        if len(raw) > MAX_REQUEST_BYTES:
            raise LinesideError(f"request of {len(raw)} bytes exceeds {MAX_REQUEST_BYTES}")
        try:
            request = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LinesideError('request is not JSON: send {"cmd": "health"}') from None
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            raise LinesideError('request must be a JSON object with a "cmd" string')
        extra = getattr(server, "commands", {})  # added by the line service (recipe, trigger, ...)
        command = COMMANDS.get(request["cmd"]) or extra.get(request["cmd"])
        if command is None:
            raise LinesideError(f"unknown cmd {request['cmd']!r}: one of {', '.join([*COMMANDS, *extra])}")
        return command(server, request)
    except LinesideError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a bug must not leave the REQ client hanging
        log_event("control_failed", error=repr(exc))
        return {"ok": False, "error": f"internal error: {exc!r}"}


def _health(server, request) -> dict:
    return server.health()


def _stats(server, request) -> dict:
    return server.stats()


def _threshold_updates(request: dict) -> dict:
    updates = {}
    for key in THRESHOLD_KEYS:
        if request.get(key) is None:
            continue
        value = request[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise LinesideError(f"threshold {key} must be a finite number, got {value!r}")
        if key == "min_area" and (value < 0 or int(value) != value):
            raise LinesideError(f"min_area must be a whole number >= 0, got {value!r}")
        updates[key] = int(value) if key == "min_area" else float(value)
    return updates


def _who(request: dict) -> str:
    who = request.get("who", "ctl")
    if not isinstance(who, str) or not who.strip() or len(who) > 100:
        raise LinesideError('"who" must be a short non-empty string naming who asks')
    return who


def _cleared(request: dict) -> list[str]:
    clear = request.get("clear")
    if clear in (None, False, []):
        return []
    if clear is True:
        return list(THRESHOLD_KEYS)
    if isinstance(clear, list) and all(k in THRESHOLD_KEYS for k in clear):
        return list(clear)
    raise LinesideError(f"clear must be true or a list of {', '.join(THRESHOLD_KEYS)}, got {clear!r}")


def _runtime_layer(runtime: dict, bundle_thresholds, request: dict, updates: dict) -> dict:
    """The runtime layer after this request: cleared keys removed, updates (plausible for the bundle) set."""
    check_plausible(updates, bundle_thresholds, request.get("force") is True)
    runtime = {k: v for k, v in runtime.items() if k not in _cleared(request)}
    return {**runtime, **updates}


def _threshold(server, request) -> dict:
    who, updates, cleared = _who(request), _threshold_updates(request), _cleared(request)
    if not updates and not cleared:
        raise LinesideError(f"threshold needs at least one of {', '.join(THRESHOLD_KEYS)}, or clear")
    with server.model_lock:
        model = server.model
        before = model.thresholds.model_dump(exclude={"provenance"})
        model.set_runtime(_runtime_layer(model.layers.runtime, model.layers.bundle, request, updates))
        layers = model.layers.describe()
    server.journal_event("threshold", who, before=before, after=layers["effective"], set=updates, cleared=cleared,
                         forced=request.get("force") is True, source=layers["source"])
    log_event("thresholds_changed", station=server.station, who=who, thresholds=layers["effective"])
    return {"ok": True, "thresholds": layers["effective"], "source": layers["source"]}


def _reload(server, request) -> dict:
    """Load what a restart would load (the station config, its bundle and the bundle's thresholds), then swap.

    ``bundle`` replaces the config's bundle for this reload; threshold keys set runtime values. The
    runtime layer is carried over (edge_infer.thresholds); values it hides are named in the answer.
    """
    from .pipeline import Model

    who, updates = _who(request), _threshold_updates(request)
    bundle = request.get("bundle")
    if bundle is not None and not isinstance(bundle, str):
        raise LinesideError("reload's bundle must be a path string")
    t0 = time.perf_counter()
    cfg, restart_needed, fresh = server.reread_config()
    recipe = _active_recipe(server, fresh)
    path = bundle or (recipe.bundle if recipe is not None else cfg.bundle)
    trusted = fresh.line.trusted_keys if fresh.line else None
    from .signing import load_trusted_bundle

    loaded = load_trusted_bundle(path, trusted, server.station)  # refused here changes nothing
    with server.model_lock:
        running = server.model
        carried = dict(running.layers.runtime)
    runtime = _runtime_layer(carried, loaded.thresholds, request, updates)
    # hooks (the line service) check the new bundle now, and follow the swap with what depends on it
    follow = [hook.reloading(loaded) for hook in getattr(server, "hooks", []) if hasattr(hook, "reloading")]
    new = Model(cfg, recipe=recipe, bundle=loaded, runtime=runtime)  # loads while the old model keeps scoring
    with server.model_lock:
        if server.model is not running:  # a recipe switch (PLC, page) swapped it meanwhile: never undo that
            new.close()
            raise LinesideError("the model changed while reloading (a recipe switch): nothing was reloaded; "
                                "reload again")
        old, server.model = server.model, new
        server.cfg = cfg
        for swapped in follow:
            swapped()
    old.close()
    layers = new.layers.describe()
    detail = {"bundle": new.info, "thresholds": layers["effective"], "source": layers["source"],
              "runtime_kept": new.layers.shadowed(), "signature_checked": trusted is not None,
              "restart_needed": restart_needed, "load_s": round(time.perf_counter() - t0, 3)}
    server.journal_event("reload", who, **detail)
    log_event("reloaded", station=server.station, who=who, **detail)
    return {"ok": True, **detail}


def _active_recipe(server, cfg):
    """The running line recipe as the re-read config defines it (None for a station without a line)."""
    current = getattr(server.model, "recipe", None)
    if current is None or cfg.line is None:
        return None
    for recipe in cfg.line.recipes:
        if recipe.id == current.id:
            return recipe
    raise LinesideError(f"the station config no longer has recipe {current.id}, which is running: switch recipes "
                        "first (`ctl recipe --id N`) or restart")


def _shutdown(server, request) -> dict:
    server.request_stop()
    return {"ok": True, "status": "draining"}


COMMANDS = {"health": _health, "stats": _stats, "reload": _reload, "threshold": _threshold, "shutdown": _shutdown}


def request(address: str, message: dict, timeout_s: float = 5.0, server_key=None, client_key=None) -> dict:
    """Send one control request and wait for the answer (the client side, used by ctl and deploy)."""
    import zmq

    from .security import secure_client

    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.linger = 0
    try:
        secure_client(sock, server_key, client_key)
        sock.connect(address)
        sock.send_json(message)
        if not sock.poll(int(timeout_s * 1000)):
            raise LinesideError(f"no answer from {address} within {timeout_s:g} s: is `lineside serve` running "
                                "there, and (with Curve) are --server-key/--client-key the right ones?")
        return sock.recv_json()
    finally:
        sock.close()


def main(args) -> int:
    message = {"cmd": args.cmd}
    if args.cmd == "recipe":
        if args.recipe is None:
            raise LinesideError("ctl recipe needs --id N (a recipe id of the station's line.recipes)")
        message.update(id=args.recipe, who=args.who)
    if args.cmd in ("trigger", "threshold", "reload"):
        message["who"] = args.who
    if args.cmd in ("threshold", "reload") and args.force:
        message["force"] = True
    if args.cmd == "threshold" and args.clear is not None:
        message["clear"] = True if args.clear == "all" else args.clear.split(",")
    if args.cmd == "reload" and args.bundle:
        local = Path(args.bundle)  # the usual case: ctl runs on the device, beside the server
        message["bundle"] = str(local.resolve()) if local.exists() else args.bundle
    for key in THRESHOLD_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            message[key] = value
    answer = request(args.address, message, args.timeout, args.server_key, args.client_key)
    print(json.dumps(answer, indent=None if args.json else 2))
    if not answer.get("ok"):
        print(f"lineside ctl {args.cmd}: {answer.get('error', 'failed')}", file=sys.stderr)
        return 1
    return 0
