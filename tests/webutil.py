"""Helpers for the web console tests: a real workspace (store with real Paillier ciphertexts,
registry, decryption role folder, release queue, web accounts) and a real uvicorn server.

The first two meters run in end-to-end mode: their rows are kind 3 frames sealed by the protocol's own
`e2e.seal` (the code the meters run) and split by `opener.split_e2e` as the gateway stores them, so each
row keeps the household's sealed copy (`readings.household`) beside a Paillier ciphertext the decryption
role bills from. The other meters are proxy-mode rows without a copy.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import uvicorn

from meterveil.host.audit import signing
from meterveil.host.backoffice.tariff import DEFAULT_TARIFF
from meterveil.host.common.registry import MODE_E2E, MeterRecord, MeterRegistry
from meterveil.host.common.release_queue import ReleaseQueue
from meterveil.host.decryption import secret_key
from meterveil.host.decryption.serve import Worker, tariffs_by_name
from meterveil.host.gateway.encryptor import make_encryptor
from meterveil.host.store.base import SCHEME_PACKED_E2E_V1, Batch, StatusRecord, StoredReading, open_store
from meterveil.host.web.accounts import ROLES, Accounts
from meterveil.host.web.app import WebConfig, create_app
from meterveil.protocol import e2e, frame, household, opener, paillier

T0 = 1793471400  # 2026-11-01 00:00 IST (2026-10-31 18:30 UTC), a multiple of 900
IV = 900
INTERVALS = 96
METERS = [f"m{i:04d}" for i in range(6)]
HTML_METER = '<img src=x onerror="alert(1)">'
HTML_ATTR = '"><script>alert("attr")</script>'
PASSWORD = "correct horse battery staple"
HOUSEHOLD_KEYS = {m: bytes([i + 1]) * 32 for i, m in enumerate(METERS)}  # test keys, not secrets
E2E_METERS = METERS[:2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def energy(meter_index: int, k: int) -> int:
    """A plausible, meter-specific load shape in Wh per 15 minutes."""
    return 40 + 7 * meter_index + (k * 37 + meter_index * 11) % 90 + (120 if 68 <= k <= 84 else 0)


def seal_e2e(n: int, meter_id: str, counter: int, start: int, wh: int, key: bytes, *, flags: int = 0,
             length: int = IV) -> tuple[int, bytes]:
    """A kind 3 frame as an E2E meter seals it, split as the gateway stores it: (Paillier ciphertext,
    household copy). ``rho`` is a fresh n-th residue r^n mod n^2, as the meter's obfuscator makes."""
    header = {"kind": frame.KIND_READING_PAILLIER, "meter_id": meter_id, "counter": counter, "interval_start": start,
              "interval_len": length, "epsilon_milli": 1000, "clamp_wh": 500, "m": 5}
    fields = {"billing_wh": wh, "analytics_wh": wh, "flags": flags, "samples": 900, "clipped": 0, "missing_s": 0}
    rho = pow(secrets.randbelow(n - 2) + 2, n, n * n)
    sealed = e2e.seal(frame.derive_keys(bytes(32)), e2e.household_keys(key), header, fields, n, rho, os.urandom(16))
    _meta, ct, copy = opener.split_e2e(sealed, e2e.body_len(paillier.nsq_len(n)))
    return ct, copy


@dataclass
class Workspace:
    root: Path
    store: Path
    registry: Path
    role_dir: Path
    queue: Path
    web_db: Path
    truth: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # meter -> [(start, wh)]

    def config(self, **over) -> WebConfig:
        kw = dict(store=self.store, web_db=self.web_db, queue=self.queue, registry=self.registry,
                  audit_db=self.role_dir / "decryption.db", tariffs=("tou3",), silent_after_s=2700)
        kw.update(over)
        return WebConfig(**kw)

    def worker(self) -> Worker:
        return Worker(str(self.store), str(self.role_dir), str(self.registry), ReleaseQueue(self.queue),
                      tariffs_by_name([str(DEFAULT_TARIFF)]), k_min=5)


