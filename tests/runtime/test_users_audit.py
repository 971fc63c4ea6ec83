"""`lineside users` and `lineside audit` as commands: the users file, its hashes and modes, and
the audit log's filters."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_infer.errors import LinesideError
from edge_infer.journal import Journal
from edge_infer.users import Sessions, UsersFile, check_password

REPO = Path(__file__).resolve().parents[2]


def lineside(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lineside", *args], input=stdin, capture_output=True, text=True, check=False,
                          env=env, timeout=120)


def test_users_add_list_passwd_remove_with_passwords_from_stdin_only(tmp_path):
    users = tmp_path / "dev" / "users.json"
    config = tmp_path / "station.yaml"
    config.write_text(f"station: s1\nbundle: b\nsecurity: {{users: {users}}}\n")
    added = lineside("users", "add", str(config), "olga", "--role", "operator", stdin="correct horse\n")
    assert added.returncode == 0, added.stderr
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    text = users.read_text()
    assert "correct horse" not in text and '"kdf": "scrypt"' in text
    entry = json.loads(text)["users"]["olga"]
    assert entry["role"] == "operator" and check_password(entry["password"], "correct horse")
    assert not check_password(entry["password"], "correct horsE")
    # no way to give a password on the command line (it would sit in shell history and `ps`)
    assert lineside("users", "add", str(users), "eve", "--role", "engineer", "--password", "x").returncode == 2
    assert lineside("users", "add", str(users), "short", "--role", "operator", stdin="abc\n").returncode != 0
    machine = lineside("users", "add", str(users), "plc-1", "--role", "operator", "--token")
    token = machine.stdout.strip().splitlines()[-1]
    assert machine.returncode == 0 and token.startswith("lst_") and token not in users.read_text()
    assert UsersFile(users).by_token(token).name == "plc-1"
    listed = lineside("users", "list", str(users)).stdout
    assert "olga\toperator\tpassword" in listed and "plc-1\toperator\tmachine token" in listed
    sessions = Sessions(UsersFile(users), os.urandom(32), 3600)
    cookie = sessions.issue(UsersFile(users).authenticate("olga", "correct horse"))
    assert sessions.check(cookie).name == "olga"
    assert lineside("users", "passwd", str(users), "olga", stdin="battery staple\n").returncode == 0
    assert UsersFile(users).authenticate("olga", "battery staple") is not None
    assert sessions.check(cookie) is None  # a new password ends the old sessions
    assert lineside("users", "remove", str(users), "plc-1").returncode == 0
    assert UsersFile(users).by_token(token) is None


def test_sessions_expire_and_a_users_file_readable_by_others_is_refused(tmp_path):
    users = UsersFile(tmp_path / "users.json")
    users.set_password("olga", "operator", "correct horse")
    sessions = Sessions(users, os.urandom(32), 60)
    cookie = sessions.issue(users.principal("olga"), now=time.time() - 120)
    assert sessions.check(cookie) is None
    os.chmod(users.path, 0o644)
    with pytest.raises(LinesideError, match="chmod 600"):
        UsersFile(users.path).users()


def test_audit_filters_by_time_kind_and_who(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    journal.event("s1", "recipe", "eve@page", to=2)
    journal.event("s1", "page_trigger", "olga@page", inspection=1)
    journal.event("s1", "alarm_ack", "olga@opcua")
    journal.event("s2", "recipe", "eve@page", to=3)
    journal.close()
    config = tmp_path / "s1.yaml"
    config.write_text(f"station: s1\nbundle: b\njournal: {{path: {path}}}\n")

    def events(*args):
        out = lineside("audit", *args, "--json")
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    assert [e["kind"] for e in events(str(path))] == ["recipe", "page_trigger", "alarm_ack", "recipe"]
    assert [e["station"] for e in events(str(config))] == ["s1"] * 3  # a station config: its station only
    assert [e["who"] for e in events(str(config), "--who", "olga")] == ["olga@page", "olga@opcua"]
    assert [e["to"] for e in events(str(path), "--kind", "recipe")] == [2, 3]
    assert events(str(path), "--since", "1h") and not events(str(path), "--since", "2999-01-01T00:00")
    text = lineside("audit", str(config)).stdout
    assert "eve@page" in text and "recipe" in text
    bad = lineside("audit", str(path), "--since", "yesterday")
    assert bad.returncode != 0 and "--since" in bad.stderr
