"""The device side of flashing: run ON the device as `python -m deploy_jetson.device ...`.

The host drives a flash one small step at a time through these subcommands (over SSH,
or a local shell for `local:` targets), so each step either completes or leaves the
device as it was. The steps live in `device_layout` (the device root: state, links,
provisioning), `device_bundles` (upload, install, remove, prune) and `device_health`
(health, last verdict, built engines); each imports only what its own step needs.

Every subcommand prints one JSON object on success; on failure it prints the reason on
stderr and exits 2.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from edge_infer.errors import LinesideError

from .device_bundles import install, prune, remove, upload_commit, upload_join, upload_state
from .device_health import HEALTH_KEY, engines, expect_built_engine, health_endpoint, last_verdict, wait_healthy
from .device_layout import provision, restore, rollback, state, switch

BUNDLE_ID = r"[0-9a-f]{12}"  # edge_infer.signing.bundle_id
TAR_NAME = r"[0-9a-f]{64}\.tar"


def _checked(value: str, pattern: str, what: str) -> str:
    # Names from the host become paths here: never let one climb out of the device root.
    if not re.fullmatch(pattern, value):
        raise LinesideError(f"{value!r} is not a valid {what}")
    return value


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy_jetson.device", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("state", "rollback", "last-verdict"):
        sub.add_parser(name).add_argument("root", type=Path)
    for name, extra in (("upload-state", ["name"]), ("upload-commit", ["name", "sha256"]),
                        ("upload-join", ["name", "sha256"]),
                        ("install", ["tar"]), ("switch", ["id"]), ("remove", ["id"]), ("engines", ["id"]),
                        ("restore", ["current", "previous"])):
        s = sub.add_parser(name)
        s.add_argument("root", type=Path)
        for arg in extra:
            s.add_argument(arg)
    sub.choices["install"].add_argument("--smoke", action="store_true")
    s = sub.add_parser("prune")
    s.add_argument("root", type=Path)
    s.add_argument("--keep", type=int, default=3)
    s = sub.add_parser("provision")
    s.add_argument("root", type=Path)
    s.add_argument("--station")
    s.add_argument("--key-name", help="install the Ed25519 public key read from stdin under this name")
    s = sub.add_parser("health")
    s.add_argument("--root", type=Path, help="ask the service of ROOT/current (address from its station config)")
    s.add_argument("--address", help="the control socket address (overrides the station config)")
    s.add_argument("--timeout", type=float, default=60)
    s.add_argument("--station")
    s.add_argument("--old-bundle", help="answers that still name this bundle id do not count")
    s.add_argument("--client-key", help=f"CurveZMQ: this check's NAME.key_secret (default: ROOT/{HEALTH_KEY})")
    s.add_argument("--expect-engine", action="store_true",
                   help="with --root: fail unless the service runs the engine built for ROOT/current")
    args = p.parse_args(argv)
    try:
        print(json.dumps(_dispatch(args)))
        return 0
    except LinesideError as exc:
        print(str(exc), file=sys.stderr)
        return 2


def _dispatch(args) -> dict:
    cmd = args.cmd
    if getattr(args, "id", None) is not None:
        _checked(args.id, BUNDLE_ID, "bundle id")
    for name in ("current", "previous"):
        if getattr(args, name, "-") != "-":
            _checked(getattr(args, name), BUNDLE_ID, "bundle id")
    for name in ("name", "tar"):
        if getattr(args, name, None) is not None:
            _checked(getattr(args, name), TAR_NAME, "bundle tar name")
    if getattr(args, "key_name", None) is not None:
        _checked(args.key_name, r"[A-Za-z0-9_.-]{1,64}", "key name")
    if cmd == "health":
        if not (args.address or args.root):
            raise LinesideError("health needs --root ROOT or --address ADDR")
        address, curve = health_endpoint(args)
        answer = wait_healthy(address, args.timeout, args.station, args.old_bundle, curve=curve)
        return expect_built_engine(args.root, answer) if args.expect_engine and args.root else answer
    root = args.root
    if cmd == "state":
        return state(root)
    if cmd == "last-verdict":
        return last_verdict(root)
    if cmd == "upload-state":
        return upload_state(root, args.name)
    if cmd == "upload-commit":
        return upload_commit(root, args.name, args.sha256)
    if cmd == "upload-join":
        return upload_join(root, args.name, args.sha256)
    if cmd == "install":
        return install(root, args.tar, args.smoke)
    if cmd == "engines":
        return engines(root, args.id)
    if cmd == "switch":
        return switch(root, args.id)
    if cmd == "restore":
        return restore(root, None if args.current == "-" else args.current,
                       None if args.previous == "-" else args.previous)
    if cmd == "rollback":
        return rollback(root)
    if cmd == "remove":
        return remove(root, args.id)
    if cmd == "prune":
        return prune(root, args.keep)
    if cmd == "provision":
        return provision(root, args.station, args.key_name, sys.stdin.buffer.read() if args.key_name else b"")
    raise AssertionError(cmd)


if __name__ == "__main__":
    sys.exit(main())
