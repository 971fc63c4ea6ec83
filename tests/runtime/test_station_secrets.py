"""Secrets referenced from the station config (${ENV}, !secret), the loopback defaults, and the
loud warning for services opened beyond loopback without their security."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from edge_infer.errors import LinesideError
from edge_infer.exposure import warnings
from edge_infer.line.config import ModbusConfig, OpcUaConfig, OperatorPageConfig
from edge_infer.station import StationConfig, load_station


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


MQTT_STATION = """station: s1
bundle: b
secrets_file: secrets.yaml
alerts:
  webhook: {{url: "https://hooks.example/x", headers: {{Authorization: "Bearer ${{HOOK_TOKEN}}"}}}}
line:
  gpio_backend: sim
  recipes: [{{id: 1, name: a, bundle: b}}]
  mqtt: {{host: broker, username: line, password: {password}}}
"""


def test_env_and_secret_references_are_resolved_on_load(tmp_path, monkeypatch):
    monkeypatch.setenv("HOOK_TOKEN", "t0k3n")
    write(tmp_path / "secrets.yaml", "mqtt_password: hunter22\n", 0o600)
    cfg = load_station(write(tmp_path / "station.yaml", MQTT_STATION.format(password="!secret mqtt_password")))
    assert cfg.line.mqtt.password == "hunter22"
    assert cfg.alerts.webhook.headers == {"Authorization": "Bearer t0k3n"}
    write(tmp_path / "mqtt.pw", "from-a-file\n", 0o600)
    cfg = load_station(write(tmp_path / "station.yaml", MQTT_STATION.format(password="!secret ./mqtt.pw")))
    assert cfg.line.mqtt.password == "from-a-file"
    toml = tmp_path / "station.toml"
    toml.write_text('station = "s1"\nbundle = "b"\nsecrets_file = "secrets.yaml"\n[line]\ngpio_backend = "sim"\n'
                    '[[line.recipes]]\nid = 1\nname = "a"\nbundle = "b"\n[line.mqtt]\nhost = "broker"\n'
                    'password = "!secret mqtt_password"\n')
    assert load_station(toml).line.mqtt.password == "hunter22"


def test_missing_references_name_the_key_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("HOOK_TOKEN", raising=False)
    write(tmp_path / "secrets.yaml", "other: x\n", 0o600)
    path = write(tmp_path / "station.yaml", MQTT_STATION.format(password="!secret mqtt_password"))
    with pytest.raises(LinesideError, match=r"alerts.webhook.headers.Authorization refers to \$\{HOOK_TOKEN\}"):
        load_station(path)
    monkeypatch.setenv("HOOK_TOKEN", "t")
    with pytest.raises(LinesideError, match="line.mqtt.password is `!secret mqtt_password`.*add `mqtt_password: VALUE`"):
        load_station(path)
    os.chmod(tmp_path / "secrets.yaml", 0o644)
    with pytest.raises(LinesideError, match="readable by others"):
        load_station(path)
    # away from the device (lineside bundle), references are checked without their values
    assert load_station(path, resolve_secrets=False).line.mqtt.password == "<secret>"


def test_every_service_binds_to_loopback_by_default():
    assert ModbusConfig().host == "127.0.0.1"
    assert OpcUaConfig().endpoint.startswith("opc.tcp://127.0.0.1:")
    assert OperatorPageConfig().host == "127.0.0.1"
    cfg = StationConfig(station="s1", bundle="b")
    assert cfg.metrics_host == "127.0.0.1"
    assert all(a.startswith("tcp://127.0.0.1:") for a in cfg.sockets.model_dump().values())
    assert warnings(cfg) == []
    with pytest.raises(ValueError, match="token_file"):
        OperatorPageConfig(token_file="operator.token")


def test_services_open_beyond_loopback_without_security_warn_in_health(tmp_path):
    from tiny_bundle import make_tiny_bundle

    from edge_infer.server import Server

    data = {"station": "s1", "bundle": str(make_tiny_bundle(tmp_path / "b")), "metrics_port": 9100,
            "metrics_host": "0.0.0.0", "journal": {"path": str(tmp_path / "j.sqlite")},
            "sockets": {"frames": "tcp://0.0.0.0:5555", "verdicts": "tcp://127.0.0.1:5556",
                        "control": "tcp://127.0.0.1:5557"},
            "line": {"gpio_backend": "sim", "recipes": [{"id": 1, "name": "a", "bundle": "b"}],
                     "modbus": {"host": "10.0.5.2"}, "opcua": {"endpoint": "opc.tcp://eth0.local:4840/x"},
                     "operator_page": {"host": "0.0.0.0"}}}
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_station(path)
    found = warnings(cfg)
    page = "operator page on 0.0.0.0:8080 is open to the network without users (security.users) and TLS"
    for needle in ("frames listen beyond loopback without Curve", "metrics on 0.0.0.0:9100", "Modbus on 10.0.5.2",
                   "OPC UA at opc.tcp://eth0.local", page):
        assert any(needle in w for w in found), (needle, found)
    data["line"]["modbus"]["allow"] = ["10.0.5.10"]
    path.write_text(yaml.safe_dump(data))
    assert not any("Modbus" in w for w in warnings(load_station(path)))
    server = Server(cfg)  # not started: nothing binds beyond loopback in this test
    try:
        assert server.health()["security_warnings"] == found
    finally:
        server.model.close()
