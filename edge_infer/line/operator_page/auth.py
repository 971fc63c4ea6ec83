"""Who may use the operator page: login, sessions, machine tokens and roles (docs/security.md).

One ASGI middleware guards every route, so a route added later is closed until it says
otherwise:

- ``/login`` and ``/logout`` are open; every other path needs a session cookie (a person,
  after login) or ``Authorization: Bearer lst_...`` (a machine token from `lineside users add
  --token`). Without either, a page request is redirected to the login page and any other
  request gets 401.
- ``POST /api/ACTION`` needs the role in ``ACTION_ROLES`` (an action not listed needs admin);
  a cookie-borne POST from another origin is refused (with SameSite=Strict, belt and braces).
- The request carries the user (``request.user``, a `Principal`); `who(request)` is the name
  the journal records.

Without ``security.users`` in the station config the page is read-only: it shows the line
and refuses every change with 403 (and `health` warns if it is open beyond loopback).
"""

from __future__ import annotations

import json
import time
from html import escape
from urllib.parse import parse_qs, urlparse

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from ...logs import log_event
from ...users import Principal, Sessions, UsersFile, load_or_make_secret

COOKIE = "lineside_session"
OPEN_PATHS = ("/login", "/logout")
ACTION_ROLES = {"trigger": "operator", "ack": "operator", "review": "operator", "shift": "operator",
                "recipe": "engineer", "threshold": "engineer", "reload": "engineer"}
MAX_FAILURES, FAILURE_WINDOW_S = 10, 300.0  # per client address: then 429 until the window passes
MAX_LOGIN_BODY = 4096

