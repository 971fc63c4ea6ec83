"""Helpers for the security tests: a users file with people and machines, certificates, and
`lineside audit` run as the command it is. The `accounts` fixture (conftest.py) sets up a
secured line's users and recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tiny_bundle import make_tiny_bundle

from edge_infer.keys_cmd import tls_pair
from edge_infer.users import UsersFile

PASSWORDS = {"olga": "operator-pw-1", "eve": "engineer-pw-1", "ada": "admin-pw-123"}
ROLES = {"olga": "operator", "eve": "engineer", "ada": "admin"}
REPO = Path(__file__).resolve().parents[2]


def make_users(path: Path, machine: str | None = "plc-1") -> tuple[Path, str | None]:
    """olga (operator), eve (engineer), ada (admin) and, if asked, a machine token (operator)."""
    users = UsersFile(path)
    for name, password in PASSWORDS.items():
        users.set_password(name, ROLES[name], password)
    token = users.set_token(machine, "operator") if machine else None
    return path, token


@dataclass
class Accounts:
    """What a secured line needs: its users file (`make_users`), the machine's token, and two
    recipes (part-a, part-b) so that a test can see who may switch between them."""

    users: Path
    token: str
    recipes: list[dict]

    def security(self, **extra) -> dict:
        """The station config's `security` section."""
        return {"users": str(self.users), **extra}


def make_accounts(folder: Path) -> Accounts:
    users, token = make_users(folder / "users.json")
    recipes = [{"id": 1, "name": "part-a", "bundle": str(make_tiny_bundle(folder / "a"))},
               {"id": 2, "name": "part-b", "bundle": str(make_tiny_bundle(folder / "b"))}]
    return Accounts(users, token, recipes)


def certificate(folder: Path, name: str, uri: str | None = None) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = tls_pair(folder, name, hosts=["localhost", "127.0.0.1"], uri=uri)
    return cert, key


def audit(target: Path, *args: str) -> list[dict]:
    """`lineside audit TARGET --json ...` in a subprocess: the events it prints."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "lineside", "audit", str(target), "--json", *args],
                         capture_output=True, text=True, check=False, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
