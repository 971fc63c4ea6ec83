"""Loopback networking for tests: a free port, and a TCP pass-through a test cuts like a network outage."""

from __future__ import annotations

import socket
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TcpProxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:upstream_port, until the test breaks the link.

    `drop()` resets every open connection and keeps accepting new ones (a blip);
    `cut()` also stops listening, so new connections are refused as when the server is away;
    `restore()` listens again on the same port.
    """

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.lock, self.sockets, self.listening = threading.Lock(), [], None
        self.port = 0  # the first listen picks a free port; restore() reuses it
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        server.settimeout(0.1)  # the accept loop polls, so cut() stops it without waiting on a blocked accept
        self.port = server.getsockname()[1]
        self.listening = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def drop(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            _shut(s)  # wakes the pumps blocked in recv; close() alone would not
            s.close()

    def cut(self) -> None:
        server, self.listening = self.listening, None
        if server is not None:  # cut twice (a test's cleanup after a failure) is fine
            server.close()
        self.drop()

    close = cut

    def _accept(self, server: socket.socket) -> None:
        while self.listening is server:
            try:
                near, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            near.settimeout(None)
            try:
                far = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:  # the server itself is down: the client sees its connection closed
                near.close()
                continue
            with self.lock:
                self.sockets += [near, far]
            for src, dst in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        _shut(src)
        _shut(dst)


def _shut(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
