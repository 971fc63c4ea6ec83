"""The deploy command line: bundle, verify, inventories, a parallel fleet flash with its table, status, rollback."""

from __future__ import annotations

import json
import sqlite3
import tarfile

import pytest
import yaml
from net_helpers import free_port
from tiny_bundle import make_tiny_bundle

from deploy_jetson.configfile import control_address
from deploy_jetson.device_health import wait_healthy
from deploy_jetson.device_layout import state
from deploy_jetson.pack import pack_bundle
from deploy_jetson.targets import load_inventory, resolve_targets
from edge_infer.errors import LinesideError
from edge_infer.signing import extract_bundle_tar
from tests.deploy.deploy_helpers import STATION, device_settings, lineside, provision, stop_service, write_inventory


def test_bundle_and_verify_commands(tmp_path, keys):
    src = make_tiny_bundle(tmp_path / "export")
    (src / "notes.txt").write_text("not in the manifest: must not travel")
    config = tmp_path / "press-7.toml"
    config.write_text('station = "press-7"\nbundle = "../export"\n[journal]\npath = "journal.sqlite"\n'
                      '[alerts.disk]\ndir = "/var/lib/lineside/ng"\n[sockets]\ncontrol = "tcp://*:6001"\n')
    r = lineside("bundle", tmp_path, "--station", config, "--key", keys[0], "--out", tmp_path / "b.tar")
    assert r.returncode == 0, r.stderr
    assert "for station press-7" in r.stdout
    with tarfile.open(tmp_path / "b.tar") as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "model.onnx", "signature.ed25519", "station.yaml",
                                          "thresholds.json"]
        packed = yaml.safe_load(tar.extractfile("station.yaml"))
    # on the device the config points at its own bundle folder, and the journal outlives a bundle version
    assert (packed["bundle"], packed["journal"]["path"]) == (".", "../../journal.sqlite")
    assert packed["alerts"]["disk"]["dir"] == "/var/lib/lineside/ng"
    unpacked = extract_bundle_tar(tmp_path / "b.tar", tmp_path / "unpacked")
    assert control_address(unpacked) == "tcp://127.0.0.1:6001"
    r = lineside("verify", tmp_path / "b.tar", "--trust", keys[1], "--station", "press-7")
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "a trusted key" in r.stdout and "station.yaml" in r.stdout
    r = lineside("verify", tmp_path / "b.tar", "--station", "press-8")
    assert r.returncode == 2 and "made for press-7" in r.stderr and "Traceback" not in r.stderr
    r = lineside("verify", tmp_path / "b.tar", "--json")
    assert json.loads(r.stdout)["station"] == "press-7"


def test_packing_is_deterministic_and_station_configs_are_validated(tmp_path, keys):
    src = make_tiny_bundle(tmp_path / "export")
    config = tmp_path / "s.yaml"
    config.write_text("station: weld-2\nbundle: .\n")
    a = pack_bundle(src, config, keys[0], tmp_path / "a.tar")
    b = pack_bundle(src, config, keys[0], tmp_path / "b.tar")
    assert a.path.read_bytes() == b.path.read_bytes() and a.station == "weld-2"
    # the runtime's schema checks the config before anything is packed
    config.write_text("bundle: .\ncamera: {source: 0}\n")
    with pytest.raises(LinesideError, match="(?s)is invalid.*station"):
        pack_bundle(src, config, keys[0], tmp_path / "c.tar")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LinesideError, match="export one first"):
        pack_bundle(tmp_path / "empty", config, keys[0], tmp_path / "c.tar")


def test_inventories_in_toml_and_yaml(tmp_path):
    toml = write_inventory(tmp_path / "f.toml", [{"name": "a", "target": "ssh://u@h:2200", "station": "s1"},
                                                 {"target": "local:/tmp/dev-b", "keep": 5}],
                           {"python": "/opt/venv/bin/python", "bwlimit": "2M"})
    a, b = load_inventory(toml)
    assert (a.name, a.port, a.settings.station, a.python, a.settings.bandwidth()) == ("a", 2200, "s1",
                                                                                     "/opt/venv/bin/python", 2e6)
    assert (b.kind, b.root, b.settings.keep) == ("local", "/tmp/dev-b", 5)
    yaml = tmp_path / "f.yaml"
    yaml.write_text("devices:\n  - {target: 'ssh://h1', colour: red}\n")
    with pytest.raises(LinesideError, match="colour"):
        load_inventory(yaml)
    yaml.write_text("devices: []\n")
    with pytest.raises(LinesideError, match="lists no devices"):
        resolve_targets([str(yaml)])
    assert resolve_targets(["local:/x"], {"health_timeout": "5"})[0].settings.health_timeout == 5.0


def test_parallel_fleet_flash_prints_progress_and_a_final_table(tmp_path, keys, tars):
    devices, controls = [], {}
    for i in range(3):
        root = provision(tmp_path / f"dev{i}", keys[1])
        controls[root] = f"tcp://127.0.0.1:{free_port()}"
        devices.append({"name": f"press-1-cam{i}", "target": f"local:{root}",
                        **{k: v for k, v in device_settings(root, controls[root]).items() if k != "root"}})
    inventory = write_inventory(tmp_path / "fleet.toml", devices, {"station": STATION})
    try:
        r = lineside("flash", inventory, tars["v1"], "--parallel", "3")
        assert r.returncode == 0, r.stdout + r.stderr
        lines = r.stdout.splitlines()
        header = lines.index(next(line for line in lines if line.startswith("device")))
        table = lines[header + 2: header + 5]
        assert [row.split()[0] for row in table] == ["press-1-cam0", "press-1-cam1", "press-1-cam2"]
        assert all(" → v1@" in row and row.split()[4] == "ok" for row in table)
        assert sum("[press-1-cam" in line and "copy: 100%" in line for line in lines) == 3
        for root, control in controls.items():
            assert wait_healthy(control, 10, STATION)["bundle"]["version"] == "v1"

        r = lineside("flash", inventory, tars["v2"], "--set", "build=false", "--set", "trt_check=true")
        assert r.returncode == 1 and r.stdout.count("build failed") >= 3
        # the runtime's journal (edge_infer's `verdicts` table) tells status when the last verdict was
        with sqlite3.connect(tmp_path / "dev0" / "journal.sqlite") as db:
            db.execute("CREATE TABLE verdicts (id INTEGER PRIMARY KEY, decided_at REAL NOT NULL, station TEXT)")
            db.execute("INSERT INTO verdicts (decided_at, station) VALUES (1795456800.0, ?)", (STATION,))
        r = lineside("status", inventory, "--json")
        reports = [json.loads(line) for line in r.stdout.splitlines()]
        assert [rep["current"]["version"] for rep in reports] == ["v1"] * 3
        assert all(rep["health"]["ok"] for rep in reports)
        assert [rep["last_verdict"] for rep in reports] == ["2026-11-23T18:00:00+00:00", None, None]

        first = devices[0]["target"]
        r = lineside("rollback", first, *[f"--set={k}={v}" for k, v in device_settings(
            tmp_path / "dev0", controls[tmp_path / "dev0"]).items()])
        assert r.returncode == 1 and "no previous bundle" in r.stdout
        assert state(tmp_path / "dev0")["current"]["version"] == "v1"
    finally:
        for root in controls:
            stop_service(root)
