"""The console in a real browser: Playwright driving Debian's chromium (headless, --no-sandbox).

One uvicorn server and one browser for the module. Each role logs in and sees its page; a household
decrypts its own intervals in the browser (WebCrypto HKDF + HMAC + AES-CBC) and gets exactly the
energies its meter sealed: copies made by the protocol's e2e.seal on CPython, and copies from a real
end-to-end pipeline (`demo --mode e2e`: firmware meters on the MicroPython unix port, broker, gateway)
checked against truth.csv; a wrong key opens nothing; a proxy-mode household is told why it has bills
only; the operator page shows a meter going silent. Screenshots of each role's main page go to
build/test-artifacts/web/.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright
from webutil import HOUSEHOLD_KEYS, METERS, PASSWORD, Server, build_workspace

from meterveil.host.decryption.secret_key import generate_keypair

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


def _decrypt(page, key_text: str, month: str):
    page.fill("#household-key", key_text)
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
    page.screenshot(path=str(ARTIFACTS / "household-intervals.png"))  # the form, the day chart, first rows
    # the key never left the page: no request carried it
    assert not [u for u in requests if key in u or key.upper() in u]
    # another household's key opens nothing of ours
    last = _decrypt(page, HOUSEHOLD_KEYS[METERS[1]].hex(), "2026-11")
    assert last and last["count"] == 0 and last["bad"] > 0
    assert "None of your readings opened" in page.inner_text("#decrypt-status")
    ctx.close()


def test_household_page_says_proxy_mode_means_bills_only(browser, tmp_path):
    ws2 = build_workspace(tmp_path, generate_keypair(512), copies=False)
    with Server(ws2.config()) as s:
        ctx, page = login(browser, s, "household")
        note = page.locator("#bills-only")
        assert "Bills only" in note.inner_text() and "proxy mode" in note.inner_text()
        assert note.get_attribute("data-mode") == "proxy"
        assert page.locator("a[href='/household/intervals']").count() == 0
        page.screenshot(path=str(ARTIFACTS / "household-proxy.png"), full_page=True)
        page.goto(s.url + "/household/intervals")
        assert page.locator("#decrypt-form").count() == 0 and "proxy mode" in page.inner_text("#bills-only")
        ctx.close()


# -- a real end-to-end pipeline ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def e2e_demo(tmp_path_factory):
    """`demo --mode e2e`, small: two firmware meters seal a day of readings, the gateway stores them
    (never opening one), each household gets a card. Returns (workspace, truth {(meter, start): wh})."""
    from test_demo import _recent_weekday, _truth

    from meterveil.host.demo.run import run_demo
    from meterveil.host.demo.setup import DemoConfig

    out = tmp_path_factory.mktemp("web-demo-e2e")
    cfg = DemoConfig(meters=2, feeders=1, days=1, start=_recent_weekday(), start_hour=0, k_min=2, key_bits=1024,
                     out=out, progress=False, timeout_s=900, mode="e2e")
    result = run_demo(cfg)
    assert result.readings == result.expected == 2 * 96
    return result.workspace, _truth(out)


def test_household_decrypts_the_copies_its_e2e_meter_sealed(browser, e2e_demo, tmp_path):
    """The console on the real E2E store: the household types the key from its card; every interval the
    browser opens equals truth.csv for its meter, interval by interval, over every month offered; the
    key is in no request; another household's key, a malformed key and another meter's card show a
    clear error and no values."""
    from meterveil.host.household.card import read_card
    from meterveil.host.web.accounts import Accounts
    from meterveil.host.web.app import WebConfig

    ws, truth = e2e_demo
    meters = sorted({m for m, _ in truth})
    mine, other = meters[0], meters[1]
    card, other_card = read_card(ws / "households" / mine), read_card(ws / "households" / other)
    acc = Accounts(tmp_path / "web.db")
    acc.add_user("household", "household", PASSWORD, mine)
    acc.close()
    cfg = WebConfig(store=ws / "store.sqlite", web_db=tmp_path / "web.db", queue=tmp_path / "releases.db",
                    registry=ws / "registry" / "meters.json")
    with Server(cfg) as s:
        ctx, page = login(browser, s, "household")
        sent: list[str] = []
        page.on("request", lambda r: sent.append(f"{r.url} {r.post_data or ''} {sorted(r.headers.items())}"))
        assert page.locator("#bills-only").count() == 0
        page.click("a[href='/household/intervals']")
        page.wait_for_load_state()
        months = page.locator("#month option").all_inner_texts()
        assert months, "no month offered"
        key = card.key.hex()
        got: dict[int, int] = {}
        for month in months:
            last = _decrypt(page, key, month)
            assert last["bad"] == 0 and last["count"] > 0, page.inner_text("#decrypt-status")
            for r in last["readings"]:
                assert r["start"] not in got
                got[r["start"]] = r["wh"]
            shown = page.locator("#intervals tbody tr")
            assert shown.count() > 0 and page.locator("#day-chart svg rect.bar").count() == shown.count()
            assert "Decrypted" in page.inner_text("#decrypt-status")
        want = {t: wh for (m, t), wh in truth.items() if m == mine}
        assert len(want) == 96
        assert got == want  # interval by interval, energies decrypted by WebCrypto in the page
        page.screenshot(path=str(ARTIFACTS / "household-e2e.png"))
        # the whole card line (what the card's QR code holds) works as well
        assert _decrypt(page, card.line, months[0])["count"] == len(_month_starts(months[0], got))
        # wrong keys: a clear error and no values left on the page
        for text, error, says in ((other_card.key.hex(), "wrong-key", "None of your readings opened"),
                                  (key[:-2], "bad-key", "64 hexadecimal"),
                                  (other_card.line, "bad-key", f"card is for meter {other}")):
            last = _decrypt(page, text, months[0])
            status = page.locator("#decrypt-status")
            assert last["count"] == 0 and status.get_attribute("data-error") == error, status.inner_text()
            assert says in status.inner_text() and "notice bad" in status.get_attribute("class")
            assert page.locator("#result").is_hidden() and page.locator("#intervals tbody tr").count() == 0
        page.screenshot(path=str(ARTIFACTS / "household-e2e-wrong-key.png"))
        ctx.close()
    # the key never left the page: no URL, body or header of any request carried it
    assert sent and any("/household/copies.json" in r for r in sent)
    for k in (card.key.hex(), other_card.key.hex()):
        assert not [r for r in sent if k in r.lower()]


def _month_starts(month: str, starts) -> set[int]:
    from meterveil.host.web.households import month_bounds

    t0, t1 = month_bounds(month)
    return {t for t in starts if t0 <= t < t1}


def test_operator_sees_a_meter_go_silent(browser, tmp_path, mosquitto):
    """Real parts: mosquitto, `meterveil gateway`, two firmware meters on the MicroPython unix port
    (one 15-minute interval per real second). Meter B's process is stopped; with silent-after 4 s the
    operator page turns B silent while A, still publishing, stays reporting."""
    import json
    import subprocess
    import sys
    from datetime import date, timedelta

    from brokerutil import wait_until

    from meterveil.host.demo.firmware_runner import MeterProcess, build_firmware
    from meterveil.host.demo.setup import DemoConfig, provision, write_meter_configs
    from meterveil.host.web.accounts import Accounts
    from meterveil.host.web.app import WebConfig

    cfg = DemoConfig(meters=2, feeders=1, days=1, start=date.today() - timedelta(days=3), start_hour=0, k_min=2,
                     block_s=10, out=tmp_path / "out", progress=False)
    ws = provision(cfg, tmp_path / "ws", with_passwords=False)
    write_meter_configs(ws, cfg, mosquitto.url, 900)
    for p in ws.meters:
        conf = json.loads(p.config.read_text())
        conf["broker"].update(keepalive_s=30, backoff_min_ms=100, backoff_max_ms=1000, ack_timeout_ms=3000)
        p.config.write_text(json.dumps(conf, indent=1))
    build_firmware()
    acc = Accounts(tmp_path / "web.db")
    acc.add_user("operator", "operator", PASSWORD)
    acc.close()
    gw_log = tmp_path / "gateway.log"
    with gw_log.open("wb") as logf:
        gw = subprocess.Popen([sys.executable, "-m", "meterveil.host.cli", "gateway", "--broker", mosquitto.url,
                               "--db", str(ws.db), "--keys", str(ws.keys_dir), "--registry", str(ws.registry),
                               "--batch-ms", "50"], stdout=subprocess.DEVNULL, stderr=logf)
    meters = {}
    try:
        assert wait_until(lambda: b"gateway ready" in gw_log.read_bytes(), 60), gw_log.read_text()[-2000:]
        for p in ws.meters:
            meters[p.meter_id] = MeterProcess(p.config, p.dir / "state", intervals=96,
                                              log_path=tmp_path / f"{p.meter_id}.log").start()
        a, b = sorted(meters)

        def stored(mid: str) -> int:
            import sqlite3
            try:
                c = sqlite3.connect(ws.db, timeout=5)
                try:
                    return c.execute("SELECT COUNT(*) FROM readings WHERE meter_id=?", (mid,)).fetchone()[0]
                finally:
                    c.close()
            except sqlite3.OperationalError:
                return 0

        assert wait_until(lambda: stored(a) >= 3 and stored(b) >= 3, 120), (meters[a].lines[-20:], gw_log.read_text()[-2000:])
        web_cfg = WebConfig(store=ws.db, web_db=tmp_path / "web.db", queue=tmp_path / "releases.db",
                            registry=ws.registry, silent_after_s=4)
        with Server(web_cfg) as s:
            ctx, page = login(browser, s, "operator")
            assert "reporting" in page.locator(f'tr[data-meter="{b}"]').inner_text()
            meters[b].terminate()  # the meter's process is stopped
            deadline = time.time() + 60
            while time.time() < deadline:
                page.reload()
                if "silent" in page.locator(f'tr[data-meter="{b}"]').inner_text():
                    break
                time.sleep(0.5)
            assert "silent" in page.locator(f'tr[data-meter="{b}"]').inner_text()
            assert meters[a].running
            assert "reporting" in page.locator(f'tr[data-meter="{a}"]').inner_text()
            page.screenshot(path=str(ARTIFACTS / "operator-silent.png"), full_page=True)
            ctx.close()
    finally:
        for m in meters.values():
            if m.running:
                m.kill()
        gw.terminate()
        gw.wait(30)
