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

from deploy_jetson.device import state, wait_healthy
from deploy_jetson.flash import flash, rollback
from deploy_jetson.targets import parse_target
from deploy_jetson.transport import open_shell
from tests.deploy.deploy_helpers import SERVICE, STATION, free_port, info, make_signed_tar

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
