"""Secrets referenced, not written, in a station config: ``${ENV}`` and ``!secret NAME``.

A station config travels inside the bundle (to devices and artifact stores), so a password in
it would travel too. Instead it names where the device finds the value:

- ``${LINESIDE_MQTT_PASSWORD}``: an environment variable of the service (systemd
  ``EnvironmentFile=``), anywhere inside a string;
- ``!secret mqtt_password``: the key ``mqtt_password`` of the device's secrets file (YAML
  mapping, mode 0600; ``secrets_file`` in the station config);
- ``!secret /etc/lineside/mqtt.password``: a file's contents (a path: contains ``/``).

References are resolved when the device loads the config (`load_station`); `lineside bundle`
keeps them as they are and refuses a config whose secret-looking keys hold plain values
(`inline_secrets`). In TOML, where there are no tags, write the string ``"!secret NAME"``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from .errors import LinesideError

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
TAG = "!secret"
# keys whose values are secrets wherever they appear; webhook/HTTP header names likewise
SECRET_KEY = re.compile(r"(^|_)(password|passwd|secret|token|api_?key|private_key)$", re.IGNORECASE)
SECRET_HEADER = re.compile(r"authorization|token|secret|api[-_]?key|cookie|password", re.IGNORECASE)
# keys that name a file or a non-secret setting, although they match SECRET_KEY's words
NOT_SECRET = {"server_secret_key", "session_secret", "secrets_file"}


class SecretRef(str):
    """``!secret NAME`` as read from YAML: a string that remembers it is a reference."""

    def __repr__(self) -> str:
        return f"SecretRef({str(self)!r})"


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Loader.add_constructor(TAG, lambda loader, node: SecretRef(loader.construct_scalar(node)))
_Dumper.add_representer(SecretRef, lambda dumper, ref: dumper.represent_scalar(TAG, str(ref)))


def load_yaml(text: str):
    """yaml.safe_load that also reads ``!secret NAME`` (as SecretRef)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader subclass: no arbitrary objects


def dump_yaml(data) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def from_toml(data):
    """TOML has no tags: the string "!secret NAME" is the reference there."""
    if isinstance(data, dict):
        return {k: from_toml(v) for k, v in data.items()}
    if isinstance(data, list):
        return [from_toml(v) for v in data]
    if isinstance(data, str) and data.startswith(TAG + " "):
        return SecretRef(data[len(TAG) + 1:].strip())
    return data


def resolve(data, config_path: Path, secrets_file: Path | None, env=os.environ):
    """Replace every reference with its value; a missing one is an error naming the key and the fix."""
    cache: dict = {}

    def walk(value, where: str):
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, SecretRef):
            return _secret(str(value), where, config_path, secrets_file, cache)
        if isinstance(value, str) and "${" in value:
            return ENV_REF.sub(lambda m: _env(m.group(1), where, config_path, env), value)
        return value

    return walk(data, "")


def _env(name: str, where: str, config_path: Path, env) -> str:
    if name not in env:
        raise LinesideError(f"station config {config_path}: {where} refers to ${{{name}}}, which is not set in the "
                            f"service's environment: set it (systemd: EnvironmentFile=, docs/security.md)")
    return env[name]


def _secret(name: str, where: str, config_path: Path, secrets_file: Path | None, cache: dict) -> str:
    if "/" in name:
        path = Path(name) if Path(name).is_absolute() else (config_path.parent / name)
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise LinesideError(f"station config {config_path}: {where} is `!secret {name}`, which cannot be read "
                                f"({exc.strerror}): put the secret in that file (mode 0600)") from None
    if secrets_file is None:
        raise LinesideError(f"station config {config_path}: {where} is `!secret {name}` but the config names no "
                            "secrets_file: add `secrets_file: PATH` (a YAML mapping on the device, mode 0600)")
    if "table" not in cache:
        cache["table"] = read_secrets_file(secrets_file)
    table = cache["table"]
    if name not in table:
        raise LinesideError(f"station config {config_path}: {where} is `!secret {name}`, which {secrets_file} does "
                            f"not define: add `{name}: VALUE` there")
    return str(table[name])


def read_secrets_file(path: Path) -> dict:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise LinesideError(f"secrets file {path} does not exist: write it on the device (YAML `name: value`, "
                            "mode 0600)") from None
    if st.st_mode & 0o077:
        raise LinesideError(f"secrets file {path} is readable by others (mode {st.st_mode & 0o777:o}): chmod 600 {path}")
    try:
        table = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise LinesideError(f"secrets file {path} cannot be parsed: {exc}") from None
    if not isinstance(table, dict):
        raise LinesideError(f"secrets file {path} must be a mapping of `name: value`")
    return table


def placeholders(data):
    """The config with every reference replaced by a placeholder: for checks away from the device."""
    if isinstance(data, dict):
        return {k: placeholders(v) for k, v in data.items()}
    if isinstance(data, list):
        return [placeholders(v) for v in data]
    if isinstance(data, SecretRef):
        return "<secret>"
    if isinstance(data, str):
        return ENV_REF.sub("<env>", data)
    return data


def inline_secrets(data, where: str = "") -> list[str]:
    """Keys whose values are secrets written out in the config (neither ${ENV} nor !secret)."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            path = f"{where}.{key}" if where else str(key)
            if isinstance(key, str) and key not in NOT_SECRET and SECRET_KEY.search(key) and _inline(value):
                found.append(path)
            elif key == "headers" and isinstance(value, dict):
                found += [f"{path}.{h}" for h, v in value.items() if SECRET_HEADER.search(str(h)) and _inline(v)]
            else:
                found += inline_secrets(value, path)
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found += inline_secrets(value, f"{where}[{i}]")
    return found


def _inline(value) -> bool:
    if value is None or isinstance(value, (SecretRef, bool)):
        return False
    if isinstance(value, str):
        return ENV_REF.sub("", value).strip() not in ("", "Bearer", "Basic", "Token")
    return True
