"""Security of the web console over real HTTP against a real uvicorn: roles x routes, other
households' data, CSRF, session fixation, cookie flags, escaping, throttling, and releases that go
through the decryption role (never the web tier)."""

from __future__ import annotations

import base64
import re

import pytest
from webutil import (
    HOUSEHOLD_KEYS,
    HTML_ATTR,
    HTML_METER,
    METERS,
    PASSWORD,
    Browserless,
    Server,
    build_workspace,
)

from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.web.accounts import MAX_FAILURES, ROLES, Accounts
from meterveil.host.web.app import ROUTE_ROLES
from meterveil.protocol import e2e, household


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("websec"), generate_keypair(1024))


@pytest.fixture(scope="module")
def server(ws):
    with Server(ws.config()) as s:
        yield s


def client(server, role: str | None = None) -> Browserless:
    c = Browserless(server.url)
    if role:
        r = c.login(role)
        assert r.status_code == 303, r.text
    return c


def _concrete(route: str) -> str:
    return route.replace("{rid:int}", "1")


POSTS = {"/billing/request", "/auditor/verify", "/analyst/request"}


@pytest.mark.parametrize("role", ROLES)
def test_every_role_denied_every_page_it_must_not_see(server, ws, role):
    """Table-driven over ROUTE_ROLES: allowed -> not 403; denied -> 403 and no page content."""
    c = client(server, role)
    csrf = c.csrf(f"/{role}")
    for route, allowed in ROUTE_ROLES.items():
        path = _concrete(route)
        if route in POSTS:
            r = c.post(path, {"csrf": csrf, "period": "2026-11", "tariff": "tou3", "feeder": "F1",
                              "from": "2026-11-01", "to": "2026-11-01"})
        else:
            r = c.get(path + ("?month=2026-10" if path.endswith(".json") else ""))
        if role in allowed:
            assert r.status_code in (200, 303, 404), (role, path, r.status_code)
        else:
            assert r.status_code == 403, (role, path, r.status_code)
            body = r.text.split("</header>", 1)[-1]  # the header names the household's own meter
            for m in METERS:
                assert m not in body, (role, path)
    c.close()


@pytest.mark.parametrize("path", [_concrete(p) for p in ROUTE_ROLES])
def test_anonymous_gets_nothing(server, path):
    c = client(server)
    r = c.post(path, {}) if path in POSTS else c.get(path)
    assert r.status_code in (303, 401)
    if r.status_code == 303:
        assert r.headers["location"] == "/login"
    assert "m000" not in r.text


def test_household_sees_only_its_own_meter(server, ws):
    c = client(server, "household")  # meter m0000
    own = c.get("/household/copies.json?month=2026-10").json()
    assert own["meter_id"] == METERS[0] and len(own["copies"]) > 0
    for path in ("/household?meter=m0001", "/household/intervals?meter=m0001",
                 "/household/copies.json?month=2026-10&meter=m0001", "/household?meter=nonexistent"):
        r = c.get(path)
        assert r.status_code == 404, path
        assert "m0001" not in r.text.replace("meter=m0001", "")
    # the other household's copies are not among ours: each copy's tag binds its meter id, and every
    # one served opens with our key as a reading of our meter
    keys = e2e.household_keys(HOUSEHOLD_KEYS[METERS[0]])
    for cp in own["copies"]:
        household.open_copy(keys, base64.b64decode(cp["copy"]), METERS[0], cp["counter"], cp["start"], cp["len"])
    c.close()


def test_post_without_csrf_refused_and_nothing_queued(server, ws):
    from meterveil.host.common.release_queue import ReleaseQueue

    c = client(server, "billing")
    q = ReleaseQueue(ws.queue)
    before = len(q.recent(limit=1000))
    for data in ({"period": "2026-11", "tariff": "tou3"}, {"period": "2026-11", "tariff": "tou3", "csrf": "x" * 43}):
        r = c.post("/billing/request", data)
        assert r.status_code == 403
    assert len(q.recent(limit=1000)) == before
    # logout without the token does not log out
    assert c.post("/logout", {}).status_code == 403
    assert c.get("/billing").status_code == 200
    # a login form posted without the pre-login token is refused even with the right password
    anon = client(server)
    r = anon.post("/login", {"username": "billing", "password": PASSWORD})
    assert r.status_code == 403 and "mv_session" not in anon.cookies
    q.close()
    c.close()
    anon.close()


def test_session_fixation_and_logout(server):
    c = client(server)
    c.cookies["mv_session"] = "attacker-chosen-token"
    c.login("operator")
    assert c.cookies["mv_session"] != "attacker-chosen-token"
    stolen = c.cookies["mv_session"]
    # a second login replaces the session; the old token is dead
    c.login("operator")
    assert c.cookies["mv_session"] != stolen
    other = client(server)
    other.cookies["mv_session"] = stolen
    assert other.get("/operator").status_code == 303
    # logout ends the session on the server, not only in the browser
    token = c.cookies["mv_session"]
    csrf = c.csrf("/operator")
    assert c.post("/logout", {"csrf": csrf}).status_code == 303
    replay = client(server)
    replay.cookies["mv_session"] = token
    assert replay.get("/operator").status_code == 303


