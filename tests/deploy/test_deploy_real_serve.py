"""Flashing to the real `lineside serve` (the runtime's server), restarted like systemd would:
v1 and v2 go live, rollback returns to v1, and a v3 that cannot start (its frames port is
taken) is rolled back to the running v1.

The other deploy tests use tests/deploy/service_double.py, which honours the same health
contract and starts faster.
"""

from __future__ import annotations

import importlib.util
import socket

import pytest
from net_helpers import free_port

from deploy_jetson.device_health import wait_healthy
from deploy_jetson.device_layout import state
from deploy_jetson.flash import flash, rollback
from deploy_jetson.targets import parse_target
from deploy_jetson.transport import open_shell
from tests.deploy.deploy_helpers import SERVICE, STATION, info, make_signed_tar

pytestmark = pytest.mark.skipif(importlib.util.find_spec("edge_infer.server") is None,
                                reason="`lineside serve` (edge_infer.server, issue 3) is not on this branch yet")


def test_flash_and_rollback_with_the_real_server(tmp_path, keys, device_root):
    ports = [free_port() for _ in range(3)]
    # the server binds all interfaces; flash asks it on loopback, at the address its station config names
    sockets = (f"sockets: {{frames: 'tcp://127.0.0.1:{ports[0]}', verdicts: 'tcp://127.0.0.1:{ports[1]}', "
               f"control: 'tcp://*:{ports[2]}'}}\n")
    tars = {v: make_signed_tar(tmp_path, keys[0], v, config_extra=sockets) for v in ("v1", "v2")}
    target = parse_target(f"local:{device_root}", {"restart": f"{{python}} {SERVICE} restart --root {{root}} --real",
                                                   "health_timeout": 60})
    for version in ("v1", "v2"):
        out = flash(target, open_shell(target), info(tars[version]))
        assert out.result == "ok", out.message
        # the server reports the resolved bundle folder, so the switch is confirmed from its answer
        assert not any("could not be confirmed" in w for w in out.warnings)
    answer = wait_healthy(f"tcp://127.0.0.1:{ports[2]}", 10, STATION)
    assert answer["bundle"]["version"] == "v2" and answer["bundle"]["path"].endswith(state(device_root)["current"]["id"])
    assert (device_root / "journal.sqlite").is_file()  # outside the bundle folders: it outlives a version

    out = rollback(target, open_shell(target))
    assert out.result == "ok", out.message
    assert wait_healthy(f"tcp://127.0.0.1:{ports[2]}", 10, STATION)["bundle"]["version"] == "v1"

    with socket.socket() as squatter:  # something else on the line PC holds the port v3 wants
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        v3 = make_signed_tar(tmp_path, keys[0], "v3", config_extra=sockets.replace(f":{ports[0]}", f":{taken}"))
        target = parse_target(f"local:{device_root}", {**target.settings.model_dump(), "health_timeout": 15})
        out = flash(target, open_shell(target), info(v3))
    assert out.result == "rolled back", out.message
    assert wait_healthy(f"tcp://127.0.0.1:{ports[2]}", 10, STATION)["bundle"]["version"] == "v1"
    assert "Address already in use" in (device_root / "service.log").read_text()


def test_flash_fails_when_the_service_does_not_run_the_engine_it_built(tmp_path, keys, device_root):
    """Issue 20 joint 2: the device builds an engine, the service falls back to another backend: rolled back.

    The build runs the test stand-in builder (LINESIDE_ENGINE_STANDIN=1 in the build command only), so the
    restarted `lineside serve`, without the variable, refuses that engine and runs ONNX Runtime on the CPU.
    """
    ports = [free_port() for _ in range(3)]
    sockets = (f"sockets: {{frames: 'tcp://127.0.0.1:{ports[0]}', verdicts: 'tcp://127.0.0.1:{ports[1]}', "
               f"control: 'tcp://127.0.0.1:{ports[2]}'}}\n")
    tars = {v: make_signed_tar(tmp_path, keys[0], v, config_extra=sockets) for v in ("v1", "v2")}
    restart = f"{{python}} {SERVICE} restart --root {{root}} --real"
    target = parse_target(f"local:{device_root}", {"restart": restart, "health_timeout": 60})
    assert flash(target, open_shell(target), info(tars["v1"])).result == "ok"

    builds = {"trt_check": "true", "build": "env LINESIDE_ENGINE_STANDIN=1 {python} -m lineside build-engine {bundle}"}
    target = parse_target(f"local:{device_root}", {"restart": restart, "health_timeout": 60, **builds})
    out = flash(target, open_shell(target), info(tars["v2"]))
    assert out.result == "rolled back", out.message
    assert "built a fp32 engine for tensorrt-standin, but the service runs backend ort-cpu" in out.message
    answer = wait_healthy(f"tcp://127.0.0.1:{ports[2]}", 10, STATION)
    assert (answer["bundle"]["version"], answer["bundle"]["backend"]) == ("v1", "ort-cpu")

    # the same flash to a service that can run the engine goes live, and health says what runs
    restart_standin = f"env LINESIDE_ENGINE_STANDIN=1 {restart}"
    target = parse_target(f"local:{device_root}", {"restart": restart_standin, "health_timeout": 60, **builds})
    out = flash(target, open_shell(target), info(tars["v2"]))
    assert out.result == "ok" and "backend tensorrt-standin, precision fp32" in out.message, out.message


def test_one_rule_says_when_a_service_fell_back_from_its_built_engine():
    """flash, the Ansible role (device health --expect-engine) and Mender share engine_mismatch."""
    from deploy_jetson.device_health import engine_mismatch

    engine = {"backend": "tensorrt", "precision": "fp16"}
    assert engine_mismatch({"bundle": {"backend": "tensorrt", "precision": "fp16"}}, engine) is None
    assert engine_mismatch({"bundle": {"backend": "ort-cpu", "precision": "fp32"}}, None) is None
    problem = engine_mismatch({"bundle": {"backend": "ort-cpu", "precision": "fp32"}}, engine)
    assert "fp16 engine for tensorrt" in problem and "ort-cpu" in problem
