"""The operator page: a small ASGI app (Starlette, served by uvicorn on its own thread).

Read-only without login: the live part (heatmap over NG parts), the last NG parts, OK / NG /
ERROR / DROPPED / LATE counters, latency percentiles, the recipe, drift warnings. Changes
(switch recipe, trigger, acknowledge the alarm) need the operator token (``Authorization:
Bearer TOKEN``) and are journaled (table ``line_events``) with who did them.
"""

from __future__ import annotations

import hmac
import threading
import time
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ...errors import LinesideError
from ..plc_signals import PlcError

PAGE = (Path(__file__).parent / "page.html").read_text()


def build_app(service, token: str | None) -> Starlette:
    def state(request: Request) -> JSONResponse:
        snap = service.server.telemetry.snapshot()
        plc = service.signals.snapshot()
        active = service.recipes.active
        return JSONResponse({
            "station": service.station, "status": service.server.status,
            "counters": {**snap["verdicts"], "LATE": plc["counters"]["LATE"], "triggers": plc["counters"]["triggers"]},
            "latency_ms": snap["latency_ms"], "fps": snap["fps"],
            "recipe": {"id": active.id, "name": active.name} if active else None,
            "recipes": [{"id": r.id, "name": r.name, "trigger": r.trigger} for r in service.cfg.recipes],
            "drift": service.live.drift() + calibration_drift(service), "live": service.live.summary(),
            "error": {"code": plc["error_code"], "detail": plc["error_detail"]}, "busy": plc["busy"],
            "can_change": token is not None,
        })

    def jpeg(data: bytes | None) -> Response:
        if data is None:
            return Response(status_code=404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    def live(request: Request) -> Response:
        return jpeg(service.live.jpeg())

    def ng(request: Request) -> Response:
        return jpeg(service.live.jpeg(request.path_params["inspection"]))

    async def change(request: Request) -> JSONResponse:
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if token is None:
            return JSONResponse({"ok": False, "error": "read-only: no operator token is configured "
                                 "(line.operator_page.token_file)"}, status_code=403)
        if not given or not hmac.compare_digest(given.encode(), token.encode()):
            return JSONResponse({"ok": False, "error": "operator token missing or wrong"}, status_code=401)
        who = f"page:{request.client.host if request.client else '?'}"
        action = request.path_params["action"]
        try:
            body = await request.json() if action == "recipe" else {}
        except ValueError:
            return JSONResponse({"ok": False, "error": 'send JSON: {"id": RECIPE_ID}'}, status_code=400)
        if action == "trigger":
            inspection = service.trigger("page", who)
            service.journal.event("page_trigger", who, inspection=inspection)
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
        return JSONResponse({"ok": False, "error": f"unknown action {action}"}, status_code=404)

    return Starlette(routes=[
        Route("/", lambda request: HTMLResponse(PAGE)),
        Route("/api/state", state),
        Route("/live.jpg", live),
        Route("/ng/{inspection:int}.jpg", ng),
        Route("/api/{action}", change, methods=["POST"]),
    ])


def calibration_drift(service) -> list[str]:
    """The server's drift check (live OK scores against the calibration reference), when it warns."""
    with service.server.model_lock:
        report = service.server.model.drift.report()
    if report.get("status") in ("drift", "watch"):
        return [f"{report['message']} (PSI {report['psi']}, KS p {report['ks_pvalue']:.3g})"]
    return []


class OperatorPage:
    def __init__(self, service, cfg):
        token = None
        if cfg.token_file:
            try:
                token = cfg.token_file.read_text().strip() or None
            except OSError as exc:
                raise LinesideError(f"cannot read the operator token {cfg.token_file}: {exc}") from None
        self.app = build_app(service, token)
        config = uvicorn.Config(self.app, host=cfg.host, port=cfg.port, log_level="warning", lifespan="off",
                                access_log=False)
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
        self.url = f"http://{cfg.host}:{cfg.port}/"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
