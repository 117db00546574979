"""The console in a real browser: Playwright driving Debian's chromium (headless, --no-sandbox).

One uvicorn server and one browser for the module. Each role logs in and sees its page; a household
decrypts its own intervals in the browser (WebCrypto HKDF + HMAC + AES-CBC) and gets exactly the
energies sealed with the protocol's frame.seal; a wrong key opens nothing; the operator page shows a
meter going silent. Screenshots of each role's main page go to build/test-artifacts/web/.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from webutil import HOUSEHOLD_KEYS, METERS, PASSWORD, Server, build_workspace

from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.store.base import Batch, StatusRecord, open_store

ARTIFACTS = Path(__file__).resolve().parents[1] / "build" / "test-artifacts" / "web"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    ws = build_workspace(tmp_path_factory.mktemp("webui"), generate_keypair(1024))
    w = ws.worker()  # one released bill run, so billing, household and auditor pages have content
    w.queue.submit("bill", {"period": "2026-11", "tariff": "tou3"}, "billing")
    w.queue.submit("feeder-load", {"feeder": "F1", "t_from": 1793471400, "t_to": 1793471400 + 86400}, "analyst")
    w.run_once()
    w.queue.close()
    return ws


@pytest.fixture(scope="module")
def server(ws):
    with Server(ws.config(silent_after_s=5)) as s:
        yield s


@pytest.fixture(scope="module")
def browser():
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def login(browser, server, name: str):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    page.goto(server.url + "/login")
    page.fill("input[name=username]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_load_state()
    return ctx, page


@pytest.mark.parametrize("role,path,heading", [
    ("operator", "/operator", "Fleet health"),
    ("billing", "/billing", "Billing"),
    ("auditor", "/auditor", "Audit trail"),
    ("analyst", "/analyst", "Feeder loads"),
    ("household", "/household", "My electricity"),
])
def test_each_role_logs_in_and_sees_its_page(browser, server, role, path, heading):
    ctx, page = login(browser, server, role)
    assert page.url == server.url + path
    assert heading in page.inner_text("h1")
    cookies = {c["name"]: c for c in ctx.cookies()}
    assert cookies["mv_session"]["httpOnly"] and cookies["mv_session"]["secure"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
    page.screenshot(path=str(ARTIFACTS / f"{role}.png"), full_page=True)
    # logging out ends the session
    page.click("button.link")
    page.wait_for_load_state()
    assert page.url.startswith(server.url + "/login")
    page.goto(server.url + path)
    assert page.url.startswith(server.url + "/login")
    ctx.close()


def test_result_pages_render(browser, server):
    ctx, page = login(browser, server, "analyst")
    page.goto(server.url + "/analyst/requests/2")
    assert page.locator("svg.chart polyline").count() == 1
    page.screenshot(path=str(ARTIFACTS / "analyst-result.png"), full_page=True)
    ctx.close()
    ctx, page = login(browser, server, "billing")
    page.goto(server.url + "/billing/requests/1")
    assert page.locator("#bills tbody tr").count() == len(METERS) + 1  # + the meter with HTML in its id
    page.screenshot(path=str(ARTIFACTS / "billing-result.png"), full_page=True)
    ctx.close()


def _decrypt(page, key_hex: str, month: str):
    page.fill("#household-key", key_hex)
    page.select_option("#month", month)
    page.evaluate("window.meterveilLast = null; document.getElementById('decrypt-status').textContent = ''")
    page.click("#decrypt-form button")
    # polled from here: wait_for_function compiles its predicate with eval, which the page's CSP forbids
    deadline = time.time() + 30
    while time.time() < deadline:
        text = page.evaluate("document.getElementById('decrypt-status').textContent")
        if text and not text.startswith("Fetching"):
            break
        time.sleep(0.05)
    return page.evaluate("window.meterveilLast || null")


def test_household_decrypts_its_intervals_in_the_browser(browser, server, ws):
    ctx, page = login(browser, server, "household")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url + " " + (r.post_data or "")))
    page.goto(server.url + "/household/intervals")
    key = HOUSEHOLD_KEYS[METERS[0]].hex()
    got = []
    for month in ("2026-10", "2026-11"):  # the test day straddles a UTC month boundary
        last = _decrypt(page, key, month)
        assert last["bad"] == 0
        got += [(r["start"], r["wh"]) for r in last["readings"]]
        assert page.locator("#intervals tbody tr").count() > 0
        assert page.locator("#day-chart svg rect.bar").count() > 0
    assert sorted(got) == ws.truth[METERS[0]]
    page.screenshot(path=str(ARTIFACTS / "household-intervals.png"), full_page=True)
    # the key never left the page: no request carried it
    assert not [u for u in requests if key in u or key.upper() in u]
    # another household's key opens nothing of ours
    last = _decrypt(page, HOUSEHOLD_KEYS[METERS[1]].hex(), "2026-11")
    assert last and last["count"] == 0 and last["bad"] > 0
    assert "None of your readings opened" in page.inner_text("#decrypt-status")
    ctx.close()


def test_household_page_says_bills_only_without_copies(browser, tmp_path):
    ws2 = build_workspace(tmp_path, generate_keypair(512), copies=False)
    with Server(ws2.config()) as s:
        ctx, page = login(browser, s, "household")
        assert "Bills only" in page.inner_text("#bills-only")
        page.goto(s.url + "/household/intervals")
        assert page.locator("#decrypt-form").count() == 0 and "Bills only" in page.inner_text("#bills-only")
        ctx.close()


def test_operator_sees_a_meter_go_silent(browser, server, ws):
    """Two meters report; one stops. With silent-after 5 s the page turns it silent, the other not."""
    ctx, page = login(browser, server, "operator")
    talker, quiet = METERS[4], METERS[5]

    def report(meter: str, counter: int) -> None:
        store = open_store(ws.store)
        store.write_batch(Batch(statuses=[StatusRecord(meter, counter, int(time.time()), {"outbox_depth": 0})]))
        store.close()

    for meter in METERS:  # everyone heard just now
        report(meter, 1000)
    page.reload()
    row = page.locator(f'tr[data-meter="{quiet}"]')
    assert "reporting" in row.inner_text()
    deadline = time.time() + 60
    n = 1001
    while time.time() < deadline:
        report(talker, n)  # the talker keeps talking, the quiet one has stopped
        n += 1
        page.reload()
        if "silent" in page.locator(f'tr[data-meter="{quiet}"]').inner_text():
            break
        time.sleep(1)
    assert "silent" in page.locator(f'tr[data-meter="{quiet}"]').inner_text()
    assert "reporting" in page.locator(f'tr[data-meter="{talker}"]').inner_text()
    page.screenshot(path=str(ARTIFACTS / "operator-silent.png"), full_page=True)
    ctx.close()
