"""The operator page's login, roles, machine tokens and TLS over real HTTP (httpx against
uvicorn on loopback), and a hypothesis fuzz of its login and API endpoints."""

import ssl
import time
from contextlib import contextmanager

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from line_helpers import free_port, wait_until
from security_helpers import PASSWORDS, audit, certificate

from edge_infer.journal import read_events
from edge_infer.users import UsersFile


@pytest.fixture
def start_page(tmp_path, accounts, serve_line):
    """start(tls=False, **operator_page settings) -> (url, service): the page with the accounts' users."""

    def start(tls=False, **page):
        port = free_port()
        if tls:
            cert, key = certificate(tmp_path / "pki", "page")
            page.update(tls_cert=str(cert), tls_key=str(key))
        service = serve_line({"operator_page": {"host": "127.0.0.1", "port": port, **page}},
                             recipes=accounts.recipes, security=accounts.security(session_hours=1))
        return f"{'https' if tls else 'http'}://127.0.0.1:{port}", service

    return start


@pytest.fixture
def page(tmp_path, accounts, start_page):
    url, service = start_page()
    return url, service, accounts.token, tmp_path / "station.yaml"


@contextmanager
def login(url, name, password=None, **kwargs):
    with httpx.Client(base_url=url, timeout=10, **kwargs) as client:
        r = client.post("/login", json={"user": name, "password": password or PASSWORDS[name]})
        assert r.status_code == 200 and r.json() == {"ok": True, "user": name, "role": r.json()["role"]}, r.text
        yield client


def test_without_login_the_page_redirects_and_the_api_answers_401(page):
    url, service, _token, _config = page
    r = httpx.get(f"{url}/", timeout=5)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "password" in httpx.get(f"{url}/login", timeout=5).text
    for method, path in (("GET", "/api/state"), ("GET", "/live.jpg"), ("POST", "/api/trigger"),
                         ("POST", "/api/recipe"), ("POST", "/api/ack")):
        assert httpx.request(method, f"{url}{path}", timeout=5).status_code == 401, path
    bad = httpx.post(f"{url}/login", json={"user": "eve", "password": "wrong-password"}, timeout=10)
    assert bad.status_code == 401 and "set-cookie" not in bad.headers
    assert service.signals.counters["triggers"] == 0


def test_operator_cannot_switch_recipes_an_engineer_can_and_audit_names_both(page):
    url, service, _token, config = page
    with login(url, "olga") as operator:
        state = operator.get("/api/state").json()
        assert state["user"] == {"name": "olga", "role": "operator"} and state["security_warnings"] == []
        refused = operator.post("/api/recipe", json={"id": 2})
        assert refused.status_code == 403 and "needs engineer" in refused.json()["error"]
        assert operator.post("/api/trigger").json() == {"ok": True, "inspection": 1}
    assert service.recipes.active.id == 1
    with login(url, "eve") as engineer:
        assert engineer.post("/api/recipe", json={"id": 2}).json()["ok"] is True
    assert wait_until(lambda: service.recipes.active.id == 2)
    events = audit(config)
    seen = {(e["kind"], e["who"]) for e in events}
    assert {("page_refused", "olga@page"), ("page_trigger", "olga@page"), ("recipe", "eve@page"),
            ("login", "olga@page"), ("login", "eve@page")} <= seen, seen
    assert [e["kind"] for e in audit(config, "--who", "eve", "--kind", "recipe")] == ["recipe"]


def test_a_machine_token_acts_with_its_role_and_sessions_end_with_the_password(page):
    url, _service, token, config = page
    machine = httpx.post(f"{url}/api/trigger", headers={"Authorization": f"Bearer {token}"}, timeout=5)
    assert machine.json() == {"ok": True, "inspection": 1}
    forged = httpx.post(f"{url}/api/trigger", headers={"Authorization": f"Bearer {token[:-2]}xx"}, timeout=5)
    assert forged.status_code == 401
    assert httpx.post(f"{url}/api/recipe", json={"id": 2}, timeout=5,
                      headers={"Authorization": f"Bearer {token}"}).status_code == 403  # an operator's token
    with login(url, "eve") as engineer:
        assert engineer.get("/api/state").status_code == 200
        with engineer.stream("GET", "/api/events") as stream:  # the page's live stream, open
            lines = stream.iter_lines()
            assert next(lines).startswith("event: state")
            UsersFile(config.parent / "users.json").set_password("eve", None, "a-new-password")
            assert engineer.get("/api/state").status_code == 401  # the old session ended
            ended, deadline = True, time.monotonic() + 10  # ... and so does the open stream
            for _line in lines:
                if time.monotonic() > deadline:  # still streaming: it would run for ever
                    ended = False
                    break
        assert ended
    assert any(e["who"] == "plc-1@page" and e["kind"] == "page_trigger" for e in audit(config, "--who", "plc-1"))


