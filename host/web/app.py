"""The web console (utility roles) and the household portal: one Starlette app, server-rendered.

Why this shape: every page is HTML from Jinja2 (autoescaped) and works without script; the only
script is ours (static/household.js, which decrypts the household's own intervals in the browser).
The app reads the ingest store (metadata, never a ciphertext it could open: it holds no key), the
release queue (answers of the decryption role) and the audit log (public verify key only). It writes
only its own web.db and requests into the queue.

Who sees what is one table, ROUTE_ROLES; `guard` enforces it for every route, and the security tests
walk it (routes x roles). A household's meter comes from its account, never from the URL or a form:
a request naming another meter is answered 404, the same as a meter that does not exist.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from meterveil.host.common.registry import MODE_E2E, MeterRegistry
from meterveil.host.common.release_queue import ReleaseQueue
from meterveil.host.web.accounts import Accounts, Session, csrf_ok
from meterveil.host.web.auditview import AuditView
from meterveil.host.web.charts import series_chart
from meterveil.host.web.fleet import NOT_REJECTIONS, Fleet
from meterveil.host.web.households import HouseholdCopies

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "mv_session"
PRELOGIN = "mv_login"
PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
PAGE_SIZE = 100

# path -> roles allowed. Every route is listed; `guard` refuses any other role with 403.
ROUTE_ROLES: dict[str, tuple[str, ...]] = {
    "/operator": ("operator",),
    "/billing": ("billing",),
    "/billing/request": ("billing",),
    "/billing/requests/{rid:int}": ("billing",),
    "/auditor": ("auditor",),
    "/auditor/verify": ("auditor",),
    "/auditor/head": ("auditor",),
    "/analyst": ("analyst",),
    "/analyst/request": ("analyst",),
    "/analyst/requests/{rid:int}": ("analyst",),
    "/household": ("household",),
    "/household/intervals": ("household",),
    "/household/copies.json": ("household",),
}
HOME = {"operator": "/operator", "billing": "/billing", "auditor": "/auditor", "analyst": "/analyst",
        "household": "/household"}


@dataclass
class WebConfig:
    store: Path
    web_db: Path
    queue: Path
    registry: Path | None = None
    audit_db: Path | None = None
    verify_key: Path | None = None
    anchors: Path | None = None
    tariffs: tuple[str, ...] = ()
    secure_cookies: bool = True
    silent_after_s: int = 2700
    extra: dict[str, Any] = field(default_factory=dict)


def _utc(t: int | None) -> str:
    if t is None:
        return "never"
    return datetime.fromtimestamp(int(t), timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _ago(t: int | None, now: float) -> str:
    if t is None:
        return "never"
    s = int(now - t)
    if s < 120:
        return f"{s} s ago"
    if s < 7200:
        return f"{s // 60} min ago"
    if s < 172800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def _span(s: int) -> str:
    return f"{s // 60} min" if s >= 120 else f"{s} s"


def _money(minor: int, unit: str = "") -> str:
    return f"{minor / 100:,.2f}" if unit in ("paise", "cents", "cent", "pence", "") else f"{minor:,} {unit}"


class Console:
    """Holds the app's resources; its methods are the endpoints."""

    def __init__(self, cfg: WebConfig):
        self.cfg = cfg
        self.accounts = Accounts(cfg.web_db)
        self.queue = ReleaseQueue(cfg.queue)
        self.registry = MeterRegistry.load(cfg.registry) if cfg.registry else None
        self.fleet = Fleet(str(cfg.store), self.registry, cfg.silent_after_s)
        self.copies = HouseholdCopies(str(cfg.store))
        self._charts: dict[int, tuple[Any, str, int]] = {}  # request id -> drawn chart (final requests)
        self.audit = AuditView(cfg.audit_db, cfg.verify_key, cfg.anchors) if cfg.audit_db else None
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters.update(utc=_utc, money=_money, tojson_attr=lambda v: json.dumps(v, sort_keys=True))

    def close(self) -> None:
        self.accounts.close()
        self.queue.close()
        self.fleet.close()
        self.copies.close()

    # -- plumbing -----------------------------------------------------------------------------------
    def render(self, request: Request, name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        sess: Session | None = request.scope.get("mv_session")
        html = self.env.get_template(name).render(session=sess, user=sess.user if sess else None,
                                                  csrf=sess.csrf if sess else "", path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=status)

    def error(self, request: Request, status: int, message: str) -> HTMLResponse:
        return self.render(request, "error.html", status=status, status_code=status, message=message)

    def set_cookie(self, resp: Response, name: str, value: str, max_age: int | None = None) -> None:
        resp.set_cookie(name, value, max_age=max_age, path="/", secure=self.cfg.secure_cookies, httponly=True,
                        samesite="strict")

    def guard(self, route: str, fn: Callable[[Request], Awaitable[Response]]):
        roles = ROUTE_ROLES[route]

        async def endpoint(request: Request) -> Response:
            sess = self.accounts.session(request.cookies.get(COOKIE))
            if sess is None:
                if request.method == "GET" and not route.endswith(".json"):
                    return RedirectResponse("/login", status_code=303)
                return PlainTextResponse("login required", status_code=401)
            request.scope["mv_session"] = sess
            if sess.user.role not in roles:
                return self.error(request, 403, "Your role cannot open this page.")
            if request.method == "POST":
                form = await request.form()
                if not csrf_ok(sess.csrf, form.get("csrf")):
                    return self.error(request, 403, "The form was not sent from this console (CSRF check failed). "
                                                    "Reload the page and try again.")
                request.scope["mv_form"] = form
            return await fn(request)

        return endpoint

    # -- login --------------------------------------------------------------------------------------
    async def login_form(self, request: Request) -> Response:
        token = secrets.token_urlsafe(32)
        resp = self.render(request, "login.html", login_csrf=token, message=request.query_params.get("m", ""))
        self.set_cookie(resp, PRELOGIN, token, max_age=3600)
        return resp

    async def login(self, request: Request) -> Response:
        form = await request.form()
        if not csrf_ok(request.cookies.get(PRELOGIN, ""), form.get("csrf")):
            return self.error(request, 403, "The login form expired or was not sent from this console. Reload it.")
        name, password = str(form.get("username", ""))[:64], str(form.get("password", ""))[:1024]
        client = request.client.host if request.client else "?"
        if self.accounts.throttled(f"user:{name}", f"addr:{client}"):
            resp = self.render(request, "login.html", status=429, login_csrf=form.get("csrf"),
                               message="Too many failed logins. Wait 15 minutes and try again.")
            return resp
        user = self.accounts.authenticate(name, password, client)
        if user is None:
            return self.render(request, "login.html", status=401, login_csrf=form.get("csrf"),
                               message="Wrong user name or password.")
        old = self.accounts.session(request.cookies.get(COOKIE))
        if old is not None:  # never reuse a session across logins
            self.accounts.end_session(old.token_hash)
        resp = RedirectResponse(HOME[user.role], status_code=303)
        self.set_cookie(resp, COOKIE, self.accounts.new_session(user))
        resp.delete_cookie(PRELOGIN, path="/")
        return resp

    async def logout(self, request: Request) -> Response:
        sess = self.accounts.session(request.cookies.get(COOKIE))
        form = await request.form()
        if sess is None:
            return RedirectResponse("/login", status_code=303)
        if not csrf_ok(sess.csrf, form.get("csrf")):
            return PlainTextResponse("CSRF check failed", status_code=403)
        self.accounts.end_session(sess.token_hash)
        resp = RedirectResponse("/login?m=You+are+logged+out.", status_code=303)
        resp.delete_cookie(COOKIE, path="/", secure=self.cfg.secure_cookies, httponly=True, samesite="strict")
        return resp

    async def home(self, request: Request) -> Response:
        sess = self.accounts.session(request.cookies.get(COOKIE))
        return RedirectResponse(HOME[sess.user.role] if sess else "/login", status_code=303)

    # -- operator -----------------------------------------------------------------------------------
    async def operator(self, request: Request) -> Response:
        now = time.time()
        q = request.query_params.get("q", "").strip()[:64]
        try:
            page = max(0, int(request.query_params.get("page", "0")))
        except ValueError:
            page = 0
        rows, total, silent, flagged = self.fleet.view(q, page * PAGE_SIZE, PAGE_SIZE)
        counters = self.fleet.counters()
        rejections = {k: v for k, v in counters.items() if k not in NOT_REJECTIONS}
        by_meter = sorted(self.fleet.meter_rejections().items(), key=lambda kv: -sum(kv[1].values()))[:20]
        rate = self.fleet.throughput(counters.get("accepted", 0))
        return self.render(
            request, "operator.html", rows=rows, total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)), q=q,
            now=now, ago=_ago, silent=silent, flagged=flagged, counters=counters, rejections=rejections,
            by_meter=by_meter, quarantine=self.fleet.quarantine(), rate=rate,
            silent_after=_span(self.cfg.silent_after_s))

    # -- billing ------------------------------------------------------------------------------------
    async def billing(self, request: Request, message: str = "", status: int = 200) -> Response:
        return self.render(request, "billing.html", status=status, requests=self.queue.recent("bill"),
                           tariffs=self.cfg.tariffs, message=message, default_period=_last_month())

    async def billing_request(self, request: Request) -> Response:
        form = request.scope["mv_form"]
        period, tariff = str(form.get("period", "")), str(form.get("tariff", ""))
        if not PERIOD_RE.match(period):
            return await self.billing(request, "Period must be YYYY-MM.", 400)
        if tariff not in self.cfg.tariffs:
            return await self.billing(request, "Unknown tariff.", 400)
        rid = self.queue.submit("bill", {"period": period, "tariff": tariff}, request.scope["mv_session"].user.name)
        return RedirectResponse(f"/billing/requests/{rid}", status_code=303)

    async def billing_result(self, request: Request) -> Response:
        req = self.queue.get(request.path_params["rid"])
        if req is None or req.kind != "bill":
            return self.error(request, 404, "No such bill run.")
        try:
            page = max(0, int(request.query_params.get("page", "0")))
        except ValueError:
            page = 0
        bills = self.queue.bills_of_request(req.id, limit=200, offset=page * 200)
        return self.render(request, "billing_request.html", req=req, bills=bills, page=page,
                           refusals=self.queue.refusals_of(req.id), ago=_ago, now=time.time())

    # -- auditor ------------------------------------------------------------------------------------
    async def auditor(self, request: Request, verify: Any = None) -> Response:
        if self.audit is None:
            return self.render(request, "auditor.html", audit=None, verify=None)
        return self.render(request, "auditor.html", audit=self.audit.summary(), verify=verify)

    async def auditor_verify(self, request: Request) -> Response:
        if self.audit is None:
            return self.error(request, 404, "No audit log is configured for this console.")
        return await self.auditor(request, verify=self.audit.verify())

    async def auditor_head(self, request: Request) -> Response:
        if self.audit is None:
            return self.error(request, 404, "No audit log is configured for this console.")
        seq, h = self.audit.head()
        return PlainTextResponse(f"{seq}:{h}\n", headers={"Content-Disposition": 'attachment; filename="audit-head.txt"'})

    # -- analyst ------------------------------------------------------------------------------------
    def _feeders(self) -> list[str]:
        if self.registry is not None:
            return sorted(self.registry.feeders())
        self.fleet.refresh()  # no registry given: the feeders the store's readings name
        return self.fleet.feeders()

    async def analyst(self, request: Request, message: str = "", status: int = 200) -> Response:
        return self.render(request, "analyst.html", status=status, requests=self.queue.recent("feeder-load"),
                           feeders=self._feeders(), message=message, default_from=_last_month() + "-01")

    async def analyst_request(self, request: Request) -> Response:
        form = request.scope["mv_form"]
        feeder = str(form.get("feeder", ""))
        if feeder not in self._feeders():
            return await self.analyst(request, "Unknown feeder.", 400)
        try:
            t_from = _parse_day(str(form.get("from", "")))
            t_to = _parse_day(str(form.get("to", ""))) + 86400
        except ValueError:
            return await self.analyst(request, "Dates must be YYYY-MM-DD.", 400)
        if not 0 < t_to - t_from <= 31 * 86400:
            return await self.analyst(request, "Choose a range of one day to one month.", 400)
        rid = self.queue.submit("feeder-load", {"feeder": feeder, "t_from": t_from, "t_to": t_to},
                                request.scope["mv_session"].user.name)
        return RedirectResponse(f"/analyst/requests/{rid}", status_code=303)

    async def analyst_result(self, request: Request) -> Response:
        req = self.queue.get(request.path_params["rid"])
        if req is None or req.kind != "feeder-load":
            return self.error(request, 404, "No such feeder-load request.")
        cached = self._charts.get(req.id)
        if cached is None:
            cached = self._feeder_chart(req)
            if req.final:  # an answered request never changes: draw it once (the newest 64 kept)
                self._charts[req.id] = cached
                while len(self._charts) > 64:
                    self._charts.pop(next(iter(self._charts)))
        chart, band_note, released = cached
        return self.render(request, "analyst_request.html", req=req, released=released,
                           chart=chart, band_note=band_note, refusals=self.queue.refusals_of(req.id)[:50])

    def _feeder_chart(self, req) -> tuple[Any, str, int]:
        from meterveil.host.backoffice import dp

        loads = self.queue.feeder_loads_of(req.id)
        chart, band_note = None, ""
        released = [f for f in loads if f["status"] == "ok"]
        if released:
            stds: dict[tuple[int, ...], float] = {}  # one variance per parameter set, not per point
            band = []
            for f in released:
                k = (f["epsilon_milli"], f["clamp_wh"], f["m"], f["contributors"], f["interval_len"])
                if k not in stds:  # every reading of the cell carries one share: contributors x intervals
                    shares = k[3] * max(1, k[4] // dp.INTERVAL_S)
                    stds[k] = (shares * dp.share_variance(k[0] / 1000, k[1], k[2])) ** 0.5
                band.append(1.96 * stds[k])
            chart = series_chart([f["interval_start"] for f in released], [f["analytics_sum_wh"] for f in released],
                                 band, y_label="Wh per interval", title=f"feeder {req.params.get('feeder')}")
            band_note = (f"Shaded: 95% band of the differential-privacy noise (±1.96 σ, σ ≈ {band[0] / 1.96:.0f} Wh "
                         f"per cell with {released[0]['contributors']} contributors, "
                         f"ε = {released[0]['epsilon_milli'] / 1000:g} per household-day, "
                         f"clamp {released[0]['clamp_wh']} Wh).")
        return chart, band_note, len(released)

    # -- household ----------------------------------------------------------------------------------
    def _own_meter(self, request: Request) -> str | None:
        """The account's meter; None (-> 404) when the request names any other meter."""
        own = request.scope["mv_session"].user.meter_id
        asked = request.query_params.get("meter")
        if request.method == "POST":
            asked = request.scope["mv_form"].get("meter", asked)
        return own if asked in (None, "", own) else None

    def _copies_state(self, meter: str, months: list[str]) -> str:
        """What the page can offer: ``e2e`` (copies to open), ``waiting`` (an E2E meter, none stored yet)
        or ``proxy`` (the meter sends proxy-mode frames: no household copy exists)."""
        if months:
            return "e2e"
        rec = self.registry.get(meter) if self.registry else None
        return "waiting" if rec is not None and rec.mode == MODE_E2E else "proxy"

    async def household(self, request: Request) -> Response:
        meter = self._own_meter(request)
        if meter is None:
            return self.error(request, 404, "No such meter.")
        state = self._copies_state(meter, self.copies.months(meter))
        return self.render(request, "household.html", meter=meter, bills=self.queue.bills_of_meter(meter),
                           copies_state=state)

    async def household_intervals(self, request: Request) -> Response:
        meter = self._own_meter(request)
        if meter is None:
            return self.error(request, 404, "No such meter.")
        months = self.copies.months(meter)
        return self.render(request, "household_intervals.html", meter=meter, months=months,
                           copies_state=self._copies_state(meter, months))

    async def household_copies(self, request: Request) -> Response:
        meter = self._own_meter(request)
        if meter is None:
            return JSONResponse({"error": "no such meter"}, status_code=404)
        month = request.query_params.get("month", "")
        if not PERIOD_RE.match(month):
            return JSONResponse({"error": "month must be YYYY-MM"}, status_code=400)
        return JSONResponse({"meter_id": meter, "month": month, "copies": self.copies.month(meter, month)},
                            headers={"Cache-Control": "no-store"})


def _last_month() -> str:
    now = datetime.now(timezone.utc)
    y, m = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    return f"{y:04d}-{m:02d}"


def _parse_day(text: str) -> int:
    d = datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    return int(d.timestamp())


SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class SecurityHeaders:
    """Pure ASGI middleware: the headers above on every response, and Server-Timing (time from the
    request to the response headers, what bench/web.py reports as server time)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        t0 = time.perf_counter()

        async def send_with(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"server-timing", f"app;dur={1000 * (time.perf_counter() - t0):.2f}".encode()))
                present = {k.lower() for k, _ in headers}
                for k, v in SECURITY_HEADERS.items():
                    if k.lower().encode() not in present:
                        headers.append((k.lower().encode(), v.encode()))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with)


def create_app(cfg: WebConfig) -> Starlette:
    c = Console(cfg)
    g = c.guard
    routes = [
        Route("/", c.home),
        Route("/login", c.login_form, methods=["GET"]),
        Route("/login", c.login, methods=["POST"]),
        Route("/logout", c.logout, methods=["POST"]),
        Route("/operator", g("/operator", c.operator)),
        Route("/billing", g("/billing", c.billing)),
        Route("/billing/request", g("/billing/request", c.billing_request), methods=["POST"]),
        Route("/billing/requests/{rid:int}", g("/billing/requests/{rid:int}", c.billing_result)),
        Route("/auditor", g("/auditor", c.auditor)),
        Route("/auditor/verify", g("/auditor/verify", c.auditor_verify), methods=["POST"]),
        Route("/auditor/head", g("/auditor/head", c.auditor_head)),
        Route("/analyst", g("/analyst", c.analyst)),
        Route("/analyst/request", g("/analyst/request", c.analyst_request), methods=["POST"]),
        Route("/analyst/requests/{rid:int}", g("/analyst/requests/{rid:int}", c.analyst_result)),
        Route("/household", g("/household", c.household)),
        Route("/household/intervals", g("/household/intervals", c.household_intervals)),
        Route("/household/copies.json", g("/household/copies.json", c.household_copies)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            c.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = c
    return SecurityHeaders(app)  # type: ignore[return-value]
