"""Boot-time config validation, outbox across a reset, MQTT publishing and sensing, on the target."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = json.loads((REPO / "firmware" / "config.example.json").read_text())


def _config_check(target, cfg: dict) -> list[str]:
    res = target.run(
        "import json\nfrom meter import config\n"
        f"cfg = config.with_defaults(json.loads({json.dumps(json.dumps(cfg))}))\n"
        "for field, msg in config.validate(cfg, board=False):\n    print('BAD', field)\n"
        "print('CHECKED')\n")
    assert "CHECKED" in res.output, res.output
    return res.lines("BAD")


def test_example_config_validates_on_target(target):
    assert _config_check(target, EXAMPLE) == []


@pytest.mark.parametrize("path,value,field", [
    (("dp", "epsilon_milli"), 0, "dp.epsilon_milli"),
    (("master_key",), "abcd", "master_key"),
    (("meter_id",), "bad/id", "meter_id"),
    (("broker", "url"), "http://x", "broker.url"),
    (("interval_s",), 7, "interval_s"),
])
def test_bad_config_field_is_named_on_target(target, path, value, field):
    cfg = json.loads(json.dumps(EXAMPLE))
    node = cfg
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert field in _config_check(target, cfg)


def test_outbox_survives_a_reset(target):
    box = target.scratch + "/outbox-hil"
    first = target.run(
        "import os\nfrom meter import outbox\n"
        f"b = outbox.Outbox({box!r}, segment_bytes=512, max_bytes=8192)\n"
        "for i in range(5):\n    b.append(bytes([i]) * (40 + i))\n"
        "print('DEPTH', b.depth)\n")
    assert first.returncode == 0, first.output
    assert first.lines("DEPTH") == ["5"]
    target.reset()
    second = target.run(
        "from meter import outbox\n"
        f"b = outbox.Outbox({box!r}, segment_bytes=512, max_bytes=8192)\n"
        "print('DEPTH', b.depth)\n"
        "pos = b.first()\n"
        "while pos is not None:\n"
        "    rec = b.read(pos)\n"
        "    if rec is None:\n        break\n"
        "    data, at, nxt = rec\n"
        "    print('REC', len(data), data[0])\n"
        "    b.ack(at, nxt)\n"
        "    pos = nxt\n"
        "print('LEFT', b.depth)\n")
    assert second.returncode == 0, second.output
    assert second.lines("DEPTH") == ["5"]
    assert second.lines("REC") == [f"{40 + i} {i}" for i in range(5)]
    assert second.lines("LEFT") == ["0"]


# Connects the way the meter does: on a board Wi-Fi and NTP first (the certificate dates need the
# clock), then TLS with the pilot CA and the meter's own login; the unix port connects directly.
# A board reads its own /config.json and /ca.der (its secrets never pass through mpremote's argv).
PUBLISH = """import asyncio, binascii, json, time
from meter import mqtt
from protocol import frame
if sys.platform in ('linux', 'darwin'):
    cfg = json.loads({cfg!r})
    ca_path = {ca!r}
else:
    cfg = json.load(open('/config.json'))
    cfg.setdefault('wifi', {{}}).update({wifi!r})
    ca_path = cfg['broker'].get('ca_der_path')
    ca_path = ca_path and ('/' + ca_path.lstrip('/'))
ca = open(ca_path, 'rb').read() if ca_path else None
br = cfg['broker']
host, port, tls = mqtt.parse_url(br['url'])
ctx = mqtt.tls_context(ca) if tls else None
if sys.platform in ('linux', 'darwin'):
    def conn():
        if ctx:
            return asyncio.open_connection(host, port, ssl=ctx, server_hostname=host)
        return asyncio.open_connection(host, port)
else:
    from meter.hal_board import BoardHAL
    hal = BoardHAL(cfg, {scratch!r} + '/data', watchdog=False)
    t0 = time.ticks_ms()
    while not hal.clock_synced() and time.ticks_diff(time.ticks_ms(), t0) < 120000:
        try:
            hal._wifi()
        except OSError:
            pass
        time.sleep_ms(500)
    print('CLOCK', hal.clock_synced())
    def conn():
        return hal.open_connection(host, port, ctx)
mid = cfg['meter_id']
k = frame.derive_keys(binascii.unhexlify(cfg['master_key']))
h = {{'kind': 1, 'meter_id': mid, 'counter': 9, 'interval_start': 1763856000,
     'interval_len': 900, 'epsilon_milli': 1000, 'clamp_wh': 1000, 'm': 10}}
