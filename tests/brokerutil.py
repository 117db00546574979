"""Start real mosquitto brokers for tests on free loopback ports (see FIELD-NOTES: runs as root -> drops to user mosquitto)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def wait_until(pred, timeout: float = 20.0, poll: float = 0.05) -> bool:
    """Poll `pred` until it is true or `timeout` seconds passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(poll)
    return pred()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_readable_by_broker(path: Path) -> None:
    """mosquitto started as root drops privileges to user `mosquitto`: it must read our files."""
    if os.geteuid() != 0:
        return
    try:
        import pwd

        pw = pwd.getpwnam("mosquitto")
    except KeyError:
        return
    for p in [path, *path.parents]:
        if str(p) in ("/", "/tmp"):
            break
        if p.is_dir():  # let the broker traverse pytest's private tmp folders
            os.chmod(p, os.stat(p).st_mode | 0o011)
    os.chown(path, pw.pw_uid, pw.pw_gid)


class Mosquitto:
    """One mosquitto process with its own config dir; restartable with persistence kept."""

    def __init__(self, workdir: Path, *, passwords: dict[str, str] | None = None,
                 acl: str | None = None, tls: dict[str, Path] | None = None,
                 persistence: bool = True, port: int | None = None):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o777)
        make_readable_by_broker(self.dir)  # persistence file is written by user mosquitto
        self.port = port or free_port()
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "log_type error",
                 "log_type warning", "log_type notice", "max_queued_messages 100000",
                 "max_inflight_messages 100"]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/", "autosave_interval 1"]
        if passwords is not None:
            pwfile = self.dir / "passwd"
            pwfile.write_text("")
            for user, pw in passwords.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pwfile), user, pw], check=True,
                               capture_output=True)
            os.chmod(pwfile, 0o600)
            make_readable_by_broker(pwfile)
            lines += ["allow_anonymous false", f"password_file {pwfile}"]
        else:
            lines += ["allow_anonymous true"]
        if acl is not None:
            aclfile = self.dir / "acl"
            aclfile.write_text(acl)
            os.chmod(aclfile, 0o600)
            make_readable_by_broker(aclfile)
            lines += [f"acl_file {aclfile}"]
        if tls:
            for p in tls.values():
                make_readable_by_broker(Path(p))
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(lines) + "\n")
        self.log = self.dir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Mosquitto:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=logf, stderr=logf)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): mosquitto writes its persistence file."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def hand_to_broker_user(broker_dir: Path) -> None:
    """What the printed chown note tells a root operator to do: `chown -R mosquitto:` the broker folder."""
    for dirpath, _dirs, files in os.walk(Path(broker_dir).resolve()):
        make_readable_by_broker(Path(dirpath))
        for f in files:
            make_readable_by_broker(Path(dirpath) / f)


class GeneratedBroker:
    """mosquitto started on a config file as written by `meterveil broker-config`."""

    def __init__(self, conf: Path, port: int):
        self.port = port
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        """Graceful stop (SIGTERM): mosquitto writes its persistence file."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def tls_client(port: int, ca: Path, user: str, password: str, on_message=None, *, client_id: str | None = None,
               protocol=mqtt.MQTTv311, clean: bool = True, on_disconnect=None) -> tuple[mqtt.Client, object]:
    """A connected paho client over TLS (loop started); (client, CONNACK reason code)."""
    cid = client_id if client_id is not None else f"t-{user}-{time.monotonic_ns()}"
    if protocol == mqtt.MQTTv5:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol)
    else:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=protocol, clean_session=clean)
    c.tls_set(ca_certs=str(ca))
    c.username_pw_set(user, password)
    result: dict[str, object] = {}
    ready = threading.Event()

    def on_connect(cl, ud, flags, rc, props):
        result["rc"] = rc
        result["flags"] = flags
        ready.set()

    c.on_connect = on_connect
    if on_message:
        c.on_message = on_message
    if on_disconnect:
        c.on_disconnect = on_disconnect
    if protocol == mqtt.MQTTv5:
        c.connect("localhost", port, keepalive=10, clean_start=clean)
    else:
        c.connect("localhost", port, keepalive=10)
    c.loop_start()
    assert ready.wait(5), "no CONNACK"
    return c, result["rc"]


def subscribe_and_wait(client: mqtt.Client, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
    """Subscribe and return once the broker's SUBACK arrived (the subscription is then in effect)."""
    done = threading.Event()
    client.on_subscribe = lambda *a: done.set()
    client.subscribe(topic, qos=qos)
    assert done.wait(timeout), f"no SUBACK for {topic}"
