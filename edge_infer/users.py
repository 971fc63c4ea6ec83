"""People and machines that may change a station, with roles: the users file and its checks.

The users file lives on the device (``security.users`` in the station config), never in a
bundle, mode 0600. It is JSON: each name has a role and either a password hash (scrypt from
``cryptography``, with its own salt and cost) or, for a machine, the sha256 of a random token
(high entropy, so a fast hash is enough; the token itself is shown once, when it is made).

Roles nest: an engineer may do what an operator may, an admin what an engineer may.
  operator  review, acknowledge, trigger
  engineer  + recipe switch, thresholds, reload
  admin     + users and keys

Sessions are signed cookies (HMAC-SHA256 with a server secret kept beside the users file,
made on first use): ``name|expiry|generation|mac``. The generation is a digest of the user's
stored hash, so a new password or a removed user ends every session at once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import LinesideError

ROLES = ("operator", "engineer", "admin")
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
TOKEN_PREFIX = "lst_"
# scrypt cost: N=2**15, r=8, p=1 (32 MiB), the interactive-login setting of RFC 7914 §2; kept
# per hash so it can be raised later. One check took 0.77 s on a shared 2-core EPYC at load ~10
# (not measured on a Jetson): logins are rare, and the per-address limit keeps guessing slow.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_PASSWORD = 8


def role_at_least(role: str | None, needed: str) -> bool:
    return role in ROLES and ROLES.index(role) >= ROLES.index(needed)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, n: int = SCRYPT_N) -> dict:
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    salt = os.urandom(16)
    digest = Scrypt(salt=salt, length=32, n=n, r=SCRYPT_R, p=SCRYPT_P).derive(password.encode())
    return {"kdf": "scrypt", "n": n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": _b64(salt), "hash": _b64(digest)}


def check_password(stored: dict, password: str) -> bool:
    """Constant-time: Scrypt.verify compares with the library's constant-time comparison."""
    from cryptography.exceptions import InvalidKey
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    try:
        kdf = Scrypt(salt=base64.b64decode(stored["salt"]), length=32, n=int(stored["n"]), r=int(stored["r"]),
                     p=int(stored["p"]))
        kdf.verify(password.encode("utf-8", "surrogatepass"), base64.b64decode(stored["hash"]))
        return True
    except (InvalidKey, KeyError, ValueError, TypeError):
        return False


# A hash to check against when the name is unknown, so a login takes as long either way
# and does not tell which names exist.
_DUMMY: dict | None = None


