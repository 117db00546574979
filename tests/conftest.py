"""Shared fixtures: real mosquitto brokers on free loopback ports."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from brokerutil import GeneratedBroker, Mosquitto, free_port, hand_to_broker_user


@pytest.fixture
def mosquitto(tmp_path):
    """An anonymous mosquitto with persistence, started; `.url`, `.port`, `.restart()`, `.stop()`, `.start()`."""
    with Mosquitto(tmp_path / "broker") as broker:
        yield broker


@pytest.fixture
def mosquitto_factory(tmp_path):
    """Build brokers with passwords={user: pw}, acl=text, tls={'ca','cert','key'}; stopped at teardown."""
    made: list[Mosquitto] = []

    def make(**kwargs) -> Mosquitto:
        broker = Mosquitto(tmp_path / f"broker{len(made)}", **kwargs)
        made.append(broker)
        return broker

    yield make
    for b in made:
        b.__exit__(None, None, None)


@dataclass
class Pilot:
    """A workspace from `meterveil broker-config` with two meter logins, its broker running."""

    ws: object  # meterveil.tools.workspace.Workspace
    port: int
    pw: dict[str, str]
    broker: GeneratedBroker

    @property
    def ca(self) -> Path:
        return self.ws.pki.ca_cert

    @property
    def gateway_password(self) -> str:
        return self.ws.gateway_password.read_text().strip()

    def restart(self) -> None:
        self.broker.stop()
        hand_to_broker_user(self.ws.broker_dir)  # another pytest run may have reset its tmp root to 0700
        self.broker = GeneratedBroker(self.ws.broker_conf, self.port)


@pytest.fixture
def pilot():
    from meterveil.tools import mqtt_auth
    from meterveil.tools.broker_config import generate

    # Not under pytest's basetemp: a concurrent pytest run resets /tmp/pytest-of-<user> to 0700, and
    # the broker (user mosquitto) could then not write its persistence file on shutdown.
    root = Path(tempfile.mkdtemp(prefix="meterveil-pilot-"))
    os.chmod(root, 0o711)
    port = free_port()
    ws = generate(root / "ws", port=port, hostnames=["gw.example"], bind="127.0.0.1").workspace
    pw = {m: mqtt_auth.new_password() for m in ("m0001", "m0002")}
    for m, p in pw.items():
        mqtt_auth.set_password(ws.passwd, m, p)
    mqtt_auth.write_acl(ws.acl, "gateway", list(pw))
    hand_to_broker_user(ws.broker_dir)
    p = Pilot(ws, port, pw, GeneratedBroker(ws.broker_conf, port))
    yield p
    p.broker.stop()
    shutil.rmtree(root, ignore_errors=True)
@pytest.fixture(scope="session")
def pg_cluster():
    """One throwaway PostgreSQL cluster per test session (tests/pgutil.py); each test makes its own database."""
    from pgutil import PgCluster

    with PgCluster() as pg:
        yield pg


@pytest.fixture
def pg_url(pg_cluster):
    """URL of an empty database in the session's cluster (emptied for each test)."""
    return pg_cluster.reset_db("meterveil_test")
