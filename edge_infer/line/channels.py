"""Starting the line's outward channels, and a helper to run an asyncio server in its own thread."""

from __future__ import annotations

import asyncio
import threading

from ..errors import LinesideError


class LoopThread:
    """An asyncio event loop on a daemon thread; ``run(coro)`` runs a coroutine there and waits."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro, timeout_s: float = 30.0):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        if not self.thread.is_alive():
            self.loop.close()


def start_channels(service) -> list:
    """Start each configured channel; one that cannot start stops the others and says why."""
    cfg, started = service.cfg, []
    plans = []
    if cfg.modbus:
        plans.append(("modbus", lambda: __import__("edge_infer.line.modbus", fromlist=["x"]).ModbusChannel(service, cfg.modbus)))
    if cfg.opcua:
        plans.append(("opcua", lambda: __import__("edge_infer.line.opcua", fromlist=["x"]).OpcUaChannel(service, cfg.opcua)))
    if cfg.mqtt:
        plans.append(("mqtt", lambda: __import__("edge_infer.line.mqtt", fromlist=["x"]).MqttChannel(service, cfg.mqtt)))
    if cfg.operator_page:
        plans.append(("operator_page", lambda: __import__("edge_infer.line.operator_page.app", fromlist=["x"])
                      .OperatorPage(service, cfg.operator_page)))
    for name, make in plans:
        try:
            started.append(make())
        except ImportError as exc:
            _close(started)
            raise LinesideError(f"line.{name} needs a package that is not installed ({exc.name}): "
                                "pip install 'lineside[line]'") from None
        except Exception:
            _close(started)
            raise
    return started


def _close(channels) -> None:
    for c in channels:
        c.close()
