"""Key files, meter keys and the meter registry: permissions from creation, no silent overwrite,
round trips, and the split between the gateway's keys and the key-free registry."""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import pytest
from phe import paillier

from meterveil.host.audit import signing
from meterveil.host.cli import main as cli
from meterveil.host.common import pubkey
from meterveil.host.common.pubkey import KeyFileError, load_public, secret_keys_in, write_public
from meterveil.host.common.registry import REGISTRY_NAME, MeterRecord, MeterRegistry
from meterveil.host.decryption import secret_key
from meterveil.host.decryption.secret_key import SECRET_NAME, generate_keypair, load_private, write_secret
from meterveil.host.gateway.meter_keys import (
    KEYS_NAME,
    MASTER_KEY_BYTES,
    PREVIOUS_KEY_GRACE_S,
    KeyedRegistry,
    MeterKeys,
)


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


def test_keypair_files_are_0600_even_with_open_umask_and_round_trip(tmp_path):
    old = os.umask(0)
    try:
        pub, priv = generate_keypair(1024)
        pub_path = write_public(tmp_path / "gw", pub)
        sec_path = write_secret(tmp_path / "role", priv)
    finally:
        os.umask(old)
    assert _mode(pub_path) == 0o600 and _mode(sec_path) == 0o600
    assert _mode(tmp_path / "role") == 0o700
    assert json.loads(pub_path.read_text())["kind"] == "paillier-public"
    assert "p" not in json.loads(pub_path.read_text())
    pub2 = load_public(tmp_path / "gw")
    priv2 = load_private(tmp_path / "role")
    assert pub2 == pub and priv2.p == priv.p and priv2.q == priv.q
    assert priv2.public_key == pub
    assert priv2.decrypt(pub2.encrypt(4242)) == 4242


def test_write_key_files_refuse_overwrite_without_force(tmp_path):
    pub, priv = generate_keypair(512)
    write_public(tmp_path / "gw", pub)
    write_secret(tmp_path / "role", priv)
    pub2, priv2 = generate_keypair(512)
    with pytest.raises(FileExistsError):
        write_public(tmp_path / "gw", pub2)
    with pytest.raises(FileExistsError):
        write_secret(tmp_path / "role", priv2)
    assert load_public(tmp_path / "gw") == pub and load_private(tmp_path / "role").p == priv.p
    write_public(tmp_path / "gw", pub2, force=True)
    write_secret(tmp_path / "role", priv2, force=True)
    assert load_public(tmp_path / "gw") == pub2 and load_private(tmp_path / "role").p == priv2.p
    assert _mode(tmp_path / "role" / SECRET_NAME) == 0o600
    for d in ("gw", "role"):
        assert not [p for p in (tmp_path / d).iterdir() if p.name.endswith(".tmp")]


def test_load_private_rejects_inconsistent_file(tmp_path):
    pub, priv = generate_keypair(512)
    write_public(tmp_path, pub)
    write_secret(tmp_path, priv)
    data = json.loads((tmp_path / SECRET_NAME).read_text())
    data["p"] = f"{priv.p + 2:x}"
    (tmp_path / SECRET_NAME).write_text(json.dumps(data))
    with pytest.raises(KeyFileError):
        load_private(tmp_path)
    with pytest.raises(KeyFileError):
        load_private(tmp_path / pubkey.PUBLIC_NAME)


def test_public_key_file_loads_into_phe_and_secret_file_is_not_a_public_key(tmp_path):
    pub, priv = generate_keypair(512)
    write_public(tmp_path / "gw", pub)
    write_secret(tmp_path / "role", priv)
    assert isinstance(load_public(tmp_path / "gw" / pubkey.PUBLIC_NAME), paillier.PaillierPublicKey)
    # the public-key reader (which every role imports) cannot read the secret file
    with pytest.raises(KeyFileError):
        load_public(tmp_path / "role" / SECRET_NAME)


def test_secret_keys_in_finds_a_secret_key_by_content_whatever_its_name(tmp_path):
    pub, priv = generate_keypair(512)
    d = tmp_path / "gw"
    write_public(d, pub)
    (d / "junk.bin").write_bytes(b"\xff\x00not json")
    assert secret_keys_in(d) == [] and secret_keys_in(tmp_path / "missing") == []
    write_secret(d, priv)
    (d / SECRET_NAME).rename(d / "backup.txt")
    assert secret_keys_in(d) == [d / "backup.txt"]


