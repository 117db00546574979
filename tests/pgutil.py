"""Throwaway PostgreSQL clusters for tests and benchmarks: initdb + pg_ctl on a free loopback port.

Why not pytest-postgresql: it runs the server as the calling user, and PostgreSQL refuses to run as
root (CI runs as root). Here, as root, initdb/pg_ctl run as the `postgres` system user that Debian's
package creates, in a temp folder that user owns; as anyone else they run as that user.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def pg_bindir() -> Path:
    """Folder of initdb/pg_ctl: pg_config's BINDIR, else the newest /usr/lib/postgresql/N/bin."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise RuntimeError("PostgreSQL server binaries not found: `make test` installs them (apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgCluster:
    """One postgres server in its own temp folder; `.url(db)`, `.create_db(name)`, `.stop()`."""

    def __init__(self, *, fsync: bool = False, settings: dict[str, str] | None = None):
        # fsync off by default: tests kill gateways, never the server or the machine, so durability
        # across power loss is not what they check (the benchmarks start theirs with fsync on)
        self.fsync = fsync
        self.settings = settings or {}
        self.port = _free_port()
        self.bindir = pg_bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="meterveil-pg-"))
        self.data = self.dir / "data"
        self._as_root = os.geteuid() == 0
        if self._as_root:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.started = False

    def _run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=self.dir, **kw)

    def start(self) -> PgCluster:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")
        opts = {"listen_addresses": "127.0.0.1", "port": str(self.port), "unix_socket_directories": str(self.dir),
                "fsync": "on" if self.fsync else "off", "max_connections": "100", "shared_buffers": "64MB",
                **self.settings}
        with open(self.data / "postgresql.conf", "a") as f:
            for k, v in opts.items():
                f.write(f"{k} = '{v}'\n")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"), "-w", "-t", "60", "start")
        self.started = True
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_db(self, name: str) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def reset_db(self, name: str) -> str:
        """The database `name` emptied (created on first use; connections left by an earlier test are
        ended): cheaper than a new database per test. Its URL."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            if not c.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                c.execute(f'CREATE DATABASE "{name}"')
            c.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                      "AND pid <> pg_backend_pid()", (name,))
        with psycopg.connect(self.url(name), autocommit=True) as c:
            c.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        return self.url(name)

    def log(self) -> str:
        p = self.dir / "server.log"
        return p.read_text() if p.exists() else ""

    def stop(self) -> None:
        if self.started:
            try:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except subprocess.CalledProcessError:
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