def build_workspace(root: Path, keypair, *, copies: bool = True) -> Workspace:
    """``copies=False``: every meter in proxy mode (no household copy anywhere)."""
    e2e_meters = E2E_METERS if copies else []
    pub, priv = keypair
    ws = Workspace(root, root / "store.db", root / "registry" / "meters.json", root / "decryption",
                   root / "releases.db", root / "web.db")
    secret_key.write_secret(ws.role_dir, priv)
    signing.generate(ws.role_dir)
    reg = MeterRegistry.load(ws.registry)
    enc = make_encryptor("djn+packed", pub)
    store = open_store(ws.store)
    now = int(time.time())
    try:
        batch = Batch()
        for i, m in enumerate(METERS):
            attrs = {"rated_amps": 60, "volts": 230, "phases": 1}
            if i == 0:
                attrs["street"] = HTML_ATTR
            ws.truth[m] = []
            if m not in e2e_meters:
                reg.put(MeterRecord(m, "F1", 1000, 500, 5, attrs), save=False)
            else:
                reg.put(MeterRecord(m, "F1", 1000, 500, 5, attrs, mode=MODE_E2E,
                                    household_fingerprint=household.fingerprint(HOUSEHOLD_KEYS[m])), save=False)
            for k in range(INTERVALS):
                wh = energy(i, k)
                start = T0 + k * IV
                if m in e2e_meters:
                    c, copy = seal_e2e(pub.n, m, k + 1, start, wh, HOUSEHOLD_KEYS[m])
                    row = StoredReading(m, k + 1, "F1", start, IV, 1000, 500, 5, c, scheme=SCHEME_PACKED_E2E_V1,
                                        frame_digest=bytes([i, k]), received_at=now - 60, household=copy)
                else:
                    (c,) = enc.encrypt_reading(wh, wh)
                    row = StoredReading(m, k + 1, "F1", start, IV, 1000, 500, 5, c,
                                        frame_digest=bytes([i, k]), received_at=now - 60)
                batch.readings.append(row)
                ws.truth[m].append((start, wh))
            batch.statuses.append(StatusRecord(m, INTERVALS + 1, now - 30, {
                "uptime_s": 86400, "free_heap": 20000, "outbox_depth": 0, "outbox_overflow": 0, "reconnects": 1,
                "publish_retries": 0, "dp_spend_milli": 96000, "readings_today": 96, "boot_count": 1}))
        # a meter id with HTML in it, as a misbehaving ingest path could store it (the gateway would refuse it);
        # as many readings as the others, so that its bill passes the readings-per-band floor and is rendered
        for k in range(INTERVALS):
            (c,) = enc.encrypt_reading(1, 1)
            batch.readings.append(StoredReading(HTML_METER, k + 1, "F1<i>", T0 + k * IV, IV, 1000, 500, 5, c,
                                                frame_digest=bytes([255, k]), received_at=now - 90000))
        batch.count("bad_tag", "m0003", 2)
        store.write_batch(batch)
    finally:
        store.close()
        enc.close()
    reg.save()
    acc = Accounts(ws.web_db)
    for role in ROLES:
        acc.add_user(role, role, PASSWORD, METERS[0] if role == "household" else None)
    acc.add_user("household2", "household", PASSWORD, METERS[1])
    acc.close()
    ReleaseQueue(ws.queue).close()
    return ws


class Server:
    """uvicorn serving the app in a thread of this process, on a free loopback port."""

    def __init__(self, cfg: WebConfig):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(cfg), host="127.0.0.1", port=self.port,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("web server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


class Browserless:
    """An HTTP client that keeps cookies by hand (http.cookiejar never sends Secure cookies over http,
    browsers do on loopback) and knows the login dance."""

    def __init__(self, base: str):
        self.http = httpx.Client(base_url=base, follow_redirects=False, timeout=30)
        self.cookies: dict[str, str] = {}
        self.set_cookie_headers: list[str] = []

    def _remember(self, resp: httpx.Response) -> httpx.Response:
        for h in resp.headers.get_list("set-cookie"):
            self.set_cookie_headers.append(h)
            name, _, rest = h.partition("=")
            value = rest.split(";", 1)[0].strip('"')
            if "max-age=0" in h.lower() or value == "":
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return resp

    def _headers(self) -> dict[str, str]:
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())} if self.cookies else {}

    def get(self, path: str, **kw) -> httpx.Response:
        return self._remember(self.http.get(path, headers=self._headers(), **kw))

    def post(self, path: str, data: dict | None = None, **kw) -> httpx.Response:
        return self._remember(self.http.post(path, data=data or {}, headers=self._headers(), **kw))

    def csrf(self, path: str) -> str:
        m = CSRF_RE.search(self.get(path).text)
        assert m, f"no csrf token on {path}"
        return m.group(1)

    def login(self, name: str, password: str = PASSWORD) -> httpx.Response:
        token = self.csrf("/login")
        return self.post("/login", {"username": name, "password": password, "csrf": token})

    def close(self) -> None:
        self.http.close()