def test_tls_page_with_a_self_signed_certificate_sets_a_secure_strict_cookie(tmp_path, start_page):
    url, _service = start_page(tls=True)
    cert = tmp_path / "pki" / "page.cert.pem"
    # No plain HTTP: the TLS handshake fails and the server closes. Whether the client then reads
    # an end of stream or a reset (the server closed with the request's bytes unread) is a race.
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(url.replace("https", "http") + "/login", timeout=5)
    r = httpx.post(f"{url}/login", json={"user": "olga", "password": PASSWORDS["olga"]},
                   verify=ssl.create_default_context(cafile=str(cert)),
                   timeout=10)
    cookie = r.headers["set-cookie"].lower()
    assert r.status_code == 200 and "secure" in cookie and "httponly" in cookie and "samesite=strict" in cookie


def test_no_users_configured_means_read_only(serve_line):
    port = free_port()
    service = serve_line({"operator_page": {"host": "127.0.0.1", "port": port}})
    assert httpx.get(f"http://127.0.0.1:{port}/api/state", timeout=5).json()["can_change"] is False
    assert httpx.post(f"http://127.0.0.1:{port}/api/trigger", timeout=5).status_code == 403
    assert service.signals.counters["triggers"] == 0


PATHS = ["/", "/login", "/logout", "/api/state", "/api/events", "/api/trigger", "/api/ack", "/api/recipe",
         "/api/review", "/api/shift", "/api/threshold", "/api/reload", "/api/users", "/live.jpg", "/ng/1.jpg",
         "/image/1.jpg?layer=raw", "/api/", "/api/%00", "/..%2f", "//api/recipe", "/api/recipe/", "/API/recipe",
         "/api/recipe?x=1"]


def test_fuzzing_login_and_api_finds_no_500_and_no_bypass(tmp_path, start_page):
    """Every forged credential against every path and method (exhaustively), then hypothesis's
    random requests; no 500, no login without the password, and nothing changes on the line."""
    url, service = start_page()
    journal = tmp_path / "journal.sqlite"
    with login(url, "olga") as operator:
        olga = operator.cookies.get("lineside_session").strip('"')
    _name, expires, generation, mac = olga.split("|")
    forged_cookies = [f"eve|{expires}|{generation}|{mac}", f"olga|9999999999|{generation}|{mac}",
                      f"olga|{expires}|{generation}|{'0' * 64}", f"olga|{expires}|{'0' * 16}|{mac}",
                      f"ada|{expires}|{generation}|{mac}", "eve|1|x|y", "|||", olga + "|x", ""]
    credentials = ([{"cookie": f"lineside_session={c}"} for c in forged_cookies]
                   + [{"authorization": a} for a in ("Bearer lst_x", "Bearer ", "bearer lst_", "Basic ZXZlOng=")]
                   + [{}])
    client = httpx.Client(base_url=url, timeout=10)

    def check(method, path, headers, body=b""):
        try:
            r = client.request(method, path, headers=headers, content=body)
        except (httpx.InvalidURL, httpx.LocalProtocolError, UnicodeEncodeError):
            return  # the client would not send it
        assert r.status_code < 500, (method, path, headers, r.status_code, r.text[:200])
        if method == "POST" and path.startswith("/login") and r.status_code == 200:
            pytest.fail(f"logged in without the password: {body!r}")
        if path.startswith("/api/") and method == "POST":
            assert r.status_code in (401, 403, 404, 405), (method, path, headers, r.status_code)

    for headers in credentials:
        for path in PATHS:
            for method in ("GET", "POST"):
                check(method, path, {**headers, "content-type": "application/json"}, b'{"id": 2}')

    text = st.text(max_size=40)

    # No shrinking: a failure over the network would be re-run hundreds of times, each waiting
    # for its timeout; the first failing request, as reported, is enough to act on.
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              phases=[Phase.explicit, Phase.generate])
    @given(method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
           path=st.one_of(st.sampled_from(PATHS), text.map(lambda t: "/" + t.replace("#", "").replace("?", ""))),
           credential=st.one_of(st.sampled_from(credentials), text.map(lambda t: {"cookie": "lineside_session=" + t}),
                                text.map(lambda t: {"authorization": "Bearer " + t})),
           body=st.one_of(st.binary(max_size=200), st.just(b'{"id": 2}'), st.just(b'{"user":"eve"}'),
                          st.just(b"user=eve&password=x"), st.just(b'{"user":"eve","password":null}'),
                          st.builds(lambda u, pw: f"user={u}&password={pw}".encode(), text, text)),
           ctype=st.sampled_from(["application/json", "application/x-www-form-urlencoded", "text/plain", ""]))
    def probe(method, path, credential, body, ctype):
        headers = {k: v.encode("latin-1", "replace").decode("latin-1") for k, v in credential.items()}
        check(method, path, {**headers, "content-type": ctype}, body)

    probe()
    assert service.signals.counters["triggers"] == 0
    assert service.recipes.active.id == 1
    changes = [e for e in read_events(journal) if e["kind"] not in ("login", "page_refused", "recipe")
               or (e["kind"] == "recipe" and e["who"] != "startup")]
    assert changes == [], changes
