"""A stand-in for `lineside serve` until the runtime's server is on main: the smallest service
that honours the control contract flashing relies on.

`serve` reads ROOT/current's manifest (the flash already verified and smoke-ran the bundle;
loading ONNX Runtime here again would only slow the tests), then answers {"cmd": "health"} on a ZeroMQ REP socket with
{"ok": true, "status": "ready", "station": ..., "bundle": {...}}, whose backend and precision
are those of the newest engine built in the bundle (what `precision: auto` runs), else
ort-cpu at fp32. `restart` is what a test
target uses as its service manager: it stops the running double (pid file) and starts a new
one detached, as `systemctl restart` would. `--refuse-version V` makes the service crash at
start when the bundle's model version is V: the "new version does not come up" case.
`restart --real` starts the real `lineside serve ROOT/current/station.yaml` instead.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def serve(root: Path, control: str, refuse_version: str | None) -> int:
    import zmq

    station = (root / "station").read_text().strip()
    version = json.loads((root / "current" / "manifest.json").read_text())["model"]["version"]
    if version == refuse_version:
        print(f"simulated crash at start for version {version}", file=sys.stderr)
        return 1
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(control)
    # Exit at once on SIGTERM: nothing to flush, and an open socket would block a normal exit.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    info = {"id": Path(os.path.realpath(root / "current")).name, "version": version,
            "path": os.path.realpath(root / "current"), "backend": "ort-cpu", "precision": "fp32"}
    from edge_infer.backends.engine_meta import built_engines

    for engine in built_engines(root / "current")[:1]:
        info.update(backend=engine["backend"], precision=engine["precision"])
    while True:
        if not sock.poll(200):  # wake up now and then so a SIGTERM is acted on promptly
            continue
        msg = sock.recv_json()
        if msg.get("cmd") == "health":
            sock.send_json({"ok": True, "status": "ready", "station": station, "bundle": info})
        else:
            sock.send_json({"ok": False, "error": f"unknown command {msg.get('cmd')!r}"})


def restart(root: Path, control: str, refuse_version: str | None, real: bool = False) -> int:
    pid_file = root / "service.pid"
    if pid_file.is_file():
        stop(int(pid_file.read_text()))
    cmd = [sys.executable, __file__, "serve", "--root", str(root), "--control", control]
    if refuse_version:
        cmd += ["--refuse-version", refuse_version]
    if real:
        cmd = [sys.executable, "-m", "lineside", "serve", str(root / "current" / "station.yaml")]
    with open(root / "service.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pid_file.write_text(str(proc.pid))
    return 0


def stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):  # wait for the port to be free again
        try:
            os.kill(pid, 0)
            if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z":
                return
        except (ProcessLookupError, FileNotFoundError):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["serve", "restart"])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--control", default="")
    p.add_argument("--refuse-version")
    p.add_argument("--real", action="store_true", help="restart: run the real `lineside serve`")
    a = p.parse_args()
    if a.cmd == "serve":
        return serve(a.root, a.control, a.refuse_version)
    return restart(a.root, a.control, a.refuse_version, a.real)


if __name__ == "__main__":
    sys.exit(main())
