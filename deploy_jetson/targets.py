"""Where to flash: `ssh://user@host[:port][/root]`, `local:/path`, or a fleet inventory file.

An inventory (TOML or YAML) has optional ``defaults`` and a list ``devices``; each device
has a ``target`` and any setting of `Target` below, e.g.::

    [defaults]
    python = "/opt/lineside/venv/bin/python"
    control = "tcp://127.0.0.1:5556"

    [[devices]]
    name = "press-1"
    target = "ssh://lineside@10.0.0.11"
    station = "press-1"

Commands run on the device may use the placeholders {python}, {root}, {station},
{bundle} (the new bundle's folder on the device) and {control}.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_infer.errors import LinesideError

from .configfile import read_config


class Settings(BaseModel):
    """Per-device settings; every one may be given in the inventory's defaults or per device."""

    model_config = ConfigDict(extra="forbid")

    root: str | None = Field(None, description="the lineside folder on the device (default /opt/lineside)")
    station: str | None = Field(None, description="the station the device must already be provisioned as")
    python: str | None = Field(None, description="the device's Python with lineside installed")
    restart: str = "sudo systemctl restart lineside@{station}"
    control: str | None = Field(None, description="the control socket as reached on the device (default: "
                                "sockets.control of the station config in the running bundle)")
    health_timeout: float = 90.0
    health_key: str | None = Field(None, description="CurveZMQ stations: the health check's key pair on the device "
                                   "(NAME.key_secret; NAME.key in curve.authorized_clients); default "
                                   "ROOT/keys/health.key_secret")
    build: str = "{python} -m lineside build-engine {bundle}"
    trt_check: str = "{python} -c 'import tensorrt'"
    build_timeout: float = 3600.0
    identity: str | None = Field(None, description="SSH private key file")
    ssh_options: list[str] = Field(default_factory=list, description="extra `-o` options, e.g. ProxyJump=gw")
    bwlimit: str | None = Field(None, description="copy bandwidth limit, bytes/s with k/M suffix: spare the line's network")
    keep: int = Field(3, ge=2, description="bundles kept on the device, current and previous included")

    @field_validator("bwlimit")
    @classmethod
    def _rate(cls, v):
        if v is not None and not re.fullmatch(r"\d+(\.\d+)?[kKmM]?", v):
            raise ValueError("write a rate in bytes/s such as 500k or 2M")
        return v

    def bandwidth(self) -> float | None:
        if self.bwlimit is None:
            return None
        scale = {"k": 1e3, "m": 1e6}.get(self.bwlimit[-1].lower(), 1)
        return float(self.bwlimit.rstrip("kKmM")) * scale


class Target(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    kind: str  # "local" or "ssh"
    host: str | None = None
    user: str | None = None
    port: int | None = None
    settings: Settings

    @property
    def root(self) -> str:
        return self.settings.root or "/opt/lineside"

    @property
    def python(self) -> str:
        # A local target runs the host's own lineside, with the host's interpreter.
        return self.settings.python or (sys.executable if self.kind == "local" else "python3")

    def command(self, template: str, **extra) -> str:
        values = {"python": self.python, "root": self.root, "station": self.settings.station or "",
                  "control": self.settings.control or "", **extra}
        try:
            return template.format(**values)
        except (KeyError, IndexError, ValueError) as exc:
            raise LinesideError(f"device {self.name}: the command {template!r} uses an unknown placeholder "
                                f"({exc}); use {{python}}, {{root}}, {{station}}, {{bundle}} or {{control}}") from None


def parse_target(text: str, settings: dict | None = None, name: str | None = None) -> Target:
    """One target string (ssh://… or local:…) with settings from an inventory or the command line."""
    settings = dict(settings or {})
    if text.startswith("local:"):
        path = text[len("local:"):]
        if not path:
            raise LinesideError(f"{text!r} names no folder: write local:/path/to/device-root")
        settings.setdefault("root", str(Path(path).expanduser().resolve()))
        return Target(name=name or Path(path).name or path, kind="local", settings=_settings(settings, text))
    if text.startswith("ssh://"):
        url = urlsplit(text)
        try:
            port = url.port
        except ValueError:
            raise LinesideError(f"{text!r} has a bad port: write ssh://user@host:PORT") from None
        if not url.hostname:
            raise LinesideError(f"{text!r} names no host: write ssh://user@host[:port][/root]")
        if url.path not in ("", "/"):
            settings.setdefault("root", url.path)
        return Target(name=name or url.hostname, kind="ssh", host=url.hostname, user=url.username, port=port,
                      settings=_settings(settings, text))
    raise LinesideError(f"{text!r} is not a target: write ssh://user@host[:port], local:/path, or give an "
                        "inventory file (.toml/.yaml)")


def _settings(values: dict, where: str) -> Settings:
    try:
        return Settings.model_validate(values)
    except ValidationError as exc:
        raise LinesideError(f"bad settings for {where}:\n{exc}") from None


def load_inventory(path: str | Path, overrides: dict | None = None) -> list[Target]:
    path = Path(path)
    data = read_config(path)
    unknown = set(data) - {"defaults", "devices"}
    if unknown:
        raise LinesideError(f"{path}: unknown top-level key(s) {', '.join(sorted(unknown))}; "
                            "an inventory has `defaults` and `devices`")
    devices = data.get("devices")
    if not isinstance(devices, list) or not devices:
        raise LinesideError(f"{path} lists no devices: add [[devices]] entries with a `target` each")
    defaults = data.get("defaults") or {}
    targets = []
    for i, device in enumerate(devices):
        if not isinstance(device, dict) or "target" not in device:
            raise LinesideError(f"{path}: device #{i + 1} has no `target` (ssh://user@host or local:/path)")
        device = dict(device)
        text, name = device.pop("target"), device.pop("name", None)
        targets.append(parse_target(text, {**defaults, **device, **(overrides or {})}, name=name))
    names = [t.name for t in targets]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise LinesideError(f"{path}: device names must be unique; repeated: {', '.join(duplicates)}")
    return targets


def resolve_targets(texts: list[str], overrides: dict | None = None) -> list[Target]:
    """Command-line targets: target strings and inventory files, in order."""
    targets: list[Target] = []
    for text in texts:
        if text.startswith(("ssh://", "local:")):
            targets.append(parse_target(text, overrides))
        elif Path(text).suffix in (".toml", ".yaml", ".yml"):
            targets.extend(load_inventory(text, overrides))
        else:
            parse_target(text)  # raises the explanation
    return targets


def parse_overrides(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or key not in Settings.model_fields:
            raise LinesideError(f"--set {pair!r}: write KEY=VALUE with KEY one of "
                                f"{', '.join(Settings.model_fields)}")
        out[key] = value
    return out
