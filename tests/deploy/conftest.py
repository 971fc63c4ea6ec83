"""Fixtures for the deploy tests: signing keys, signed bundle tars, provisioned device roots,
the service double, and a real OpenSSH server on a loopback port."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from net_helpers import free_port

from edge_infer.signing import generate_keypair
from tests.deploy.deploy_helpers import make_signed_tar, provision, stop_service


@pytest.fixture(scope="session")
def keys(tmp_path_factory):
    """(private, public) signing key files, made once per session."""
    return generate_keypair(tmp_path_factory.mktemp("keys"), "test")


@pytest.fixture(scope="session")
def tars(tmp_path_factory, keys):
    tmp = tmp_path_factory.mktemp("tars")
    return {v: make_signed_tar(tmp, keys[0], v) for v in ("v1", "v2")}


@pytest.fixture
def device_root(tmp_path, keys):
    """A provisioned device root; its service double (if started) is stopped afterwards."""
    root = provision(tmp_path / "device", keys[1])
    yield root
    stop_service(root)


# --- a real OpenSSH server on 127.0.0.1 ---------------------------------------------------------

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def start_sshd(d: Path):
    """Start sshd on a loopback port with throw-away keys in folder d; return (process, url/options/identity)."""
    if not Path(SSHD).is_file():
        pytest.skip("no OpenSSH server here (/usr/sbin/sshd): apt-get install -y openssh-server")
    if not shutil.which("ssh"):
        pytest.skip("no OpenSSH client (ssh): apt-get install -y openssh-client")
    if os.getuid() == 0 and not Path("/run/sshd").is_dir():
        try:  # sshd running as root insists on its privilege-separation directory
            os.makedirs("/run/sshd", mode=0o755)
        except OSError as exc:
            pytest.skip(f"sshd needs /run/sshd and it cannot be made: {exc}")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True)
    shutil.copy(d / "client_key.pub", d / "authorized_keys")
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "UsePAM no\nStrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        "PermitRootLogin prohibit-password\nMaxStartups 50\nMaxSessions 50\nLogLevel ERROR\n")
    host_pub = (d / "host_key.pub").read_text().split()
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub[0]} {host_pub[1]}\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=open(d / "sshd.log", "wb"))
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    options = [f"UserKnownHostsFile={d / 'known_hosts'}", "StrictHostKeyChecking=yes"]
    probe = ["ssh", "-p", str(port), "-i", str(d / "client_key"), "-o", "BatchMode=yes",
             *[x for o in options for x in ("-o", o)], f"{user}@127.0.0.1", "true"]
    for _ in range(50):
        if proc.poll() is not None:
            pytest.skip(f"sshd would not start: {(d / 'sshd.log').read_text()[-500:]}")
        if subprocess.run(probe, capture_output=True).returncode == 0:
            break
        time.sleep(0.1)
    else:
        proc.terminate()
        pytest.skip(f"sshd on port {port} accepted no login: {(d / 'sshd.log').read_text()[-500:]}")
    return proc, {"url": f"ssh://{user}@127.0.0.1:{port}", "ssh_options": options, "identity": str(d / "client_key")}


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real OpenSSH server on 127.0.0.1; yield its url, ssh options and identity."""
    proc, info = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield info
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def sshd_fleet(tmp_path_factory):
    """Three real OpenSSH servers on loopback ports: three devices for a fleet roll-out."""
    started = []
    try:
        for i in range(3):
            started.append(start_sshd(tmp_path_factory.mktemp(f"sshd{i}")))
        yield [info for _, info in started]
    finally:
        for proc, _ in started:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def postgres():
    """A real PostgreSQL on a free loopback port (initdb in a temporary folder), stopped afterwards."""
    import psycopg

    from tests.deploy.postgres_server import Postgres

    pg = Postgres()
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(pg.url, connect_timeout=5).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                pg.stop()
                raise
            time.sleep(0.2)
    yield pg
    pg.stop()
