"""A real PostgreSQL (Debian's binaries) in a temporary folder on a free loopback port.

(A test cuts the link to it like a network outage with `net_helpers.TcpProxy`.)"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from net_helpers import free_port


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


class Postgres:
    """initdb + pg_ctl start as a non-root user (PostgreSQL refuses to run as root)."""

    def __init__(self):
        initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not (initdb and self.pg_ctl):
            pytest.skip("no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): apt-get install -y postgresql")
        self.dir = Path(tempfile.mkdtemp(prefix="lineside-pg-"))
        self.user = None
        if os.getuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    self.user = pwd.getpwnam(name)
                    break
                except KeyError:
                    continue
            if self.user is None:
                pytest.skip("running as root and there is no postgres or nobody user to run PostgreSQL as")
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.port = free_port()
        data = self.dir / "data"
        self._run([initdb, "-D", str(data), "-U", "lineside", "--auth=trust", "-E", "UTF8", "--no-sync"])
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
                       "fsync = off\nshared_buffers = 32MB\nmax_connections = 20\n")
        self._run([self.pg_ctl, "-D", str(data), "-l", str(self.dir / "log"), "-w", "-t", "60", "start"])
        self.url = f"postgresql://lineside@127.0.0.1:{self.port}/postgres"

    def _run(self, argv):
        if self.user is not None:
            argv = ["runuser", "-u", self.user.pw_name, "--", *argv]
        r = subprocess.run(argv, capture_output=True, text=True, cwd=self.dir, timeout=120, check=False)
        if r.returncode != 0:
            log = (self.dir / "log").read_text()[-800:] if (self.dir / "log").is_file() else ""
            pytest.skip(f"PostgreSQL would not start ({' '.join(argv[-3:])}): {r.stderr[-800:]} {log}")

    def stop(self):
        subprocess.run((["runuser", "-u", self.user.pw_name, "--"] if self.user else [])
                       + [self.pg_ctl, "-D", str(self.dir / "data"), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
