"""`lineside users add|passwd|remove|list`: the station's users file, on the device."""

from __future__ import annotations

import getpass
import sys
from pathlib import Path

from .errors import LinesideError
from .users import UsersFile

CONFIG_SUFFIXES = (".yaml", ".yml", ".toml")


def users_path(given: str) -> Path:
    """A users file, or the station config naming it (security.users)."""
    path = Path(given)
    if path.suffix.lower() in CONFIG_SUFFIXES:
        from .station import load_station

        cfg = load_station(path, resolve_secrets=False)
        if cfg.security is None:
            raise LinesideError(f"{path} has no `security:` section: add `security: {{users: users.json}}` "
                                "(docs/security.md)")
        return cfg.security.users
    return path


def read_password(prompt: str = "password") -> str:
    """From a prompt (twice) on a terminal; else the first line of stdin. Never from argv."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"{prompt}: ")
        if getpass.getpass(f"{prompt} again: ") != first:
            raise LinesideError("the two passwords differ: try again")
        return first
    line = sys.stdin.readline()
    if not line:
        raise LinesideError("no password on stdin: pipe it in (printf '%s\\n' \"$PW\" | lineside users ...) "
                            "or run on a terminal")
    return line.rstrip("\r\n")


def main(args) -> int:
    users = UsersFile(users_path(args.config))
    if args.action == "list":
        for name, entry in sorted(users.users().items()):
            kind = "machine token" if "token_sha256" in entry else "password"
            print(f"{name}\t{entry.get('role')}\t{kind}")
        return 0
    if args.action == "remove":
        users.remove(args.name)
        print(f"removed {args.name}")
        return 0
    existing = users.users().get(args.name) if users.path.exists() else None
    if args.action == "add":
        if existing is not None:
            raise LinesideError(f"{args.name} exists already: `lineside users passwd` changes the password, "
                                "`remove` then `add` changes the role")
        machine, role = args.token, args.role
    else:  # passwd
        if existing is None:
            raise LinesideError(f"{users.path} has no user {args.name!r}: `lineside users add` first")
        machine, role = "token_sha256" in existing, None
    if machine:
        token = users.set_token(args.name, role)
        print(f"{args.name}'s token (shown once; give it to the machine as `Authorization: Bearer TOKEN`, or as "
              f"its OPC UA password):\n{token}")
    else:
        users.set_password(args.name, role, read_password(f"password for {args.name}"))
        print(f"{'added' if args.action == 'add' else 'changed the password of'} {args.name}")
    return 0