def test_cli_keys_init_refuses_then_forces(tmp_path, capsys):
    gw, role = tmp_path / "keys", tmp_path / "decryption"
    argv = ["keys", "init", "--dir", str(gw), "--secret-dir", str(role), "--bits", "1024"]
    assert cli.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bits"] == 1024 and out["role_dir"] == str(role)
    n1 = load_public(gw).n
    assert load_private(role).public_key.n == n1
    # the gateway's folder holds the public key only; the role folder the secret and the audit keys
    assert sorted(p.name for p in gw.iterdir()) == [pubkey.PUBLIC_NAME]
    assert {SECRET_NAME, signing.SIGNING_NAME, signing.VERIFY_NAME} <= {p.name for p in role.iterdir()}
    assert secret_keys_in(gw) == [] and secret_keys_in(role) == [role / SECRET_NAME]
    assert _mode(role) == 0o700 and _mode(role / SECRET_NAME) == 0o600
    assert _mode(role / signing.SIGNING_NAME) == 0o600 and _mode(gw / pubkey.PUBLIC_NAME) == 0o600
    assert cli.main(argv) == 1
    assert "--force" in capsys.readouterr().err
    assert load_public(gw).n == n1
    assert cli.main([*argv, "--force"]) == 0
    assert load_public(gw).n != n1 and load_private(role).public_key.n == load_public(gw).n
    priv = load_private(role)
    out = capsys.readouterr().out
    assert f"{priv.p:x}" not in out and f"{priv.q:x}" not in out


@pytest.mark.parametrize("layout", ["same", "secret_inside", "gateway_inside"])
def test_cli_keys_init_refuses_overlapping_folders(tmp_path, capsys, layout):
    gw, role = {"same": (tmp_path / "k", tmp_path / "k"),
                "secret_inside": (tmp_path / "k", tmp_path / "k" / "decryption"),
                "gateway_inside": (tmp_path / "r" / "keys", tmp_path / "r")}[layout]
    assert cli.main(["keys", "init", "--dir", str(gw), "--secret-dir", str(role), "--bits", "512"]) == 1
    err = capsys.readouterr().err
    assert "overlap" in err and len(err.strip().splitlines()) == 1
    assert not (gw / pubkey.PUBLIC_NAME).exists() and not (role / SECRET_NAME).exists()


