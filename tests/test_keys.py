"""Key files and the meter registry: permissions from creation, no silent overwrite, round trips."""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest
from phe import paillier

from meterveil.host.cli import main as cli
from meterveil.host.common import keys


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_keypair_files_are_0600_even_with_open_umask_and_round_trip(tmp_path):
    old = os.umask(0)
    try:
        pub, priv = keys.generate_keypair(1024)
        pub_path, sec_path = keys.write_keypair(tmp_path / "k", pub, priv)
    finally:
        os.umask(old)
    assert _mode(pub_path) == 0o600 and _mode(sec_path) == 0o600
    assert json.loads(pub_path.read_text())["kind"] == "paillier-public"
    assert "p" not in json.loads(pub_path.read_text())
    pub2 = keys.load_public(tmp_path / "k")
    priv2 = keys.load_private(tmp_path / "k")
    assert pub2 == pub and priv2.p == priv.p and priv2.q == priv.q
    assert priv2.decrypt(pub2.encrypt(4242)) == 4242


def test_write_keypair_refuses_overwrite_without_force(tmp_path):
    pub, priv = keys.generate_keypair(512)
    keys.write_keypair(tmp_path, pub, priv)
    pub2, priv2 = keys.generate_keypair(512)
    with pytest.raises(FileExistsError):
        keys.write_keypair(tmp_path, pub2, priv2)
    assert keys.load_public(tmp_path) == pub
    keys.write_keypair(tmp_path, pub2, priv2, force=True)
    assert keys.load_public(tmp_path) == pub2
    assert _mode(tmp_path / keys.SECRET_NAME) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_load_private_rejects_inconsistent_file(tmp_path):
    pub, priv = keys.generate_keypair(512)
    keys.write_keypair(tmp_path, pub, priv)
    data = json.loads((tmp_path / keys.SECRET_NAME).read_text())
    data["p"] = f"{priv.p + 2:x}"
    (tmp_path / keys.SECRET_NAME).write_text(json.dumps(data))
    with pytest.raises(keys.KeyFileError):
        keys.load_private(tmp_path)
    with pytest.raises(keys.KeyFileError):
        keys.load_private(tmp_path / keys.PUBLIC_NAME)


def test_cli_keys_init_refuses_then_forces(tmp_path, capsys):
    d = tmp_path / "keys"
    assert cli.main(["keys", "init", "--dir", str(d), "--bits", "1024"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bits"] == 1024
    n1 = keys.load_public(d).n
    assert cli.main(["keys", "init", "--dir", str(d), "--bits", "1024"]) == 1
    assert keys.load_public(d).n == n1
    assert cli.main(["keys", "init", "--dir", str(d), "--bits", "1024", "--force"]) == 0
    assert keys.load_public(d).n != n1
    assert _mode(d / keys.REGISTRY_NAME) == 0o600
    assert len(keys.MeterRegistry.load(d)) == 0


def test_registry_add_get_rotate_persist(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    reg = keys.MeterRegistry.load(tmp_path)
    rec = reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, attributes={"rated_amps": 60})
    assert len(rec.key) == 32 and _mode(tmp_path / keys.REGISTRY_NAME) == 0o600
    with pytest.raises(KeyError):
        reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10)
    with pytest.raises(ValueError):
        reg.add("bad id!", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10)
    with pytest.raises(ValueError):
        reg.add("m0002", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=b"short")
    # DP parameters the frame header cannot carry (u16 epsilon/m) or the firmware refuses
    for bad in ({"epsilon_milli": 70000}, {"clamp_wh": 2**33}, {"m": 70000}, {"m": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            reg.add("m0003", feeder="F1", **{"epsilon_milli": 1000, "clamp_wh": 1000, "m": 10, **bad})
    again = keys.MeterRegistry.load(tmp_path / keys.REGISTRY_NAME)
    assert again.get("m0001") == rec and again.get("nope") is None and "m0001" in again
    rotated = reg.rotate("m0001")
    assert rotated.previous_key == rec.key and rotated.key != rec.key
    assert again.reload_if_changed() and again.get("m0001").key == rotated.key
    assert not again.reload_if_changed()
    assert rec.key.hex() not in repr(rec) and rec.key.hex() not in caplog.text


def test_cli_add_meter(tmp_path, capsys):
    d = tmp_path / "keys"
    kf = tmp_path / "k.hex"
    kf.write_text("ab" * 32)
    assert cli.main(["keys", "add-meter", "--dir", str(d), "--meter-id", "m7", "--feeder", "F2",
                     "--key-file", str(kf)]) == 0
    assert "ab" * 32 not in capsys.readouterr().out
    assert keys.MeterRegistry.load(d).get("m7").key == bytes.fromhex("ab" * 32)
    assert cli.main(["keys", "add-meter", "--dir", str(d), "--meter-id", "m7", "--feeder", "F2"]) == 1


def test_public_key_file_loads_into_phe(tmp_path):
    pub, priv = keys.generate_keypair(512)
    keys.write_keypair(tmp_path, pub, priv)
    assert isinstance(keys.load_public(tmp_path / keys.SECRET_NAME), paillier.PaillierPublicKey)
