"""Fixtures of the runtime tests; their helpers live in runtime_helpers.py."""

from __future__ import annotations

import pytest
from runtime_helpers import cleanup, station

from edge_infer.server import Server


@pytest.fixture
def serve(tmp_path):
    """start(**station settings) -> a running Server (its config file: ``server.cfg.source``); every server
    started is stopped (draining) and cleaned up after the test."""
    started = []

    def start(**settings):
        cfg, _ = station(tmp_path, **settings)
        server = Server(cfg).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()
        cleanup(server.cfg)
