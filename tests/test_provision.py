"""`meterveil provision`: consistent registry / broker login / config, firmware-validated, rotation,
batch mode, and the whole pilot path: broker-config -> provision -> build -> meter on the unix port
over TLS with the generated password file and ACL -> frames accepted by the gateway."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from brokerutil import MOSQUITTO, free_port
from roles import split_keys

from meterveil.host.backoffice.anonymize import QUASI_IDENTIFIERS
from meterveil.host.cli.main import main as cli_main
from meterveil.host.common.pubkey import secret_keys_in
from meterveil.host.common.registry import MeterRegistry
from meterveil.host.decryption.secret_key import generate_keypair
from meterveil.host.gateway.meter_keys import KEYS_NAME, KeyedRegistry
from meterveil.tools import mqtt_auth
from meterveil.tools.batch import Progress, provision_batch
from meterveil.tools.broker_config import generate
from meterveil.tools.build import REPO_ROOT, build
from meterveil.tools.fileio import ToolError
from meterveil.tools.provision import ATTRIBUTE_KEYS, MeterSpec, provision_one
from meterveil.tools.workspace import Workspace

MICROPYTHON = str(Path(sys.executable).with_name("micropython"))
MEVEIL = str(Path(sys.executable).with_name("meterveil"))
PROFILE = REPO_ROOT / "tests" / "data" / "profiles" / "stepped.csv"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return generate(tmp_path / "ws", port=free_port(), hostnames=["localhost"], bind="127.0.0.1").workspace


def firmware_check(config: Path, board: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, MICROPYPATH=f".frozen:{REPO_ROOT / 'firmware'}:{REPO_ROOT}")
    args = [MICROPYTHON, str(REPO_ROOT / "firmware" / "main.py"), str(config), "--check"] + (["--board"] if board else [])
    return subprocess.run(args, capture_output=True, text=True, env=env, cwd=config.parent, timeout=60)


def snapshot(ws: Workspace) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in ws.root.rglob("*") if p.is_file()}


def test_provision_writes_one_consistent_identity(ws, capsys):
    assert cli_main(["provision", "m0001", "--feeder", "F7", "--workspace", str(ws.root),
                     "--wifi-ssid", "home", "--wifi-password", "pw", "--m", "12"]) == 0
    cfg_path = ws.meter_config("m0001")
    cfg = json.loads(cfg_path.read_text())
    rec = KeyedRegistry.load(ws.keys_dir, ws.registry).get("m0001")
    assert rec is not None and rec.key.hex() == cfg["master_key"] and len(rec.key) == 32
    assert (rec.feeder, rec.m, cfg["dp"]["m"]) == ("F7", 12, 12)
    # the key is in the gateway's meter-keys.json only; the shared registry holds none
    assert cfg["master_key"] in (ws.keys_dir / KEYS_NAME).read_text()
    assert cfg["master_key"] not in ws.registry.read_text()
    assert MeterRegistry.load(ws.registry).get("m0001") == rec.record
    assert mqtt_auth.check_password(cfg["broker"]["password"], mqtt_auth.read_passwd(ws.passwd)["m0001"])
    assert "user m0001\ntopic write meterveil/v1/m0001/#" in ws.acl.read_text()
    assert cfg["broker"]["url"] == f"mqtts://localhost:{json.loads(ws.broker_info.read_text())['port']}"
    assert (cfg_path.parent / "ca.der").read_bytes() == ws.pki.ca_der.read_bytes()
    for secret in (cfg_path, ws.registry, ws.keys_dir / KEYS_NAME):
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    res = firmware_check(cfg_path, board=True)
    assert res.returncode == 0 and "CONFIG OK m0001" in res.stdout, res.stdout
    out = capsys.readouterr().out
    assert cfg["master_key"] not in out and cfg["broker"]["password"] not in out


def test_duplicates_and_bad_fields_change_nothing(ws, capsys):
    provision_one(ws.root, MeterSpec("m0001", "F1", wifi_ssid="home"))
    before = snapshot(ws)
    assert cli_main(["provision", "m0001", "--feeder", "F1", "--workspace", str(ws.root), "--wifi-ssid", "x"]) == 1
    assert "m0001 already exists in the meter registry" in capsys.readouterr().err
    assert cli_main(["provision", "m0002", "--feeder", "F1", "--workspace", str(ws.root), "--wifi-ssid", "x",
                     "--interval-s", "7"]) == 1
    err = capsys.readouterr().err
    assert "interval_s: must be in [60, 86400]" in err and "--interval-s" in err
    assert cli_main(["provision", "m0002", "--feeder", "F1", "--workspace", str(ws.root)]) == 1
    assert "wifi.ssid: required on a board (set it with --wifi-ssid)" in capsys.readouterr().err
    assert cli_main(["provision", "bad id!", "--feeder", "F1", "--workspace", str(ws.root)]) == 1
    assert "meter id 'bad id!'" in capsys.readouterr().err
    assert cli_main(["provision", "m0002", "--feeder", "F1", "--workspace", str(ws.root), "--wifi-ssid", "x",
                     "--port", "/dev/ttyUSB93"]) == 1
    assert "port /dev/ttyUSB93 does not exist" in capsys.readouterr().err
    assert snapshot(ws) == before


def test_provision_needs_broker_config_first(tmp_path, capsys):
    assert cli_main(["provision", "m0001", "--feeder", "F1", "--workspace", str(tmp_path / "empty")]) == 1
    assert "run `meterveil broker-config --workspace" in capsys.readouterr().err


def test_rotate_key_replaces_secrets_and_records_it(ws):
    first = provision_one(ws.root, MeterSpec("m0001", "F1", wifi_ssid="home", wifi_password="pw", clamp_wh=800))
    old = json.loads(first.config.read_text())
    res = provision_one(ws.root, MeterSpec("m0001", ""), rotate_key=True)
    new = json.loads(res.config.read_text())
    assert new["master_key"] != old["master_key"] and new["broker"]["password"] != old["broker"]["password"]
    assert (new["wifi"], new["feeder"], new["dp"]) == (old["wifi"], old["feeder"], old["dp"])
    rec = KeyedRegistry.load(ws.keys_dir, ws.registry).get("m0001")
    assert rec.key.hex() == new["master_key"] and rec.previous_key.hex() == old["master_key"]
    assert old["master_key"] not in ws.registry.read_text() and new["master_key"] not in ws.registry.read_text()
    hashed = mqtt_auth.read_passwd(ws.passwd)["m0001"]
    assert mqtt_auth.check_password(new["broker"]["password"], hashed)
    assert not mqtt_auth.check_password(old["broker"]["password"], hashed)
    log = [json.loads(ln) for ln in ws.rotation_log.read_text().splitlines()]
    assert len(log) == 1 and log[0]["meter_id"] == "m0001"
    text = ws.rotation_log.read_text()
    assert old["master_key"][:16] not in text and new["master_key"][:16] not in text
    assert stat.S_IMODE(os.stat(ws.rotation_log).st_mode) == 0o600
    with pytest.raises(ToolError, match="m0404 is not provisioned"):
        provision_one(ws.root, MeterSpec("m0404", "F1"), rotate_key=True)


def test_batch_mode_with_progress(ws, tmp_path):
    csv_path = tmp_path / "meters.csv"
    csv_path.write_text("meter_id,feeder,m,wifi_ssid\n" + "".join(f"b{i:03d},F{i % 2},{5 + i},net\n" for i in range(6)))
    bar = io.StringIO()
    done = provision_batch(ws.root, csv_path, MeterSpec("", ""), progress=Progress(6, stream=bar))
    assert [d.meter_id for d in done] == [f"b{i:03d}" for i in range(6)]
    lines = bar.getvalue().splitlines()
    assert len(lines) == 6 and lines[-1].startswith("[" + "#" * 30 + "] 6/6 b005")
    reg = MeterRegistry.load(ws.registry)
    assert reg.ids() == [f"b{i:03d}" for i in range(6)] and reg.get("b003").m == 8
    assert mqtt_auth.acl_meters(ws.acl) == reg.ids()

    before = snapshot(ws)
    bad = tmp_path / "bad.csv"
    bad.write_text("meter_id,feeder\nc1,F1\nc1,F1\nbad id,F1\n")
    with pytest.raises(ToolError) as e:
        provision_batch(ws.root, bad, MeterSpec("", ""))
    assert "line 3: meter id c1 repeats line 2" in str(e.value) and "line 4" in str(e.value)
    again = tmp_path / "again.csv"
    again.write_text("meter_id,feeder,wifi_ssid\nc9,F1,n\nb002,F1,n\n")
    with pytest.raises(ToolError, match="already provisioned: b002"):
        provision_batch(ws.root, again, MeterSpec("", ""))
    cols = tmp_path / "cols.csv"
    cols.write_text("meter_id,feeder,colour\nc1,F1,red\n")
    with pytest.raises(ToolError, match="unknown column.*colour"):
        provision_batch(ws.root, cols, MeterSpec("", ""))
    assert snapshot(ws) == before


HOUSEHOLD = ["--attr", "home_type=Flat", "--attr", "occupants=3", "--attr", "tariff_type=tou",
             "--attr", "region=north"]


def test_provision_records_household_attributes(ws, capsys):
    assert ATTRIBUTE_KEYS == QUASI_IDENTIFIERS  # what provisioning records is what the export needs
    assert cli_main(["provision", "m0001", "--feeder", "F1", "--workspace", str(ws.root), "--wifi-ssid", "x",
                     *HOUSEHOLD]) == 0
    rec = MeterRegistry.load(ws.registry).get("m0001")
    assert rec.attributes == {"volts": 230.0, "rated_amps": 30.0, "home_type": "flat", "occupants": 3,
                              "tariff_type": "tou", "region": "north"}
    before = snapshot(ws)
    for attrs, message in (
        (["colour=red"], "unknown attribute 'colour': allowed home_type, occupants, tariff_type, region"),
        (["home_type=castle"], "home_type='castle': must be one of flat, terraced, semi-detached, detached"),
        (["occupants=three"], "occupants='three': must be a whole number 1-20"),
        (["occupants=0"], "occupants=0: must be 1-20"),
        (["region=mars"], "region='mars': must be one of north, central, south, coast"),
        (["home_type"], "expected KEY=VALUE"),
        (["region=north", "region=south"], "--attr region given twice"),
    ):
        args = [a for kv in attrs for a in ("--attr", kv)]
        assert cli_main(["provision", "m0002", "--feeder", "F1", "--workspace", str(ws.root), "--wifi-ssid", "x",
                         *args]) == 1
        assert message in capsys.readouterr().err
    assert cli_main(["provision", "m0001", "--workspace", str(ws.root), "--rotate-key", "--attr", "occupants=2"]) == 1
    assert "--rotate-key keeps the registered attributes" in capsys.readouterr().err
    assert snapshot(ws) == before


def test_batch_attribute_columns(ws, tmp_path):
    good = tmp_path / "meters.csv"
    good.write_text("meter_id,feeder,wifi_ssid,home_type,occupants,region\n"
                    "a1,F1,n,detached,4,coast\n"
                    "a2,F1,n,flat,,south\n")
    provision_batch(ws.root, good, MeterSpec("", "", attributes={"tariff_type": "ev", "occupants": 1}),
                    progress=Progress(2, stream=io.StringIO()))
    reg = MeterRegistry.load(ws.registry)
    assert {k: reg.get("a1").attributes[k] for k in ATTRIBUTE_KEYS} == \
        {"home_type": "detached", "occupants": 4, "tariff_type": "ev", "region": "coast"}
    assert reg.get("a2").attributes["occupants"] == 1  # empty cell: the --attr default
    before = snapshot(ws)
    bad = tmp_path / "bad.csv"
    bad.write_text("meter_id,feeder,wifi_ssid,home_type,occupants\nb1,F1,n,castle,2\nb2,F1,n,flat,2.5\n")
    with pytest.raises(ToolError) as e:
        provision_batch(ws.root, bad, MeterSpec("", ""))
    assert "line 2: home_type='castle': must be one of" in str(e.value)
    assert "line 3: occupants='2.5': must be a whole number" in str(e.value)
    assert snapshot(ws) == before


def test_provisioned_attributes_reach_the_export(ws, tmp_path, capsys):
    """The pilot path for researchers: batch-provisioned attributes -> store -> export households."""
    from test_billing import fill_store

    rows = "".join(f"p{i:02d},F1,n,{('flat', 'detached')[i % 2]},{1 + i % 3},{('flat', 'tou')[i % 2]},north\n"
                   for i in range(8))
    (tmp_path / "m.csv").write_text("meter_id,feeder,wifi_ssid,home_type,occupants,tariff_type,region\n" + rows)
    provision_batch(ws.root, tmp_path / "m.csv", MeterSpec("", ""), progress=Progress(8, stream=io.StringIO()))
    pub, priv = generate_keypair(768)
    _gw_keys, role_dir = split_keys(ws.root, pub, priv)
    assert role_dir == ws.role_dir and secret_keys_in(ws.keys_dir) == []
    t0 = 1793471400  # 2026-11-01 00:00 Asia/Kolkata
    fill_store(tmp_path / "s.db", pub, [(f"p{i:02d}", "F1", t0 + s * 900, 100 + i, 0)
                                        for i in range(8) for s in range(24)])  # >= min_band_readings
    out = tmp_path / "h.csv"
    assert cli_main(["export", "households", "--db", str(tmp_path / "s.db"), "--role-dir",
                     str(ws.role_dir), "--registry", str(ws.registry), "--k", "2", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "home_type,occupants,tariff_type,region,kwh_2026-11" and len(lines) - 1 == 8
    assert "p00" not in out.read_text()


def _hand_broker_to_mosquitto_user(ws: Workspace) -> None:
    if os.geteuid() != 0:
        return
    import pwd

    pw = pwd.getpwnam("mosquitto")
    for p in [ws.broker_dir.resolve(), *ws.broker_dir.resolve().parents]:
        if str(p) in ("/", "/tmp"):
            break
        os.chmod(p, os.stat(p).st_mode | 0o011)
    for dirpath, _d, files in os.walk(ws.broker_dir):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)


def _stats(db: Path) -> dict:
    res = subprocess.run([MEVEIL, "stats", "--db", str(db)], capture_output=True, text=True, timeout=60)
    return json.loads(res.stdout) if res.returncode == 0 else {}


def test_pilot_path_provisioned_built_meter_is_accepted_by_the_gateway(ws, tmp_path):
    port = json.loads(ws.broker_info.read_text())["port"]
    start = (int(time.time()) - 2 * 86400) // 900 * 900
    provision_one(ws.root, MeterSpec("m0001", "F1", sim_profile=str(PROFILE), sim_speed=3600, sim_start=start))
    provision_one(ws.root, MeterSpec("m0002", "F1", sim_profile=str(PROFILE), sim_speed=3600, sim_start=start))
    split_keys(ws.root, *generate_keypair(1024))  # public key to ws/keys, secret key to ws/decryption
    built = build(tmp_path / "build", sim=True)  # runs on the unix port: keeps the simulator
    _hand_broker_to_mosquitto_user(ws)
    broker = subprocess.Popen([MOSQUITTO, "-c", str(ws.broker_conf)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    db = tmp_path / "store.sqlite"
    gw = None
    try:
        time.sleep(0.3)
        assert broker.poll() is None, (ws.broker_dir / "log" / "mosquitto.log").read_text()
        gw = subprocess.Popen([MEVEIL, "gateway", "--broker", f"mqtts://localhost:{port}",
                               "--tls-ca", str(ws.pki.ca_cert), "--username", "gateway",
                               "--password-file", str(ws.gateway_password), "--keys", str(ws.keys_dir),
                               "--registry", str(ws.registry), "--db", str(db), "--batch-ms", "50"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        gw_log: list[str] = []
        threading.Thread(target=lambda: gw_log.extend(iter(gw.stdout.readline, "")), daemon=True).start()
        deadline = time.monotonic() + 60
        while not any("gateway ready" in ln for ln in gw_log):  # subscribed: no reading can be missed
            assert gw.poll() is None and time.monotonic() < deadline, "".join(gw_log)
            time.sleep(0.05)
        env = dict(os.environ, MICROPYPATH=f".frozen:{built.out / 'lib'}")

        def run_meter(meter_id: str) -> subprocess.CompletedProcess:
            return subprocess.run([MICROPYTHON, str(built.out / "main.py"), str(ws.meter_config(meter_id)),
                                   "--intervals", "2", "--drain-timeout", "30",
                                   "--storage", str(tmp_path / f"state-{meter_id}")],
                                  capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)

        res = run_meter("m0001")
        assert res.returncode == 0, res.stdout + res.stderr
        deadline = time.monotonic() + 30
        stats = {}
        while time.monotonic() < deadline:
            stats = _stats(db)
            if stats.get("accepted", 0) >= 2:
                break
            time.sleep(0.5)
        assert stats.get("accepted") == 2 and stats.get("rejected_total") == 0, (stats, res.stdout)

        # m0002 impersonating m0001 on its topic: the broker drops it (ACL), nothing new is stored.
        cfg2 = json.loads(ws.meter_config("m0002").read_text())
        cfg2["meter_id"] = "m0001"  # seals as m0001 (with m0002's key), publishes to m0001's topic
        forged = ws.meter_dir("m0002") / "forged.json"
        forged.write_text(json.dumps(cfg2))
        res = subprocess.run([MICROPYTHON, str(built.out / "main.py"), str(forged), "--intervals", "1",
                              "--drain-timeout", "5", "--storage", str(tmp_path / "state-forged")],
                             capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
        time.sleep(2.0)
        stats = _stats(db)
        assert stats.get("accepted") == 2 and stats.get("rejected_total") == 0, stats
    finally:
        if gw is not None:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(20)
            except subprocess.TimeoutExpired:
                gw.kill()
        broker.terminate()
        broker.wait(10)


def test_calibrate_on_the_unix_port_finds_the_ct_tolerance(ws, capsys):
    from meterveil.tools.calibrate import calibrate

    provision_one(ws.root, MeterSpec("s1", "F1", sim_profile=str(PROFILE)))
    res = calibrate(ws.root, "s1", 2000.0, sim_gain=1.06, blocks=30)
    assert res.raw_watts == pytest.approx(2120, rel=0.01)  # the simulated CT reads 6% high
    assert res.gain == pytest.approx(1 / 1.06, rel=0.005)
    assert abs(res.residual_pct) < 0.5
    cfg = json.loads(ws.meter_config("s1").read_text())
    assert cfg["calibration"]["gain"] == res.gain
    res2 = firmware_check(ws.meter_config("s1"), board=False)
    assert res2.returncode == 0 and "CONFIG OK s1" in res2.stdout, res2.stdout
    assert stat.S_IMODE(os.stat(ws.meter_config("s1")).st_mode) == 0o600

    before = ws.meter_config("s1").read_bytes()
    for argv, msg in ((["--reference-watts", "20"], "too small to calibrate"),
                      (["--reference-watts", "200000"], "clipped"),
                      (["--reference-watts", "2000", "--sim-gain", "3"], "off by more than 2x"),
                      (["--reference-watts", "-5"], "--reference-watts -5"),
                      (["--reference-watts", "2000", "--port", "/dev/ttyUSB91"], "port /dev/ttyUSB91 does not exist")):
        assert cli_main(["calibrate", "--workspace", str(ws.root), "--meter", "s1", "--blocks", "10", *argv]) == 1
        assert msg in capsys.readouterr().err, argv
    assert ws.meter_config("s1").read_bytes() == before
    assert cli_main(["calibrate", "--workspace", str(ws.root), "--meter", "zz", "--reference-watts", "1"]) == 1
    assert "provision zz first" in capsys.readouterr().err


def test_push_only_errors(ws, capsys):
    provision_one(ws.root, MeterSpec("p1", "F1", wifi_ssid="n"))
    assert cli_main(["provision", "p1", "--workspace", str(ws.root), "--push"]) == 1
    assert "--push needs METER_ID and --port" in capsys.readouterr().err
    assert cli_main(["provision", "p2", "--workspace", str(ws.root), "--push", "--port", "/dev/ttyUSB0"]) == 1
    assert "provision p2 first" in capsys.readouterr().err
    assert cli_main(["provision", "p1", "--workspace", str(ws.root), "--push", "--port", "/dev/ttyUSB95"]) == 1
    assert "port /dev/ttyUSB95 does not exist" in capsys.readouterr().err
