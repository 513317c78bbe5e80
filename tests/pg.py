"""A throwaway PostgreSQL server for tests, from Debian's packaged binaries (``apt-get install -y postgresql``).

``PostgresServer`` creates a cluster in a fresh temporary folder, listens on 127.0.0.1 on a free port,
creates a password-protected user and a database, and removes everything on ``stop()``. PostgreSQL
refuses to run as root, so as root the cluster belongs to the ``postgres`` system user the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "autoprune"
PASSWORD = "s3cret-pw-4-tests"
DATABASE = "studies"


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl, or None."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "pg_ctl").is_file()]
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0, default=None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """Start with :meth:`start`, connect with :attr:`url`, always :meth:`stop` (a context manager does both)."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.port = _free_port()
        self.dir: Path | None = None
        self.owner = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        cmd = [str(a) for a in args]
        if self.owner:
            cmd = ["runuser", "-u", self.owner, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, cwd="/", check=False)

    def _check(self, proc: subprocess.CompletedProcess, what: str) -> None:
        if proc.returncode != 0:
            log = (self.dir / "server.log").read_text() if self.dir and (self.dir / "server.log").is_file() else ""
            raise RuntimeError(f"PostgreSQL {what} failed ({proc.returncode}): {proc.stderr.strip()}\n{log[-2000:]}")

    def start(self) -> PostgresServer:
        self.dir = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
        data = self.dir / "data"
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.owner:
            entry = pwd.getpwnam(self.owner)
            for path in (self.dir, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        # Password (scram) over TCP, trust only on the cluster's own unix socket in its private folder.
        self._check(
            self._run(
                self.bin / "initdb",
                "-D",
                data,
                "-U",
                USER,
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "--no-sync",
            ),
            "initdb",
        )
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._check(
            self._run(
                self.bin / "pg_ctl", "-D", data, "-o", opts, "-l", self.dir / "server.log", "-w", "-t", "30", "start"
            ),
            "start",
        )
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        self._check(
            self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, DATABASE, env=env),
            "createdb",
        )
        return self

    def stop(self) -> None:
        if self.dir is None:
            return
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run(self.bin / "pg_ctl", "-D", self.dir / "data", "-m", "immediate", "-w", "-t", "30", "stop")
        for _ in range(50):  # the server's files vanish only once it has exited
            if not (self.dir / "data" / "postmaster.pid").exists():
                break
            time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
