"""tools/pki.py against a real TLS mosquitto: paho and the MicroPython unix port (DER CA) verify it."""

from __future__ import annotations

import os
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509

from meterveil.tools.fileio import ToolError
from meterveil.tools.pki import create_pki, issue_client_cert

MICROPYTHON = str(Path(sys.executable).with_name("micropython"))


def _connect(port: int, ca: Path, host: str = "127.0.0.1") -> tuple[bool, str]:
    """TLS-connect a paho client that verifies against `ca`; return (connected, error text)."""
    done = threading.Event()
    result: dict[str, object] = {}
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    c.tls_set(ca_certs=str(ca))

    def on_connect(cl, ud, flags, rc, props):
        result["rc"] = rc
        done.set()

    c.on_connect = on_connect
    try:
        c.connect(host, port, keepalive=10)
    except (ssl.SSLError, OSError) as e:
        return False, repr(e)
    c.loop_start()
    done.wait(5)
    c.loop_stop()
    c.disconnect()
    return (result.get("rc") == 0 and not getattr(result.get("rc"), "is_failure", False)), str(result)


def test_key_files_are_private_and_ca_is_der(tmp_path):
    paths = create_pki(tmp_path / "pki", server_names=["broker.example", "10.0.0.5"], clients=["gw"])
    for key in (paths.ca_key, paths.server_key, paths.client_key("gw")):
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600, key
    der = x509.load_der_x509_certificate(paths.ca_der.read_bytes())
    pem = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    assert der == pem
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(san.get_values_for_type(x509.DNSName))
    ips = {str(i) for i in san.get_values_for_type(x509.IPAddress)}
    assert {"localhost", "broker.example"} <= dns and {"127.0.0.1", "10.0.0.5"} <= ips
    server.verify_directly_issued_by(pem)


def test_rerun_keeps_the_ca_and_refuses_to_replace_client_keys(tmp_path):
    first = create_pki(tmp_path / "pki", clients=["gw"])
    ca_before = first.ca_cert.read_bytes()
    second = create_pki(tmp_path / "pki", server_names=["new.name"])
    assert second.ca_cert.read_bytes() == ca_before
    with pytest.raises(ToolError, match="already exists"):
        issue_client_cert(second, "gw")
    with pytest.raises(ToolError, match="invalid client name"):
        issue_client_cert(second, "bad name")


def test_tls_broker_accepts_the_right_ca_and_refuses_another(tmp_path, mosquitto_factory):
    paths = create_pki(tmp_path / "pki")
    other = create_pki(tmp_path / "other")
    broker = mosquitto_factory(tls=paths.tls()).start()
    ok, info = _connect(broker.port, paths.ca_cert)
    assert ok, info
    ok, info = _connect(broker.port, paths.ca_cert, host="localhost")
    assert ok, info
    ok, info = _connect(broker.port, other.ca_cert)
    assert not ok
    assert "CERTIFICATE_VERIFY_FAILED" in info or "certificate verify failed" in info


MPY_TLS_CLIENT = r"""
import socket, ssl, sys
port = int(sys.argv[1]); der = open(sys.argv[2], 'rb').read()
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.load_verify_locations(None, der)
s = socket.socket()
s.connect(socket.getaddrinfo('127.0.0.1', port)[0][-1])
try:
    s = ctx.wrap_socket(s, server_hostname='localhost')
except Exception as e:
    print('TLSFAIL', repr(e)); sys.exit(3)
# minimal MQTT 3.1.1 CONNECT, client id 'mpy'
s.write(b'\x10\x0f\x00\x04MQTT\x04\x02\x00\x3c\x00\x03mpy')
print('CONNACK', s.read(4))
"""


def test_micropython_verifies_the_der_ca(tmp_path, mosquitto_factory):
    paths = create_pki(tmp_path / "pki")
    other = create_pki(tmp_path / "other")
    broker = mosquitto_factory(tls=paths.tls()).start()
    script = tmp_path / "tlsclient.py"
    script.write_text(MPY_TLS_CLIENT)
    good = subprocess.run([MICROPYTHON, str(script), str(broker.port), str(paths.ca_der)],
                          capture_output=True, text=True, timeout=30)
    assert "CONNACK b' \\x02\\x00\\x00'" in good.stdout, good.stdout + good.stderr
    bad = subprocess.run([MICROPYTHON, str(script), str(broker.port), str(other.ca_der)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 3 and "TLSFAIL" in bad.stdout, bad.stdout + bad.stderr