def test_cookie_flags(server, ws):
    c = client(server)
    c.login("auditor")
    session_cookie = [h for h in c.set_cookie_headers if h.startswith("mv_session=")][-1].lower()
    for flag in ("httponly", "secure", "samesite=strict", "path=/"):
        assert flag in session_cookie
    prelogin = [h for h in c.set_cookie_headers if h.startswith("mv_login=")][0].lower()
    assert "httponly" in prelogin and "secure" in prelogin
    # the database keeps a hash of the token, not the token
    acc = Accounts(ws.web_db)
    stored = [r[0] for r in acc.conn.execute("SELECT token_hash FROM sessions")]
    acc.close()
    assert c.cookies["mv_session"] not in stored
    r = c.get("/auditor")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"


def test_html_in_meter_ids_and_attributes_is_escaped(server):
    c = client(server, "operator")
    html = c.get("/operator").text
    assert HTML_METER not in html and HTML_ATTR not in html
    assert "&lt;img src=x onerror=" in html
    assert "&#34;&gt;&lt;script&gt;alert(" in html or "&quot;&gt;&lt;script&gt;alert(" in html
    assert "<script>alert" not in html
    assert "F1&lt;i&gt;" in html


def test_login_throttling(server, ws):
    acc = Accounts(ws.web_db)
    acc.add_user("victim", "analyst", "a-long-enough-password")
    acc.close()
    c = client(server)
    for _ in range(MAX_FAILURES):
        assert c.login("victim", "wrong password!").status_code == 401
    r = c.login("victim", "a-long-enough-password")
    assert r.status_code == 429 and "mv_session" not in c.cookies
    assert "Too many failed logins" in r.text


def test_no_default_credentials(tmp_path, ws):
    """A fresh console has no account at all; every common default fails."""
    from meterveil.host.web.app import WebConfig

    cfg = WebConfig(store=ws.store, web_db=tmp_path / "fresh-web.db", queue=tmp_path / "q.db")
    with Server(cfg) as s:
        c = client(s)
        for name, pw in (("admin", "admin"), ("admin", "password"), ("operator", "operator"), ("root", "")):
            assert c.login(name, pw).status_code in (401, 429)
        c.close()
    assert Accounts(tmp_path / "fresh-web.db").users() == []


def test_bill_run_goes_through_the_decryption_role(server, ws):
    """The web tier queues; only the worker (decryption role) decrypts, audits and answers."""
    c = client(server, "billing")
    csrf = c.csrf("/billing")
    r = c.post("/billing/request", {"csrf": csrf, "period": "2026-11", "tariff": "tou3"})
    assert r.status_code == 303
    rid = int(r.headers["location"].rsplit("/", 1)[1])
    page = c.get(f"/billing/requests/{rid}").text
    assert "queued" in page
    worker = ws.worker()
    assert worker.run_once() >= 1
    worker.queue.close()
    page = c.get(f"/billing/requests/{rid}").text
    assert re.search(r'id="status">(done|partial)<', page), page[:2000]
    for m in METERS:
        assert m in page
    # the audit log names the web user and the request
    a = client(server, "auditor")
    assert f"web:billing#{rid}" in a.get("/auditor").text
    # the household sees its own bill only
    h = client(server, "household")
    hp = h.get("/household").text
    assert "2026-11" in hp and "No bills yet" not in hp
    for c_ in (c, a, h):
        c_.close()


def test_feeder_load_refusal_shown_with_reason(server, ws):
    """A day with fewer contributors than m is refused by the role; the analyst sees why."""
    c = client(server, "analyst")
    csrf = c.csrf("/analyst")
    r = c.post("/analyst/request", {"csrf": csrf, "feeder": "F1", "from": "2026-10-31", "to": "2026-11-01"})
    rid = int(r.headers["location"].rsplit("/", 1)[1])
    worker = ws.worker()
    worker.run_once()
    worker.queue.close()
    page = c.get(f"/analyst/requests/{rid}").text
    assert 'id="status">partial<' in page or 'id="status">done<' in page
    assert "<svg" in page and "95% band" in page
    # unknown feeder is refused by the form, nothing queued
    r = c.post("/analyst/request", {"csrf": csrf, "feeder": "<b>nope</b>", "from": "2026-11-01", "to": "2026-11-01"})
    assert r.status_code == 400 and "<b>nope</b>" not in r.text
    c.close()


def test_throttle_per_address_and_window(tmp_path):
    from meterveil.host.web.accounts import MAX_FAILURES_ADDR, WINDOW_S

    now = [1_800_000_000.0]
    acc = Accounts(tmp_path / "w.db", clock=lambda: now[0])
    acc.add_user("clerk", "billing", PASSWORD)
    for i in range(MAX_FAILURES_ADDR):
        assert acc.authenticate(f"guess{i}", "nope", "10.0.0.9") is None
    assert acc.authenticate("clerk", PASSWORD, "10.0.0.9") is None  # that address is locked out
    assert acc.authenticate("clerk", PASSWORD, "10.0.0.8") is not None  # others are not
    now[0] += WINDOW_S + 1
    assert acc.authenticate("clerk", PASSWORD, "10.0.0.9") is not None  # the window slid past
    acc.close()


def test_operator_counts_the_same_rejections_as_the_gateway():
    from meterveil.host.gateway.ingest import NOT_REJECTIONS as gateway
    from meterveil.host.web.fleet import NOT_REJECTIONS as web

    assert web == gateway


def test_insecure_cookies_only_when_asked(ws):
    with Server(ws.config(secure_cookies=False)) as s:
        c = client(s)
        c.login("auditor")
        session_cookie = [h for h in c.set_cookie_headers if h.startswith("mv_session=")][-1].lower()
        assert "secure" not in session_cookie and "httponly" in session_cookie and "samesite=strict" in session_cookie
        c.close()
