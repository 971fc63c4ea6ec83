"""`lineside keys`: make key pairs. ``curve`` (CurveZMQ, for the runtime's sockets) is here;
other types register a generator in ``GENERATORS`` (``signing`` for bundles, ``tls`` for the
operator page's HTTPS and OPC UA's certificates)."""

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


def tls_pair(out: Path, name: str, hosts: list[str] | None = None, uri: str | None = None,
             days: int = 825) -> list[Path]:
    """NAME.cert.pem (self-signed, for commissioning) and NAME.key.pem (its private key, mode 0600).

    With ``uri`` (an OPC UA application URI) the key is RSA 2048, as Basic256Sha256 needs, and the
    certificate carries the URI and the key usages OPC UA checks; otherwise EC P-256 for HTTPS.
    """
    import datetime
    import ipaddress
    import socket

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    hosts = hosts or [socket.gethostname(), "localhost", "127.0.0.1"]
    key = rsa.generate_private_key(65537, 2048) if uri else ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    if uri:
        names.append(x509.UniformResourceIdentifier(uri))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"lineside {name}"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lineside (self-signed)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.SubjectAlternativeName(names), critical=False)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=bool(uri),
                                            key_encipherment=bool(uri), data_encipherment=bool(uri),
                                            key_agreement=False, key_cert_sign=False, crl_sign=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    cert = builder.sign(key, hashes.SHA256())
    # .pem in both names: asyncua (and other OPC UA stacks) read any other suffix as DER
    cert_path, key_path = out / f"{name}.cert.pem", out / f"{name}.key.pem"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # owner-only from the start
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return [cert_path, key_path]


GENERATORS: dict[str, Callable[..., list[Path]]] = {"curve": curve_pair, "signing": signing_pair, "tls": tls_pair}
DEFAULT_NAMES = {"tls": ["operator-page"]}
SUFFIXES = {"curve": (".key", ".key_secret"), "signing": (".key", ".pub"), "tls": (".pem",)}


def main(args) -> int:
    kind, names = args.type, list(args.names)
    if names and names[0] in GENERATORS and kind is None:  # `lineside keys tls --out DIR`
        kind, names = names[0], names[1:]
    kind = kind or "curve"
    generate = GENERATORS.get(kind)
    if generate is None:
        raise LinesideError(f"unknown key type {kind!r}: choose one of {', '.join(GENERATORS)}")
    names = names or DEFAULT_NAMES.get(kind, [])
    if not names:
        raise LinesideError(f"give the key names: lineside keys {kind} NAME... (e.g. server cam0)")
    extra, host, uri = {}, getattr(args, "host", None), getattr(args, "uri", None)
    if kind == "tls":
        extra = {"hosts": host or None, "uri": uri}
    elif host or uri:
        raise LinesideError("--host and --uri are for `lineside keys tls`")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        clash = [p for p in out.glob(f"{name}.*") if p.suffix in SUFFIXES[kind]]
        if clash and not args.force:
            raise LinesideError(f"{clash[0]} exists: pick another name, or --force to replace it")
        for path in generate(out, name, **extra):
            print(path)
    return 0
