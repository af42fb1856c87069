"""A local server with the Hugging Face Hub's URL layout, for the real client to pull from."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


class FakeHub:
    """The Hugging Face Hub's URL layout for one small repository, served on 127.0.0.1.

    It answers what the real `huggingface_hub` client asks: the revision info with LFS
    sha256 (`/api/models/{repo}/revision/{rev}`), the recursive tree listing, and file
    downloads (`/{repo}/resolve/{rev}/{path}`) with X-Repo-Commit, ETag, X-Linked-Etag,
    X-Linked-Size and Content-Length, including byte ranges. Faults can be switched on.
    """

    repo = "raylm-test/tiny-model"
    commit = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self) -> None:
        weights = os.urandom(3 * 1024 * 1024 + 11)
        self.files: dict[str, bytes] = {
            "config.json": b'{"model_type": "llama", "num_attention_heads": 4}\n',
            "tokenizer.json": b'{"version": "1.0"}\n',
            "model-00001-of-00002.safetensors": weights,
            "model-00002-of-00002.safetensors": os.urandom(1024 * 1024 + 5),
            "extra/notes.bin": os.urandom(70_000),
        }
        self.lfs = {p for p in self.files if p.endswith((".safetensors", ".bin"))}
        self.sha256 = {p: hashlib.sha256(b).hexdigest() for p, b in self.files.items()}
        self.blob = {
            p: hashlib.sha1(b"blob %d\0" % len(b) + b, usedforsecurity=False).hexdigest()
            for p, b in self.files.items()
        }
        self.served: list[tuple[str, str, str]] = []  # (method, path, Range header)
        self.corrupt: str | None = None  # serve this file with one byte changed
        self.broken: str | None = None  # drop the connection when this file is asked for
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def downloads(self, path: str) -> list[str]:
        """Range headers of the GET requests of `path` (empty string: no Range)."""
        return [r for m, p, r in self.served if m == "GET" and p == path]

    def _sibling(self, p: str) -> dict[str, Any]:
        d: dict[str, Any] = {"rfilename": p, "size": len(self.files[p]), "blobId": self.blob[p]}
        if p in self.lfs:
            d["lfs"] = {"size": len(self.files[p]), "sha256": self.sha256[p], "pointerSize": 130}
        return d

    def _tree_entry(self, p: str) -> dict[str, Any]:
        d: dict[str, Any] = {"type": "file", "path": p, "size": len(self.files[p])}
        d["oid"] = self.blob[p]
        if p in self.lfs:
            d["lfs"] = {"oid": self.sha256[p], "size": len(self.files[p]), "pointerSize": 130}
        return d

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _json(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                path = unquote(url.path)
                rng = self.headers.get("Range", "")
                with hub.lock:
                    hub.served.append((self.command, path, rng))
                api = f"/api/models/{hub.repo}"
                if path.startswith("/api/models/") and not path.startswith(api):
                    self._json(
                        404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
                    )
                elif path == api or path.startswith(api + "/revision/"):
                    rev = path[len(api + "/revision/") :] if path != api else "main"
                    if rev not in ("main", hub.commit):
                        self._json(404, {"error": "nope"}, {"X-Error-Code": "RevisionNotFound"})
                        return
                    body = {
                        "id": hub.repo,
                        "modelId": hub.repo,
                        "sha": hub.commit,
                        "private": False,
                        "siblings": [hub._sibling(p) for p in sorted(hub.files)],
                    }
                    self._json(200, body)
                elif path.startswith(api + "/tree/"):
                    self._json(200, [hub._tree_entry(p) for p in sorted(hub.files)])
                elif path.startswith(f"/{hub.repo}/resolve/"):
                    rev, _, rel = path[len(f"/{hub.repo}/resolve/") :].partition("/")
                    if rev not in ("main", hub.commit) or rel not in hub.files:
                        self._json(
                            404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}
                        )
                        return
                    self._file(rel, rng)
                else:
                    self._json(404, {"error": "not found"})

            def _file(self, rel: str, rng: str) -> None:
                data = hub.files[rel]
                if hub.corrupt == rel:
                    data = data[:100] + bytes([data[100] ^ 1]) + data[101:]
                etag = hub.sha256[rel] if rel in hub.lfs else hub.blob[rel]
                start = int(rng.split("=")[1].split("-")[0]) if rng.startswith("bytes=") else 0
                self.send_response(206 if start else 200)
                self.send_header("X-Repo-Commit", hub.commit)
                self.send_header("ETag", f'"{etag}"')
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.send_header("Content-Length", str(len(data) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if hub.broken == rel:  # half the body, then the connection drops
                    self.wfile.write(data[start : start + (len(data) - start) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(data[start:])

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
