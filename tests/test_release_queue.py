"""The release queue between the web tier and the decryption role, and the `decryption serve` worker's
answers for requests it cannot or must not run."""

from __future__ import annotations

import subprocess
import sys

import pytest
from webutil import T0, build_workspace

from meterveil.host.common.release_queue import QueueError, ReleaseQueue
from meterveil.host.decryption.secret_key import generate_keypair


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("queue"), generate_keypair(512), copies=False)


def test_queue_claims_once_and_requeues_a_dead_workers_requests(tmp_path):
    q = ReleaseQueue(tmp_path / "releases.db")
    assert (tmp_path / "releases.db").stat().st_mode & 0o777 == 0o600
    with pytest.raises(QueueError):
        q.submit("decrypt-everything", {}, "mallory")
    rid = q.submit("bill", {"period": "2026-11", "tariff": "tou3"}, "clerk")
    other = ReleaseQueue(tmp_path / "releases.db")
    assert q.claim().id == rid
    assert other.claim() is None  # a second worker does not get the same request
    assert q.requeue_stale() == 1 and other.claim().id == rid
    with pytest.raises(QueueError):
        q.finish(rid, "running")
    q.finish(rid, "failed", "because")
    assert q.get(rid).final and q.get(rid).reason == "because"
    q.close()
    other.close()


@pytest.mark.parametrize("kind,params,status,reason", [
    ("bill", {"period": "2026-11", "tariff": "/etc/passwd"}, "failed", "not one this decryption role serves"),
    ("bill", {"period": "2026-13", "tariff": "tou3"}, "failed", ""),
    ("feeder-load", {"feeder": "F1", "t_from": T0, "t_to": T0 + 40 * 86400}, "failed", "at most one month"),
    ("feeder-load", {"feeder": "NOPE", "t_from": T0, "t_to": T0 + 86400}, "failed", "not in the registry"),
])
def test_worker_answers_bad_requests_with_a_reason(ws, kind, params, status, reason):
    w = ws.worker()
    rid = w.queue.submit(kind, params, "someone")
    w.run_once()
    got = w.queue.get(rid)
    w.queue.close()
    assert got.status == status and reason in got.reason and got.reason


def test_serve_once_from_the_command_line(ws):
    q = ReleaseQueue(ws.queue)
    rid = q.submit("bill", {"period": "2026-11", "tariff": "tou3"}, "clerk")
    res = subprocess.run([sys.executable, "-m", "meterveil.host.cli", "decryption", "serve", "--db", str(ws.store),
                          "--role-dir", str(ws.role_dir), "--registry", str(ws.registry), "--queue", str(ws.queue),
                          "--once"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert q.get(rid).status in ("done", "partial")
    assert {b["meter_id"] for b in q.bills_of_request(rid)} >= {"m0000", "m0001"}
    q.close()


def _cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "meterveil.host.cli", *args], capture_output=True, text=True,
                          timeout=60, input=stdin)


def test_users_add_generates_a_password_and_refuses_bad_accounts(tmp_path):
    from meterveil.host.web.accounts import Accounts

    db = tmp_path / "store.db"
    res = _cli("users", "add", "alice", "--role", "billing", "--db", str(db))
    assert res.returncode == 0, res.stderr
    pw = res.stdout.split("password (shown once): ")[1].strip()
    acc = Accounts(tmp_path / "web.db")
    assert acc.authenticate("alice", pw, "test") is not None
    assert pw not in (tmp_path / "web.db").read_bytes().decode("latin-1")  # only the argon2 hash is stored
    acc.close()
    assert (tmp_path / "web.db").stat().st_mode & 0o777 == 0o600
    for args, msg in ((("alice", "--role", "billing"), "exists"), (("bob", "--role", "household"), "needs --meter"),
                      (("bob", "--role", "operator", "--meter", "m1"), "take none"),
                      (("<b>", "--role", "operator"), "user name")):
        res = _cli("users", "add", *args, "--db", str(db))
        assert res.returncode == 1 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = _cli("users", "add", "carol", "--role", "auditor", "--db", str(db), "--password-stdin", stdin="short\n")
    assert res.returncode == 1 and "at least 12" in res.stderr
