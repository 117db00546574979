"""Shared fixtures: real mosquitto brokers on free loopback ports."""

from __future__ import annotations

import pytest
from brokerutil import Mosquitto


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
