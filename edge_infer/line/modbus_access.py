"""Who may talk Modbus to the station: an allow-list of client addresses.

Modbus TCP has no authentication of its own, so the only checks are the network's (keep the
PLC link on an isolated cell network, docs/security.md) and this one: a connection from an
address outside ``line.modbus.allow`` is closed as soon as it is accepted, before a byte of it
is read.

pymodbus (3.x) has no documented hook that sees a client's address when it connects
(``trace_connect`` gets only a bool), so this is the narrowest wrapper: the server makes its
per-connection handler through ``callback_new_connection``, and our handler checks the peer in
asyncio's ``connection_made`` before pymodbus sees the connection.

A refusal is logged, and journaled (`lineside audit --kind modbus_refused`) at most once a minute
per address, so a port scan cannot flood the journal.
"""

from __future__ import annotations

import ipaddress
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler

from ..logs import log_event


class AllowList:
    def __init__(self, entries: list[str]):
        self.networks = [ipaddress.ip_network(e, strict=False) for e in entries]

    def __bool__(self) -> bool:
        return bool(self.networks)

    def admits(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if getattr(address, "ipv4_mapped", None):  # ::ffff:10.0.0.5 on a dual-stack socket
            address = address.ipv4_mapped
        return any(address in net for net in self.networks)


class _GatedHandler(ServerRequestHandler):
    def connection_made(self, transport) -> None:
        peer = transport.get_extra_info("peername") or ("?",)
        allow = self.server.allow_list
        if allow and not allow.admits(str(peer[0])):
            self.server.refuse(str(peer[0]))
            if self.listener is not None:
                self.listener.active_connections.pop(self.unique_id, None)
            transport.abort()  # never set as our transport: pymodbus does not see this connection
            return
        super().connection_made(transport)


class AllowListTcpServer(ModbusTcpServer):
    """A ModbusTcpServer that accepts connections only from the allow-list (empty: from anyone)."""

    JOURNAL_EVERY_S = 60.0

    def __init__(self, context, allow: list[str], journal=None, **kwargs):
        super().__init__(context, **kwargs)
        self.allow_list, self.refused = AllowList(allow), 0
        self.journal = journal  # the line's journal (event(kind, who, **detail)), for refusals
        self.last_journaled: dict[str, float] = {}

    def refuse(self, host: str) -> None:
        self.refused += 1
        log_event("modbus_refused", client=host, reason="not in line.modbus.allow")
        now = time.monotonic()
        if self.journal is not None and now - self.last_journaled.get(host, -1e9) >= self.JOURNAL_EVERY_S:
            if len(self.last_journaled) > 1024:
                self.last_journaled.clear()
            self.last_journaled[host] = now
            self.journal.event("modbus_refused", f"{host}@modbus", reason="not in line.modbus.allow")

    def callback_new_connection(self):
        return _GatedHandler(self, self.trace_packet, self.trace_pdu, self.trace_connect)
