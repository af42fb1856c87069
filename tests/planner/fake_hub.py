"""A stand-in for the Hugging Face hub on 127.0.0.1: its file URL layout, nothing more.

The real hub cannot be reached from CI; the real `huggingface_hub` client is pointed at
this server through HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@contextmanager
def fake_hub(repos: dict[str, dict[str, bytes]]) -> Iterator[str]:
    """Serve `{repo_id: {filename: content}}` at /{repo}/resolve/{rev}/{file}; yields the URL."""

    class Handler(BaseHTTPRequestHandler):
        def _lookup(self) -> bytes | None:
            path = self.path.split("?", 1)[0].lstrip("/")
            if "/resolve/" not in path:
                return None
            repo, rest = path.split("/resolve/", 1)
            filename = rest.split("/", 1)[1] if "/" in rest else ""
            return repos.get(repo, {}).get(filename)

        def _headers(self, body: bytes | None) -> None:
            if body is None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("ETag", '"' + hashlib.sha1(body).hexdigest() + '"')
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_HEAD(self) -> None:
            self._headers(self._lookup())

        def do_GET(self) -> None:
            body = self._lookup()
            self._headers(body)
            if body is not None:
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
