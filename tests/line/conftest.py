"""Fixtures of the line tests; their helpers live in line_helpers.py and security_helpers.py."""

from __future__ import annotations

import pytest
from line_helpers import gray, line_station, start_line
from security_helpers import Accounts, make_accounts


@pytest.fixture
def accounts(tmp_path) -> Accounts:
    """olga (operator), eve (engineer), ada (admin), the machine plc-1, and recipes part-a and part-b."""
    return make_accounts(tmp_path)


@pytest.fixture
def serve_line(tmp_path):
    """start(line, camera=grey frames, **station settings) -> the running LineService, on loopback;
    every line it started is closed when the test ends, passed or failed."""
    servers = []

    def start(line: dict, camera=lambda: gray(20), **settings):
        server, service = start_line(line_station(tmp_path, line, **settings), camera)
        servers.append(server)
        return service

    yield start
    for server in reversed(servers):
        server.close()
