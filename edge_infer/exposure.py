"""What a station exposes beyond this machine without protection: the loud warnings.

Every service binds to loopback unless the station config names an interface. A service
opened to a network without its security configured still starts (commissioning needs it),
but says so in `ctl health`, in the log at start, and on the operator page.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse


def is_loopback(host: str | None) -> bool:
    if host is None:
        return True
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or an interface (eth0, *): it reaches beyond this machine


def zmq_host(address: str) -> str | None:
    """The host part of a ZeroMQ endpoint; None for ipc:// and inproc:// (local only)."""
    scheme, _, rest = address.partition("://")
    if scheme != "tcp":
        return None
    host = rest.rsplit(":", 1)[0]
    return host.split(";")[-1]  # "tcp://src;dst:port" binds dst


def warnings(cfg) -> list[str]:
    """One line per service reachable beyond loopback without its security."""
    out = []
    open_sockets = [name for name, address in cfg.sockets.model_dump().items()
                    if not is_loopback(zmq_host(address))]
    if open_sockets and cfg.curve is None:
        out.append(f"ZeroMQ sockets {', '.join(open_sockets)} listen beyond loopback without Curve: anyone on that "
                   "network can send frames, read verdicts and control the station (add `curve:`)")
    if cfg.metrics_port and not is_loopback(cfg.metrics_host):
        out.append(f"metrics on {cfg.metrics_host}:{cfg.metrics_port} are readable by anyone on that network")
    line = cfg.line
    if line is None:
        return out
    if line.modbus and not is_loopback(line.modbus.host) and not line.modbus.allow:
        out.append(f"Modbus on {line.modbus.host}:{line.modbus.port} accepts any client: set line.modbus.allow "
                   "to the PLC's address and keep it on an isolated cell network")
    if line.opcua and not is_loopback(urlparse(line.opcua.endpoint).hostname) and line.opcua.security is None:
        out.append(f"OPC UA at {line.opcua.endpoint} has no security: anyone on that network can call its "
                   "methods (add line.opcua.security)")
    page = line.operator_page
    if page and not is_loopback(page.host):
        missing = [what for what, ok in (("users (security.users)", cfg.security is not None),
                                         ("TLS (tls_cert)", page.tls_cert is not None)) if not ok]
        if missing:
            out.append(f"the operator page on {page.host}:{page.port} is open to the network without "
                       f"{' and '.join(missing)}")
    return out
