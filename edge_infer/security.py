"""CurveZMQ on the runtime's sockets: the server side (with pyzmq's authenticator) and clients.

Key files are ZeroMQ certificates as `lineside keys` (zmq.auth.create_certificates) writes
them: ``NAME.key`` holds the public key, ``NAME.key_secret`` the pair. The server accepts
only clients whose public ``*.key`` lies in its ``authorized_clients`` folder; any other
client's handshake fails, so it receives nothing and can send nothing.
"""

from __future__ import annotations

from pathlib import Path

import zmq

from .errors import LinesideError


def load_key_pair(path: str | Path) -> tuple[bytes, bytes]:
    public, secret = _load(path)
    if secret is None:
        raise LinesideError(f"{path} holds only a public key; give the NAME.key_secret file of `lineside keys`")
    return public, secret


def load_public_key(path: str | Path) -> bytes:
    return _load(path)[0]


def _load(path: str | Path):
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise LinesideError(f"Curve key file {path} does not exist: make keys with `lineside keys --out DIR NAME`")
    try:
        return zmq.auth.load_certificate(path)
    except Exception as exc:  # pyzmq raises ValueError / OSError for a bad certificate
        raise LinesideError(f"{path} is not a ZeroMQ Curve certificate ({exc}): "
                            "make one with `lineside keys`") from None


def start_authenticator(ctx: zmq.Context, authorized_clients: str | Path):
    """Start the ZAP handler that admits only the clients whose public keys lie in the folder."""
    from zmq.auth.thread import ThreadAuthenticator

    folder = Path(authorized_clients)
    if not folder.is_dir() or not any(folder.glob("*.key")):
        raise LinesideError(f"Curve: authorized_clients {folder} holds no public *.key files; copy each camera's, "
                            "watcher's and controller's NAME.key there")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(folder))
    return auth


def secure_server(sock: zmq.Socket, server_secret_key: str | Path) -> None:
    public, secret = load_key_pair(server_secret_key)
    sock.curve_publickey, sock.curve_secretkey = public, secret
    sock.curve_server = True


def secure_client(sock: zmq.Socket, server_key: str | Path | None, client_key: str | Path | None) -> None:
    """Make ``sock`` a Curve client, when keys are given (both or neither)."""
    if server_key is None and client_key is None:
        return
    if server_key is None or client_key is None:
        raise LinesideError("Curve needs both --server-key (the server's public NAME.key) and "
                            "--client-key (this client's NAME.key_secret)")
    public, secret = load_key_pair(client_key)
    sock.curve_serverkey = load_public_key(server_key)
    sock.curve_publickey, sock.curve_secretkey = public, secret

