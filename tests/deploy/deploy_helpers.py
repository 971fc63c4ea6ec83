"""Helpers shared by the deploy tests (fixtures live in conftest.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tiny_bundle import make_tiny_bundle

REPO = Path(__file__).resolve().parents[2]
SERVICE = Path(__file__).with_name("service_double.py")
STATION = "press-1"


def make_signed_tar(tmp: Path, key: Path, version: str, station: str = STATION, extra_bytes: int = 0,
                    config_extra: str = "") -> Path:
    """A signed bundle tar whose model reports `version`, packed for `station`."""
    from deploy_jetson.pack import pack_bundle
    from edge_infer.bundle import Bundle

    src = make_tiny_bundle(tmp / f"src-{version}-{station}", height=16, width=16)
    bundle = Bundle.load(src)
    bundle.manifest.model.version = version
    if extra_bytes:
        (src / "extra.bin").write_bytes(os.urandom(extra_bytes))
        bundle.add_file("extra.bin", "other", "tests: padding so a copy takes a while")
    bundle.save()
    config = tmp / f"{station}.yaml"
    config.write_text(f"station: {station}\nbundle: ./export\njournal: {{path: journal.sqlite}}\n{config_extra}")
    return pack_bundle(src, config, key, tmp / f"{version}-{station}.tar").path


def provision(root: Path, public_key: Path, station: str = STATION) -> Path:
    from deploy_jetson.device_layout import provision as device_provision

    device_provision(root, station, "test", public_key.read_bytes())
    return root


def device_settings(root: Path, control: str, python: str | None = None, **extra) -> dict:
    """Target settings that run the service double as the device's service manager."""
    settings = {"root": str(root), "control": control, "health_timeout": 20,
                "restart": f"{{python}} {SERVICE} restart --root {{root}} --control {{control}}"}
    if python:
        settings["python"] = python
    settings.update(extra)
    return settings


def stop_service(root: Path) -> None:
    pid_file = root / "service.pid"
    if pid_file.is_file():
        from tests.deploy.service_double import stop

        stop(int(pid_file.read_text()))


# The device's Python over SSH: this interpreter, with this checkout first on its path.
SSH_PYTHON = f"env PYTHONPATH={REPO} {sys.executable}"


def write_inventory(path: Path, devices: list[dict], defaults: dict) -> Path:
    """An inventory TOML (values written as JSON, which TOML reads the same for strings, numbers, lists)."""
    import json

    lines = ["[defaults]"] + [f"{k} = {json.dumps(v)}" for k, v in defaults.items()]
    for device in devices:
        lines += ["", "[[devices]]"] + [f"{k} = {json.dumps(v)}" for k, v in device.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def lineside(*args, timeout: float = 120):
    """Run the real `lineside` command line from this checkout; return the CompletedProcess."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "lineside", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def info(tar: Path):
    """What the host knows of a bundle tar before flashing it (as `lineside flash` works it out)."""
    from deploy_jetson.commands import inspect_bundle
    from deploy_jetson.flash import BundleInfo
    from edge_infer.bundle import sha256_file

    d = inspect_bundle(tar)
    return BundleInfo(tar, sha256_file(tar), d["id"], d["version"], d["station"])
