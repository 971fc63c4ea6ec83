"""The operator page: token rules over HTTP, and the live page in real headless Chromium."""

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from line_helpers import free_port, line_station, start_line, wait_until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DOCS = Path(__file__).resolve().parents[2] / "docs"


def part(defect: bool, i: int) -> np.ndarray:
    """A 240x320 grey part with texture; a defective one has a bright scratch (tiny bundle: NG)."""
    rng = np.random.default_rng(i)
    image = np.clip(rng.normal(60, 12, (240, 320)), 0, 255).astype(np.uint8)
    cv2.circle(image, (160, 120), 90, 90, -1)
    if defect:
        cv2.line(image, (110 + i % 40, 80), (210, 170 - i % 30), 255, 9)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)


@pytest.fixture
def page(tmp_path):
    port = free_port()
    token = tmp_path / "operator.token"
    token.write_text("s3cret\n")
    count = iter(range(10_000))

    def grab():
        i = next(count)
        return part(i % 3 == 0, i)

    cfg = line_station(tmp_path, {"operator_page": {"host": "127.0.0.1", "port": port, "token_file": str(token)}})
    server, service = start_line(cfg, grab)
    yield f"http://127.0.0.1:{port}", server, service
    server.close()


def test_read_only_without_the_token_and_changes_are_journaled(page):
    url, _server, service = page
    state = httpx.get(f"{url}/api/state", timeout=5).json()
    assert state["recipe"] == {"id": 1, "name": "part-a"} and state["can_change"] is True
    assert httpx.post(f"{url}/api/trigger", timeout=5).status_code == 401
    assert httpx.post(f"{url}/api/trigger", headers={"Authorization": "Bearer nope"}, timeout=5).status_code == 401
    assert service.signals.counters["triggers"] == 0
    ok = httpx.post(f"{url}/api/trigger", headers={"Authorization": "Bearer s3cret"}, timeout=5).json()
    assert ok == {"ok": True, "inspection": 1}
    bad = httpx.post(f"{url}/api/recipe", json={"id": 5}, headers={"Authorization": "Bearer s3cret"}, timeout=5)
    assert bad.status_code == 400 and "UNKNOWN_RECIPE" in bad.json()["error"]
    assert wait_until(lambda: service.live.summary()["alarm"])  # part 0 is NG: an alarm
    ack = httpx.post(f"{url}/api/ack", headers={"Authorization": "Bearer s3cret"}, timeout=5).json()
    assert ack["ok"] and ack["alarm"]["inspection"] == 1
    kinds = [(e["kind"], e["who"].split(":")[0]) for e in service.journal.events()]
    assert ("page_trigger", "page") in kinds and ("recipe_refused", "page") in kinds and ("alarm_ack", "page") in kinds


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_live_frame_moving_counters_and_an_ng_heatmap_in_headless_chromium(page, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _server, service = page
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        try:
            view = browser.new_page(viewport={"width": 1200, "height": 800})
            view.goto(url)
            view.fill("#token", "s3cret")
            view.click("text=Trigger")  # the page's own button: part 0, NG
            view.wait_for_function("document.getElementById('count-NG') && "
                                   "document.getElementById('count-NG').textContent === '1'", timeout=20_000)
            for _ in range(6):  # more parts from the network: the counters must move on the page
                service.trigger("network", "test")
                wait_until(lambda: service.signals.in_flight == 0)
            view.wait_for_function("document.getElementById('count-OK').textContent === '4' && "
                                   "document.getElementById('count-NG').textContent === '3'", timeout=20_000)
            view.wait_for_function("() => { const i = document.getElementById('live'); "  # the last part, NG
                                   "return i.complete && i.naturalWidth === 320 && i.className === 'NG'; }",
                                   timeout=20_000)
            view.wait_for_function("() => { const imgs = [...document.querySelectorAll('img.ngimg')]; "
                                   "return imgs.length === 3 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
                                   timeout=20_000)
            # the NG thumbnail is a heatmap overlay: colour where the part itself is grey
            ng_jpeg = httpx.get(f"{url}/ng/1.jpg", timeout=5).content
            ng = cv2.imdecode(np.frombuffer(ng_jpeg, np.uint8), cv2.IMREAD_COLOR).astype(int)
            assert np.abs(ng[..., 2] - ng[..., 0]).mean() > 20
            shot = tmp_path / "operator-page.png"
            view.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("LINESIDE_UPDATE_DOCS"):  # refresh the docs' screenshot only when asked
                shutil.copy(shot, DOCS / "operator-page.png")
        finally:
            browser.close()
