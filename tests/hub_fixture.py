"""A loopback HTTP server that answers like the Hugging Face hub's file endpoints (HEAD/GET .../resolve/...).

It stands in for HF_ENDPOINT in tests: nothing downloads from the internet. ``files`` maps
(repo, revision, filename) to the bytes served; ``etags`` may give an ETag that is not the sha256 of
the bytes, to serve a corrupted download. Every request path is kept in ``requests``.
"""

from __future__ import annotations

import hashlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")


class Hub:
    def __init__(self):
        self.files: dict[tuple[str, str, str], bytes] = {}
        self.etags: dict[tuple[str, str, str], str] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool):
                hub.requests.append(f"{self.command} {self.path}")
                m = RESOLVE.match(self.path.split("?")[0])
                key = (m["repo"], m["revision"], m["filename"]) if m else None
                if key not in hub.files:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = hub.files[key]
                etag = hub.etags.get(key) or hashlib.sha256(data).hexdigest()
                self.send_response(200)
                self.send_header("X-Repo-Commit", m["revision"])
                self.send_header("ETag", f'"{etag}"')
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if body:
                    self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