LOGIN_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>lineside login</title>
<style>body{{font-family:system-ui,sans-serif;background:#15181c;color:#e8e8e8;display:grid;place-items:center;
height:100vh;margin:0}}form{{background:#222831;padding:2em;border-radius:8px;display:grid;gap:.8em}}
input,button{{font-size:1.1em;padding:.4em}} .err{{color:#ef5350}}</style></head><body>
<form method="post" action="/login"><h1>lineside · {station}</h1>
<input name="user" autocomplete="username" placeholder="user" required autofocus>
<input name="password" type="password" autocomplete="current-password" placeholder="password" required>
<button type="submit">Log in</button><p class="err">{error}</p></form></body></html>"""


class PageAuth:
    def __init__(self, security, tls: bool, station: str, journal_event=None):
        self.enabled = security is not None
        self.tls, self.station = tls, station
        self.journal_event = journal_event or (lambda kind, who, **detail: None)
        self.failures: dict[str, list[float]] = {}
        if self.enabled:
            self.users = UsersFile(security.users)
            self.users.users()  # a users file readable by others stops the page at start, not at first login
            self.sessions = Sessions(self.users, load_or_make_secret(security.secret_path()),
                                     security.session_hours * 3600)

    # ---- identity ---------------------------------------------------------------------
    def principal(self, request: Request) -> Principal | None:
        if not self.enabled:
            return None
        header = request.headers.get("authorization", "")
        if header[:7].lower() == "bearer ":
            return self.users.by_token(header[7:].strip())
        cookie = request.cookies.get(COOKIE)
        return self.sessions.check(cookie) if cookie else None

    def still_valid(self, request: Request) -> bool:
        """For long requests (the event stream): does the request's login still hold?"""
        return not self.enabled or self.principal(request) is not None

    def routes(self) -> list[Route]:
        return [Route("/login", self.login_page, methods=["GET"]), Route("/login", self.login, methods=["POST"]),
                Route("/logout", self.logout, methods=["POST", "GET"])]

    def middleware(self):
        auth = self

        class Guard:
            def __init__(self, app):
                self.app = app

            async def __call__(self, scope, receive, send):
                if scope["type"] != "http":
                    return await self.app(scope, receive, send)
                request = Request(scope)
                refusal = auth.refuse(request)
                if refusal is not None:
                    return await refusal(scope, receive, send)
                return await self.app(scope, receive, send)

        return Guard

    def refuse(self, request: Request) -> Response | None:
        """None when the request may go on (request.user is set); else the answer to send."""
        path, method = request.url.path, request.method
        request.scope["user"] = None
        if path in OPEN_PATHS:
            return None
        if not self.enabled:
            if method in ("GET", "HEAD"):
                return None  # read-only page
            return JSONResponse({"ok": False, "error": "read-only: no users are configured (security.users in the "
                                 "station config; `lineside users add`)"}, status_code=403)
        principal = self.principal(request)
        if principal is None:
            if method in ("GET", "HEAD") and path == "/":
                return RedirectResponse("/login", status_code=303)
            return JSONResponse({"ok": False, "error": "log in first (/login), or send a machine token "
                                 "(Authorization: Bearer ...)"}, status_code=401)
        request.scope["user"] = principal
        if method in ("GET", "HEAD"):
            return None
        if principal.kind == "user" and not self._same_origin(request):
            return JSONResponse({"ok": False, "error": "cross-origin request refused"}, status_code=403)
        action = path[len("/api/"):] if path.startswith("/api/") else None
        needed = ACTION_ROLES.get(action, "admin")
        if not principal.may(needed):
            log_event("page_refused", station=self.station, user=principal.name, role=principal.role, action=path)
            self.journal_event("page_refused", who(request), action=action or path, role=principal.role,
                               needs=needed)
            return JSONResponse({"ok": False, "error": f"{principal.name} ({principal.role}) may not {action or path}: "
                                 f"that needs {needed}"}, status_code=403)
        return None

    @staticmethod
    def _same_origin(request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:
            return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")
        return urlparse(origin).netloc == request.headers.get("host")

    # ---- login / logout ---------------------------------------------------------------
    async def login_page(self, request: Request) -> Response:
        return HTMLResponse(LOGIN_PAGE.format(station=escape(self.station), error=""))

    async def login(self, request: Request) -> Response:
        wants_json = "json" in request.headers.get("content-type", "")
        if not self.enabled:
            return self._login_failed(wants_json, "no users are configured on this station (security.users)", 403)
        client = request.client.host if request.client else "?"
        now = time.monotonic()
        recent = [t for t in self.failures.get(client, []) if now - t < FAILURE_WINDOW_S]
        self.failures[client] = recent
        if len(recent) >= MAX_FAILURES:
            return self._login_failed(wants_json, "too many failed logins from this address: wait a few minutes", 429)
        # Counted as a failure before the check, so that a burst of concurrent guesses is limited too.
        if len(self.failures) > 10_000:  # bounded: forget the oldest addresses
            self.failures.pop(next(iter(self.failures)))
        self.failures.setdefault(client, []).append(now)
        name, password = await _credentials(request, wants_json)
        # scrypt takes most of a second on a busy 2-core box: off the event loop, so that the
        # page's event streams and other requests go on meanwhile.
        principal = await run_in_threadpool(self.users.authenticate, name, password) if name and password else None
        if principal is None or principal.kind != "user":
            log_event("login_failed", station=self.station, user=str(name)[:64], client=client)
            return self._login_failed(wants_json, "wrong user name or password", 401)
        self.failures.pop(client, None)
        self.journal_event("login", f"{principal.name}@page", role=principal.role, client=client)
        response = (JSONResponse({"ok": True, "user": principal.name, "role": principal.role}) if wants_json
                    else RedirectResponse("/", status_code=303))
        response.set_cookie(COOKIE, self.sessions.issue(principal), max_age=int(self.sessions.lifetime_s),
                            httponly=True, samesite="strict", secure=self.tls, path="/")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=self.tls)
        return response

    def _login_failed(self, wants_json: bool, error: str, status: int) -> Response:
        if wants_json:
            return JSONResponse({"ok": False, "error": error}, status_code=status)
        return HTMLResponse(LOGIN_PAGE.format(station=escape(self.station), error=escape(error)), status_code=status)


async def _credentials(request: Request, wants_json: bool) -> tuple[str | None, str | None]:
    body = await request.body()
    if len(body) > MAX_LOGIN_BODY:
        return None, None
    try:
        if wants_json:
            data = json.loads(body)
            data = data if isinstance(data, dict) else {}
            name, password = data.get("user"), data.get("password")
        else:
            form = parse_qs(body.decode("utf-8"), max_num_fields=8)
            name, password = (form.get("user") or [None])[0], (form.get("password") or [None])[0]
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(name, str) or not isinstance(password, str):
        return None, None
    return name, password


def who(request: Request) -> str:
    """The name the journal records for this request: USER@page (or page:ADDRESS when nobody logged in)."""
    principal = request.scope.get("user")
    if isinstance(principal, Principal):
        return f"{principal.name}@page"
    return f"page:{request.client.host if request.client else '?'}"


def describe(request: Request) -> dict | None:
    principal = request.scope.get("user")
    return {"name": principal.name, "role": principal.role} if isinstance(principal, Principal) else None
