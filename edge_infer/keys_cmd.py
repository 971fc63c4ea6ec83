"""`lineside keys`: make key pairs. ``curve`` (CurveZMQ, for the runtime's sockets) is here;
other types register a generator in ``GENERATORS`` (e.g. ``signing`` for bundles)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .errors import LinesideError


def curve_pair(out: Path, name: str) -> list[Path]:
    """NAME.key (public: give it to the other side) and NAME.key_secret (keep it here, mode 0600)."""
    import zmq
    import zmq.auth

    if not zmq.has("curve"):
        raise LinesideError("this libzmq has no CurveZMQ support: install pyzmq from its wheels (they bundle it)")
    old = os.umask(0o077)  # the secret is never readable by others, not even for a moment
    try:
        public, secret = zmq.auth.create_certificates(out, name)
    finally:
        os.umask(old)
    os.chmod(public, 0o644)  # the public half is meant to be copied around
    return [Path(public), Path(secret)]


def signing_pair(out: Path, name: str) -> list[Path]:
    """NAME.sign.key (Ed25519, keep it on the host that packs bundles, 0600) and NAME.sign.pub (for devices)."""
    from .signing import generate_keypair

    return list(generate_keypair(out, name))


GENERATORS: dict[str, Callable[[Path, str], list[Path]]] = {"curve": curve_pair, "signing": signing_pair}


def main(args) -> int:
    generate = GENERATORS.get(args.type)
    if generate is None:
        raise LinesideError(f"unknown key type {args.type!r}: choose one of {', '.join(GENERATORS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.names:
        clash = [p for p in out.glob(f"{name}.*") if p.suffix in (".key", ".key_secret")]
        if clash and not args.force:
            raise LinesideError(f"{clash[0]} exists: pick another name, or --force to replace it")
        for path in generate(out, name):
            print(path)
    return 0