def _dummy() -> dict:
    global _DUMMY
    if _DUMMY is None:
        _DUMMY = hash_password(secrets.token_urlsafe(16))
    return _DUMMY


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who is asking: a person (by password) or a machine (by token), and their role."""

    name: str
    role: str
    kind: str  # "user" | "token"

    def may(self, needed: str) -> bool:
        return role_at_least(self.role, needed)


class UsersFile:
    """The users file, re-read when it changes on disk (so `lineside users` takes effect at once)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._users: dict = {}

    # ---- reading -------------------------------------------------------------------
    def users(self) -> dict:
        with self._lock:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                self._stamp, self._users = None, {}
                return {}
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
            if stamp != self._stamp:
                self._users = self._read(st)
                self._stamp = stamp
            return self._users

    def _read(self, st) -> dict:
        if st.st_mode & 0o077:
            raise LinesideError(f"users file {self.path} is readable by others (mode {st.st_mode & 0o777:o}): "
                                f"chmod 600 {self.path}")
        try:
            data = json.loads(self.path.read_text())
            users = data["users"]
            if not isinstance(users, dict):
                raise TypeError
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise LinesideError(f"users file {self.path} cannot be read ({exc!r}): rewrite it with "
                                "`lineside users add`") from None
        return users

    def authenticate(self, name: str, password: str) -> Principal | None:
        entry = self.users().get(name) if isinstance(name, str) else None
        if not isinstance(entry, dict) or "password" not in entry:
            check_password(_dummy(), str(password))  # same work for unknown names
            return None
        if not check_password(entry["password"], str(password)):
            return None
        return Principal(name, entry["role"], "user")

    def by_token(self, token: str) -> Principal | None:
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_digest(token)
        found = None
        for name, entry in self.users().items():  # compare with every one: no early exit to time
            stored = entry.get("token_sha256") if isinstance(entry, dict) else None
            if isinstance(stored, str) and hmac.compare_digest(stored, digest):
                found = Principal(name, entry["role"], "token")
        return found

    def principal(self, name: str) -> Principal | None:
        entry = self.users().get(name)
        if not isinstance(entry, dict) or entry.get("role") not in ROLES:
            return None
        return Principal(name, entry["role"], "token" if "token_sha256" in entry else "user")

    def generation(self, name: str) -> str | None:
        """A digest of what the user logs in with: changes when the password does."""
        entry = self.users().get(name)
        if not isinstance(entry, dict):
            return None
        secret = json.dumps(entry.get("password") or entry.get("token_sha256"), sort_keys=True)
        return hashlib.sha256(secret.encode()).hexdigest()[:16]

    # ---- writing (lineside users) -------------------------------------------------
    def set_password(self, name: str, role: str | None, password: str) -> None:
        _check_password_quality(password)
        self._update(name, role, {"password": hash_password(password)})

    def set_token(self, name: str, role: str | None) -> str:
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        self._update(name, role, {"token_sha256": token_digest(token)})
        return token

    def remove(self, name: str) -> None:
        users = dict(self._load_for_write())
        if name not in users:
            raise LinesideError(f"{self.path} has no user {name!r} (`lineside users list` shows them)")
        del users[name]
        self._write(users)

    def _update(self, name: str, role: str | None, secret: dict) -> None:
        import re

        if not re.match(NAME_PATTERN, name):
            raise LinesideError(f"user name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
        users = dict(self._load_for_write())
        old = users.get(name, {})
        role = role or old.get("role")
        if role not in ROLES:
            raise LinesideError(f"give the user a role with --role: one of {', '.join(ROLES)}")
        users[name] = {"role": role, **secret, "changed": int(time.time())}
        self._write(users)

    def _load_for_write(self) -> dict:
        if not self.path.exists():
            return {}
        return self.users()

    def _write(self, users: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
        with os.fdopen(fd, "w") as f:
            json.dump({"version": 1, "users": users}, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o600)
        tmp.replace(self.path)


def _check_password_quality(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise LinesideError(f"the password is too short: use at least {MIN_PASSWORD} characters")


# ---- sessions ----------------------------------------------------------------------
def load_or_make_secret(path: str | Path) -> bytes:
    """The server's session key (32 random bytes, mode 0600), made on first use."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        data = path.read_bytes()
        if len(data) < 32:
            raise LinesideError(f"session secret {path} is too short: delete it and restart (sessions end)") from None
        return data
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(32))
    return path.read_bytes()


class Sessions:
    """Signed, expiring session values for cookies."""

    def __init__(self, users: UsersFile, secret: bytes, lifetime_s: float):
        self.users, self.secret, self.lifetime_s = users, secret, lifetime_s

    def issue(self, principal: Principal, now: float | None = None) -> str:
        expires = int((now or time.time()) + self.lifetime_s)
        body = f"{principal.name}|{expires}|{self.users.generation(principal.name)}"
        return f"{body}|{self._mac(body)}"

    def check(self, value: str, now: float | None = None) -> Principal | None:
        if not isinstance(value, str) or value.count("|") != 3:
            return None
        body, mac = value.rsplit("|", 1)
        if not hmac.compare_digest(mac, self._mac(body)):
            return None
        name, expires, generation = body.split("|")
        if not expires.isdigit() or int(expires) < (now or time.time()):
            return None
        current = self.users.generation(name)
        if current is None or not hmac.compare_digest(generation, current):
            return None  # removed, or the password changed since
        return self.users.principal(name)

    def _mac(self, body: str) -> str:
        return hmac.new(self.secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()
