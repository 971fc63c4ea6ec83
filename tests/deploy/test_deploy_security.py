"""Deploy-side security: no inline secret travels in a bundle, the sudoers rule admits exactly
the restart `lineside flash` runs, and the health check speaks CurveZMQ."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from deploy_helpers import REPO, make_signed_tar

from deploy_jetson.targets import Settings
from edge_infer.errors import LinesideError

ASSETS = REPO / "deploy_jetson" / "assets"


@pytest.mark.parametrize("extra, key", [
    ("line:\n  recipes: [{id: 1, name: a, bundle: .}]\n  mqtt: {host: broker, password: hunter22}\n",
     "line.mqtt.password"),
    ("alerts:\n  webhook: {url: 'https://h/x', headers: {Authorization: 'Bearer abc123'}}\n",
     "alerts.webhook.headers.Authorization"),
])
def test_bundle_refuses_a_config_with_an_inline_secret_naming_the_key_and_the_fix(tmp_path, keys, extra, key):
    with pytest.raises(LinesideError, match=re.escape(key) + r".*!secret NAME.*secrets_file"):
        make_signed_tar(tmp_path, keys[0], "v1", config_extra=extra)


def test_bundle_keeps_secret_references_for_the_device_to_resolve(tmp_path, keys):
    extra = ("secrets_file: secrets.yaml\nline:\n  recipes: [{id: 1, name: a, bundle: .}]\n"
             "  mqtt: {host: broker, password: !secret mqtt_password}\n"
             "alerts:\n  webhook: {url: 'https://h/x', headers: {Authorization: 'Bearer ${HOOK_TOKEN}'}}\n")
    tar = make_signed_tar(tmp_path, keys[0], "v1", config_extra=extra)
    with tarfile.open(tar) as t:
        packed = t.extractfile("station.yaml").read().decode()
    assert "password: !secret 'mqtt_password'" in packed or "password: !secret mqtt_password" in packed
    assert "${HOOK_TOKEN}" in packed and "hunter" not in packed
    assert "secrets_file: ../../secrets.yaml" in packed  # on the device: beside current/, not in the bundle


def test_sudoers_rule_admits_exactly_the_restart_flash_runs():
    template = (ASSETS / "sudoers.lineside").read_text()
    rendered = template.replace("STATION", "press-1")
    rules = [line for line in rendered.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    alias = next(line for line in rules if line.startswith("Cmnd_Alias"))
    commands = [c.strip() for c in alias.split("=", 1)[1].split(",")]
    restart = "/usr/bin/" + Settings().restart.removeprefix("sudo ").format(station="press-1")
    assert restart in commands and "/usr/bin/systemctl status lineside@press-1" in commands
    for command in commands:  # no wildcard or regex: extra arguments cannot match
        assert not set(command) & set("*?[]^$\\"), command
    assert rules[-1] == "lineside ALL=(root) NOPASSWD: LINESIDE_SERVICE"
    visudo = shutil.which("visudo") or ("/usr/sbin/visudo" if Path("/usr/sbin/visudo").exists() else None)
    if visudo is None:
        pytest.skip("visudo is not installed (apt-get install sudo): the rule was checked by parsing only")
    with tempfile.NamedTemporaryFile("w", suffix=".sudoers") as f:
        f.write(rendered)
        f.flush()
        check = subprocess.run([visudo, "-c", "-f", f.name], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr


def _curve_station(tmp_path: Path, key_dir: Path) -> tuple[Path, Path]:
    """A device root whose current bundle's station config puts the sockets under Curve."""
    from tiny_bundle import make_tiny_bundle

    sock = Path(tempfile.mkdtemp(prefix="ls-", dir="/tmp"))
    root = tmp_path / "device"
    current = root / "bundles" / "abc"
    current.parent.mkdir(parents=True)
    make_tiny_bundle(current)
    (root / "current").symlink_to(current)
    (current / "station.yaml").write_text(yaml.safe_dump({
        "station": "press-1", "bundle": ".", "journal": {"path": str(tmp_path / "journal.sqlite")},
        "sockets": {k: f"ipc://{sock}/{k}" for k in ("frames", "verdicts", "control")},
        "curve": {"server_secret_key": str(key_dir / "server.key_secret"),
                  "authorized_clients": str(key_dir / "authorized")}}))
    return root, current / "station.yaml"


def test_flash_health_check_speaks_curve_with_its_client_key(tmp_path):
    from edge_infer.keys_cmd import main as keys_main
    from edge_infer.server import Server
    from edge_infer.station import load_station

    keys = tmp_path / "keys"
    keys_main(SimpleNamespace(type="curve", out=str(keys), names=["server", "stranger"], force=False))
    root, config = _curve_station(tmp_path, keys)
    keys_main(SimpleNamespace(type="curve", out=str(root / "keys"), names=["health"], force=False))
    (keys / "authorized").mkdir()
    shutil.copy(root / "keys" / "health.key", keys / "authorized" / "health.key")
    server = Server(load_station(config)).start()

    def health(*extra):
        return subprocess.run([sys.executable, "-m", "deploy_jetson.device", "health", "--root", str(root),
                               "--station", "press-1", *extra], capture_output=True, text=True, check=False, timeout=120,
                              env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})

    try:
        ok = health("--timeout", "20")
        assert ok.returncode == 0, ok.stderr
        assert json.loads(ok.stdout)["status"] == "ready"
        refused = health("--timeout", "2", "--client-key", str(keys / "stranger.key_secret"))
        assert refused.returncode != 0 and "did not report healthy" in refused.stderr  # not authorized
        (root / "keys" / "health.key_secret").unlink()
        missing = health("--timeout", "2")
        assert missing.returncode != 0 and "lineside keys --out" in missing.stderr
    finally:
        server.request_stop()
        server.close()