def test_registry_round_trip_holds_no_key(tmp_path):
    path = tmp_path / "registry" / REGISTRY_NAME
    reg = MeterRegistry.load(path)
    assert len(reg) == 0
    rec = MeterRecord("m0001", "F1", 1000, 1000, 10, attributes={"rated_amps": 60}, household="h1")
    reg.put(rec)
    assert _mode(path) == 0o600
    with pytest.raises(KeyError):
        reg.put(rec)
    with pytest.raises(ValueError):
        reg.put(MeterRecord("bad id!", "F1", 1000, 1000, 10))
    # DP parameters the frame header cannot carry (u16 epsilon/m) or the firmware refuses
    for bad in ({"epsilon_milli": 70000}, {"clamp_wh": 2**33}, {"m": 70000}, {"m": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            reg.put(MeterRecord(**{"meter_id": "m0003", "feeder": "F1", "epsilon_milli": 1000,
                                   "clamp_wh": 1000, "m": 10, **bad}))
    data = json.loads(path.read_text())
    assert data["version"] == 2 and list(data["meters"]) == ["m0001"]
    assert set(data["meters"]["m0001"]) == {"feeder", "epsilon_milli", "clamp_wh", "m", "household", "attributes"}
    again = MeterRegistry.load(path.parent)
    assert again.get("m0001") == rec and again.get("nope") is None and "m0001" in again
    assert again.get("m0001").household_id == "h1"
    assert not again.reload_if_changed()
    reg.put(MeterRecord("m0002", "F2", 500, 200, 5))
    assert again.reload_if_changed() and again.feeders() == {"F1": ["m0001"], "F2": ["m0002"]}
    assert again.get("m0002").household_id == "m0002"


@pytest.mark.parametrize("field", ["key", "previous_key"])
def test_registry_refuses_an_entry_holding_a_key(tmp_path, field):
    path = tmp_path / REGISTRY_NAME
    path.write_text(json.dumps({"version": 2, "meters": {"m1": {
        "feeder": "F1", "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10, field: "ab" * 32}}}))
    with pytest.raises(KeyFileError, match="split-registry") as exc:
        MeterRegistry.load(path)
    assert "ab" * 32 not in str(exc.value)


def test_registry_refuses_a_version_1_file(tmp_path):
    path = tmp_path / REGISTRY_NAME
    path.write_text(json.dumps({"version": 1, "meters": {"m1": {
        "feeder": "F1", "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10, "key": "ab" * 32}}}))
    with pytest.raises(KeyFileError, match="split-registry"):
        MeterRegistry.load(path)


def test_keyed_registry_add_get_persist_apart(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    kdir, rpath = tmp_path / "keys", tmp_path / "registry" / REGISTRY_NAME
    reg = KeyedRegistry.load(kdir, rpath)
    rec = reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, attributes={"rated_amps": 60})
    assert len(rec.key) == MASTER_KEY_BYTES and rec.previous_key is None
    assert rec.feeder == "F1" and rec.attributes == {"rated_amps": 60} and rec.household_id == "m0001"
    assert _mode(kdir / KEYS_NAME) == 0o600 and _mode(rpath) == 0o600
    with pytest.raises(KeyError):
        reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10)
    with pytest.raises(ValueError):
        reg.add("bad id!", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10)
    with pytest.raises(ValueError):
        reg.add("m0002", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10, key=b"short")
    for bad in ({"epsilon_milli": 70000}, {"clamp_wh": 2**33}, {"m": 70000}, {"m": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            reg.add("m0003", feeder="F1", **{"epsilon_milli": 1000, "clamp_wh": 1000, "m": 10, **bad})
    # a refused add leaves nothing behind in either file
    again = KeyedRegistry.load(kdir, rpath)
    assert again.ids() == ["m0001"] and len(MeterKeys.load(kdir / KEYS_NAME)) == 1
    got = again.get("m0001")
    assert got.key == rec.key and got.feeder == "F1" and got.attributes == {"rated_amps": 60}
    assert got.household_id == rec.household_id == "m0001"
    assert again.get("nope") is None and "m0001" in again
    # the key lives in meter-keys.json only; the registry has none
    assert rec.key.hex() in (kdir / KEYS_NAME).read_text()
    assert rec.key.hex() not in rpath.read_text()
    assert MeterRegistry.load(rpath).get("m0001").feeder == "F1"
    assert rec.key.hex() not in repr(rec) and rec.key.hex() not in caplog.text


def test_keyed_registry_knows_a_meter_only_with_both_key_and_metadata(tmp_path):
    kdir, rpath = tmp_path / "keys", tmp_path / REGISTRY_NAME
    reg = KeyedRegistry.load(kdir, rpath)
    reg.add("m1", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10)
    MeterRegistry.load(rpath).put(MeterRecord("m2", "F1", 1000, 1000, 10))  # metadata, no key
    again = KeyedRegistry.load(kdir, rpath)
    assert "m2" in again.registry and "m2" not in again and again.get("m2") is None
    assert again.ids() == ["m1"] and len(again) == 1 and [m.meter_id for m in again] == ["m1"]


def test_rotation_keeps_previous_key_within_grace_and_retires_it_after(tmp_path):
    kdir, rpath = tmp_path / "keys", tmp_path / REGISTRY_NAME
    # rotate() saves with the real clock, so the times used here are around now
    t0 = int(time.time())
    reg = KeyedRegistry.load(kdir, rpath)
    rec = reg.add("m0001", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10)
    watcher = KeyedRegistry.load(kdir, rpath)
    assert not watcher.reload_if_changed()
    rotated = reg.rotate("m0001", now=t0)
    assert rotated.previous_key == rec.key and rotated.key != rec.key
    assert watcher.reload_if_changed() and watcher.get("m0001", now=t0).key == rotated.key
    assert not watcher.reload_if_changed()
    # within the grace period the old key still opens frames; after it, it is not offered
    assert watcher.get("m0001", now=t0 + PREVIOUS_KEY_GRACE_S).previous_key == rec.key
    assert watcher.get("m0001", now=t0 + PREVIOUS_KEY_GRACE_S + 1).previous_key is None
    # a save within the grace keeps it on disk ...
    reg.keys.save(now=t0 + 10)
    assert rec.key.hex() in (kdir / KEYS_NAME).read_text()
    assert MeterKeys.load(kdir / KEYS_NAME).get("m0001").previous_key == rec.key
    # ... the first save after it retires it
    reg.keys.save(now=t0 + PREVIOUS_KEY_GRACE_S + 1)
    assert rec.key.hex() not in (kdir / KEYS_NAME).read_text()
    mk = MeterKeys.load(kdir / KEYS_NAME).get("m0001")
    assert mk.key == rotated.key and mk.previous_key is None and mk.rotated_at is None
    # an explicit new key is used as given; unknown meters cannot be rotated
    new = bytes(range(32))
    assert reg.rotate("m0001", new, now=t0 + 100).key == new
    with pytest.raises(KeyError):
        reg.rotate("nope", now=t0)
    with pytest.raises(ValueError):
        reg.rotate("m0001", b"short", now=t0)


def test_meter_keys_file_rejects_bad_entries(tmp_path):
    p = tmp_path / KEYS_NAME
    p.write_text(json.dumps({"kind": "meter-keys", "version": 1, "meters": {"m1": {"key": "ab" * 31}}}))
    with pytest.raises(KeyFileError):
        MeterKeys.load(p)
    p.write_text(json.dumps({"kind": "paillier-secret", "version": 1, "meters": {}}))
    with pytest.raises(KeyFileError):
        MeterKeys.load(p)


def test_cli_add_meter(tmp_path, capsys):
    d, rpath = tmp_path / "keys", tmp_path / "registry" / REGISTRY_NAME
    kf = tmp_path / "k.hex"
    kf.write_text("ab" * 32)
    assert cli.main(["keys", "add-meter", "--dir", str(d), "--registry", str(rpath), "--meter-id", "m7",
                     "--feeder", "F2", "--key-file", str(kf), "--household", "h9"]) == 0
    assert "ab" * 32 not in capsys.readouterr().out
    assert KeyedRegistry.load(d, rpath).get("m7").key == bytes.fromhex("ab" * 32)
    assert MeterRegistry.load(rpath).get("m7").household_id == "h9"
    assert "ab" * 32 not in rpath.read_text()
    assert cli.main(["keys", "add-meter", "--dir", str(d), "--registry", str(rpath), "--meter-id", "m7",
                     "--feeder", "F2"]) == 1
    assert "already registered" in capsys.readouterr().err


def test_cli_split_registry_converts_a_version_1_file(tmp_path, capsys):
    old = tmp_path / "old" / REGISTRY_NAME
    old.parent.mkdir()
    k1, k2, prev = "11" * 32, "22" * 32, "33" * 32
    old.write_text(json.dumps({"version": 1, "meters": {
        "m1": {"feeder": "F1", "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10, "key": k1,
               "attributes": {"rated_amps": 60}, "household": "h1"},
        "m2": {"feeder": "F2", "epsilon_milli": 500, "clamp_wh": 200, "m": 5, "key": k2, "previous_key": prev}}}))
    kdir, rpath = tmp_path / "keys", tmp_path / "registry" / REGISTRY_NAME
    kdir.mkdir()  # see test_cli_split_registry_into_a_new_keys_folder
    assert cli.main(["keys", "split-registry", "--old", str(old), "--dir", str(kdir),
                     "--registry", str(rpath)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out)["meters"] == 2
    assert k1 not in out and k2 not in out and prev not in out
    reg = MeterRegistry.load(rpath)
    assert reg.ids() == ["m1", "m2"] and json.loads(rpath.read_text())["version"] == 2
    assert reg.get("m1") == MeterRecord("m1", "F1", 1000, 1000, 10, {"rated_amps": 60}, "h1")
    assert reg.get("m2").feeder == "F2" and reg.get("m2").m == 5
    text = rpath.read_text()
    assert k1 not in text and k2 not in text and prev not in text
    keyed = KeyedRegistry.load(kdir, rpath)
    assert keyed.get("m1").key == bytes.fromhex(k1) and keyed.get("m2").key == bytes.fromhex(k2)
    assert keyed.get("m2").previous_key == bytes.fromhex(prev)
    assert _mode(kdir / KEYS_NAME) == 0o600 and _mode(rpath) == 0o600
    # a file that is not a version 1 registry is refused in one line
    assert cli.main(["keys", "split-registry", "--old", str(rpath), "--dir", str(kdir),
                     "--registry", str(rpath)]) == 1
    assert "version 1" in capsys.readouterr().err


def test_secret_key_module_is_the_only_writer_of_secret_keys():
    assert not hasattr(pubkey, "write_secret") and not hasattr(pubkey, "load_private")
    assert secret_key.SECRET_NAME != pubkey.PUBLIC_NAME


def test_cli_split_registry_into_a_new_keys_folder(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"version": 1, "meters": {"m1": {
        "feeder": "F1", "epsilon_milli": 1000, "clamp_wh": 1000, "m": 10, "key": "11" * 32}}}))
    kdir, rpath = tmp_path / "keys", tmp_path / "registry" / REGISTRY_NAME
    assert cli.main(["keys", "split-registry", "--old", str(old), "--dir", str(kdir), "--registry", str(rpath)]) == 0
    assert kdir.is_dir() and (kdir / KEYS_NAME).is_file()


def test_rotate_honours_its_now_when_saving(tmp_path):
    reg = KeyedRegistry.load(tmp_path / "keys", tmp_path / REGISTRY_NAME)
    rec = reg.add("m1", feeder="F1", epsilon_milli=1000, clamp_wh=1000, m=10)
    t0 = 1_700_000_000
    assert reg.rotate("m1", now=t0).previous_key == rec.key