f = {{'billing_wh': 77, 'analytics_wh': 70, 'flags': 0, 'samples': 10, 'clipped': 0, 'missing_s': 0}}
async def go():
    r, w = await conn()
    s = mqtt.Session(r, w)
    await s.connect(br.get('client_id') or mid, 30, br['username'], br['password'])
    await s.publish(frame.topic(mid, 'reading'), frame.seal(k, h, f), 17)
    t, _, body = await s.read_packet()
    print('ACK', t == mqtt.PUBACK, body[0] * 256 + body[1])
    await s.disconnect()
    s.close()
asyncio.run(go())
"""


def test_sealed_frame_published_over_tls_with_the_meters_login(target, request):
    from meterveil.protocol import frame

    if not target.network:
        pytest.skip(f"{target.name}: no network stack in this firmware (MicroPython's qemu port has no "
                    "socket/lwIP), so MQTT over TCP cannot run; the unix and serial targets cover it")
    pb = request.getfixturevalue("pilot_broker")
    got: list[bytes] = []
    sub = None
    if pb.subscriber:
        user, password, ca_pem = pb.subscriber
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        sub.username_pw_set(user, password)
        sub.tls_set(ca_certs=ca_pem)
        sub.on_message = lambda c, u, m: got.append(m.payload)
        sub.connect(pb.host, pb.port)
        sub.subscribe(frame.topic(pb.meter_id, "#"), qos=1)
        sub.loop_start()
        time.sleep(0.5)
    if target.name == "unix":
        code = PUBLISH.format(cfg=json.dumps(pb.cfg), ca=str(pb.ca_der) if pb.ca_der else None,
                              wifi={}, scratch=target.scratch)
    else:
        code = PUBLISH.format(cfg="", ca=None, wifi=pb.wifi_override, scratch=target.scratch)
    res = target.run(code, timeout=300)
    assert res.returncode == 0, res.output
    assert res.lines("ACK") == ["True 17"]
    if sub is None:
        return
    for _ in range(100):
        if got:
            break
        time.sleep(0.05)
    sub.loop_stop()
    assert len(got) == 1
    key = frame.derive_keys(bytes.fromhex(pb.cfg["master_key"]))
    msg = frame.open_frame(key, got[0], topic_meter=pb.meter_id)
    assert msg["fields"]["billing_wh"] == 77


def test_sensing_reads_a_known_load(target, request, tmp_path):
    watts = request.config.getoption("--reference-watts")
    tol = request.config.getoption("--tolerance-pct")
    cal = EXAMPLE["calibration"]
    if target.simulated:  # the profile file is written on the target's own filesystem
        profile = target.scratch + "/reference.csv"
        source = (f"import os\ntry:\n    os.mkdir({target.scratch!r})\nexcept OSError:\n    pass\n"
                  f"with open({profile!r}, 'w') as f:\n    f.write('seconds,watts\\n0,{watts}\\n')\n"
                  f"from meter import ctsim\nsim = ctsim.SimADC({profile!r}, 50, seed=3)\n"
                  "def block(buf, n, t):\n    sim.read_block(buf, t, n, 2000)\n    return 2000\n")
    else:  # the board's own ADC, its /config.json calibration, a documented resistive load
        source = ("from meter import hal_board\nimport json\n"
                  f"hal = hal_board.BoardHAL(json.load(open('/config.json')), {target.scratch + '/data'!r}, "
                  "watchdog=False)\ncal = hal.cal\n"
                  "def block(buf, n, t):\n    return hal.read_block(buf, n)[1]\n")
    res = target.run(
        "import array\nfrom meter import sensing\n"
        f"cal = {json.dumps(cal)}\n" + source +
        "c = cal if isinstance(cal, sensing.Calibration) else sensing.Calibration(cal)\nbuf = array.array('H', bytes(2 * 400))\n"
        "acc = sensing.EnergyAccumulator()\nt = 0\n"
        "for i in range(50):\n"
        "    fs = block(buf, 400, t)\n"
        "    ms = 400 * 1000 // fs\n"
        "    acc.add(sensing.block_power_mw(buf, 400, c), ms)\n"
        "    t += ms\n"
        "print('MEAN_MW', acc.peek_mwh() * 3600000 // t)\n", timeout=300)
    assert res.returncode == 0, res.output
    mean_w = int(res.lines("MEAN_MW")[0]) / 1000
    assert abs(mean_w - watts) <= watts * tol / 100, f"read {mean_w:.1f} W for a {watts} W load"


def test_typed_firmware_errors_raise_on_target(target):
    """Error classes must construct on MicroPython (no ValueError.__init__ there)."""
    res = target.run(
        "from meter import privacy, sensing\n"
        "for f in (lambda: privacy.noise_share(0, 10, 5), lambda: sensing.Calibration({'ct_turns': -1})):\n"
        "    try:\n        f()\n    except ValueError as e:\n        print('ERR', e.reason, e.field)\n")
    assert res.returncode == 0, res.output
    assert res.lines("ERR") == ["bad_dp_params epsilon_milli", "bad_calibration ct_turns"]
