"""The operator page, an HMI: a small ASGI app (Starlette, served by uvicorn on its own thread).

The live part (raw image with the heatmap over it at an opacity the operator sets), its score
against the threshold, a pass/fail strip, yield per shift, the recent NG parts, counters,
latency, the recipe, drift warnings. The page gets every change pushed over Server-Sent
Events (``/api/events``, with a heartbeat, so it knows within 2 s when the service is gone).
Who may see it and change what (switch recipe, trigger, acknowledge the alarm, start a new
shift, review an NG part) is decided in ``auth`` (login, sessions, machine tokens, roles);
every change is journaled (table ``line_events``) with the user who made it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...errors import LinesideError
from ..plc_signals import PlcError
from . import auth as page_auth

PAGE = (Path(__file__).parent / "page.html").read_text()
HEARTBEAT_S = 0.5  # the page calls the service gone after 2 s without a message
MIN_PUSH_S = 0.1  # at most 10 updates a second per page, however fast the line runs


def page_state(service, user: dict | None) -> dict:
    snap = service.server.telemetry.snapshot()
    plc = service.signals.snapshot()
    active = service.recipes.active
    scale = service.recipes.scale(active.id).name if active else "raw"
    return {
        "station": service.station, "status": service.server.status, "now": time.time(),
        "counters": {**snap["verdicts"], "LATE": plc["counters"]["LATE"], "triggers": plc["counters"]["triggers"]},
        "latency_ms": snap["latency_ms"], "fps": snap["fps"], "scale": scale,
        "recipe": {"id": active.id, "name": active.name} if active else None,
        "recipes": [{"id": r.id, "name": r.name, "trigger": r.trigger} for r in service.cfg.recipes],
        "drift": service.live.drift(active.id if active else None) + calibration_drift(service),
        "live": service.live.summary(), "ready": plc["ready"],
        "error": {"code": plc["error_code"], "detail": plc["error_detail"]}, "busy": plc["busy"],
        "can_change": user is not None, "user": user, "security_warnings": service.server.exposed,
    }


def build_app(service, auth: page_auth.PageAuth, stopping: threading.Event | None = None) -> Starlette:
    stopping = stopping or threading.Event()

    def state(request: Request) -> JSONResponse:
        return JSONResponse(page_state(service, page_auth.describe(request)))

    async def events(request: Request) -> StreamingResponse:
        """Server-Sent Events: the state on every change, and at least every HEARTBEAT_S."""
        async def stream():
            seq = None
            while (not stopping.is_set() and not await request.is_disconnected()
                   and auth.still_valid(request)):  # a removed user or a new password ends the stream
                body = json.dumps(page_state(service, page_auth.describe(request)), default=str,
                                  separators=(",", ":"))
                yield f"event: state\ndata: {body}\n\n"
                await anyio.sleep(MIN_PUSH_S)
                seq = service.live.summary()["seq"] if seq is None else seq
                seq = await anyio.to_thread.run_sync(service.live.wait_change, seq, HEARTBEAT_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def jpeg(data: bytes | None) -> Response:
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    def live(request: Request) -> Response:
        return jpeg(service.live.jpeg())

    def ng(request: Request) -> Response:
        return jpeg(service.live.jpeg(request.path_params["inspection"]))

    def image(request: Request) -> Response:
        layer = request.query_params.get("layer", "heatmap")
        if layer not in ("raw", "heatmap"):
            return JSONResponse({"ok": False, "error": "layer is raw or heatmap"}, status_code=400)
        return jpeg(service.live.jpeg(request.path_params["inspection"], layer))

    async def change(request: Request) -> JSONResponse:
        who = page_auth.who(request)  # the auth middleware has checked the user's role for this action
        action = request.path_params["action"]
        try:
            body = await request.json() if action in ("recipe", "review") else {}
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return JSONResponse({"ok": False, "error": 'send JSON: {"id": RECIPE_ID} or '
                                 '{"verdict_id": ID, "confirmed": true|false}'}, status_code=400)
        if action == "trigger":
            inspection = service.trigger("page", who)
            service.journal.event("page_trigger", who, inspection=inspection or service.hub.next_id - 1,
                                  refused=inspection is None)
            if inspection is None:
                return JSONResponse({"ok": False, "error": service.signals.error_detail}, status_code=409)
            return JSONResponse({"ok": True, "inspection": inspection})
        if action == "ack":
            return JSONResponse({"ok": True, "alarm": service.acknowledge_alarm(who)})
        if action == "recipe":
            try:
                return JSONResponse({"ok": True, **service.select_recipe(body.get("id"), who)})
            except PlcError as exc:
                return JSONResponse({"ok": False, "error": str(exc)}, status_code=400)
        if action == "shift":
            return JSONResponse({"ok": True, "ended": service.reset_shift(who)})
        if action == "review":
            verdict_id, confirmed = body.get("verdict_id"), body.get("confirmed")
            if not isinstance(verdict_id, int) or confirmed not in (True, False, None):
                return JSONResponse({"ok": False, "error": 'send {"verdict_id": ID, "confirmed": true (the NG '
                                     'is right) | false (overturned: the part is good) | null}'}, status_code=400)
            try:
                verdict = service.review(verdict_id, confirmed, who, str(body.get("note", ""))[:500])
            except LinesideError as exc:
                return JSONResponse({"ok": False, "error": str(exc)}, status_code=404)
            return JSONResponse({"ok": True, "verdict_id": verdict_id, "confirmed": verdict["confirmed"]})
        return JSONResponse({"ok": False, "error": f"unknown action {action}"}, status_code=404)

    return Starlette(routes=[
        Route("/", lambda request: HTMLResponse(PAGE)),
        Route("/api/state", state),
        Route("/api/events", events),
        Route("/live.jpg", live),
        Route("/ng/{inspection:int}.jpg", ng),
        Route("/image/{inspection:int}.jpg", image),
        Route("/api/{action}", change, methods=["POST"]),
        *auth.routes(),
    ], middleware=[Middleware(auth.middleware())])


def calibration_drift(service) -> list[str]:
    """The server's drift check (live OK scores against the calibration reference), when it warns."""
    with service.server.model_lock:
        report = service.server.model.drift.report()
    if report.get("status") in ("drift", "watch"):
        return [f"{report['message']} (PSI {report['psi']}, KS p {report['ks_pvalue']:.3g})"]
    return []


class OperatorPage:
    def __init__(self, service, cfg):
        auth = page_auth.PageAuth(service.server.cfg.security, tls=cfg.tls_cert is not None,
                                  station=service.station, journal_event=service.journal.event)
        self.stopping = threading.Event()  # ends the event streams, so uvicorn can stop
        self.app = build_app(service, auth, self.stopping)
        tls = {"ssl_certfile": str(cfg.tls_cert), "ssl_keyfile": str(cfg.tls_key)} if cfg.tls_cert else {}
        config = uvicorn.Config(self.app, host=cfg.host, port=cfg.port, log_level="warning", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=2, **tls)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="line-page", daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self.server.started:
            self.close()
            raise LinesideError(f"the operator page could not listen on {cfg.host}:{cfg.port}: pick a free port "
                                "in line.operator_page.port")
        self.url = f"{'https' if cfg.tls_cert else 'http'}://{cfg.host}:{cfg.port}/"

    def close(self) -> None:
        self.stopping.set()
        self.server.should_exit = True
        self.thread.join(timeout=5)
