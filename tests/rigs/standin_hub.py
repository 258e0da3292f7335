"""STAND-IN for the Hugging Face hub (huggingface.co is not reachable from CI or the test hosts).

Serves the files of a local directory as every repository it is asked for, through the two endpoints the
weight stager uses: `/api/models/{org}/{repo}/tree/{revision}?recursive=true` (paginated with a Link
header, LFS entries carrying their SHA-256) and `/{org}/{repo}/resolve/{revision}/{path}` (byte ranges,
206). It can demand a token, and can cut a transfer short once per file to exercise resumption.

    python -m tests.rigs.standin_hub DIR --host 10.77.0.1 --port 8765 [--token T] [--cut-after BYTES]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_FROM_BYTES = 1024
PAGE = 2


_HASHES: dict[tuple[str, int, int], tuple[str, str]] = {}
_HASHES_LOCK = threading.Lock()


def _hashes(path: Path) -> tuple[str, str]:
    """(git blob SHA-1, SHA-256) of a file, computed once per content version (path, size, mtime)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    with _HASHES_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    blob = hashlib.sha1(f"blob {stat.st_size}\0".encode(), usedforsecurity=False)
    sha256 = hashlib.sha256()
    with path.open("rb") as handle:
        while data := handle.read(1 << 22):
            blob.update(data)
            sha256.update(data)
    with _HASHES_LOCK:
        _HASHES[key] = (blob.hexdigest(), sha256.hexdigest())
    return _HASHES[key]


def tree_entries(root: Path) -> list[dict]:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        size = path.stat().st_size
        blob, sha256 = _hashes(path)
        entry = {"type": "file", "path": path.relative_to(root).as_posix(), "size": size, "oid": blob}
        if size >= LFS_FROM_BYTES:
            entry["lfs"] = {"oid": sha256, "size": size, "pointerSize": 134}
        entries.append(entry)
    return entries


class StandinHub(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, address: tuple[str, int] = ("127.0.0.1", 0), *, token: str | None = None,
                 cut_after: int | None = None):
        super().__init__(address, _Handler)
        self.root, self.token, self.cut_after = root, token, cut_after
        self.requests: list[tuple[str, str]] = []  # (path, Range header)
        self.cut: set[str] = set()
        self.corrupt: set[str] = set()  # paths served with one byte flipped
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> StandinHub:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class _Handler(BaseHTTPRequestHandler):
    server: StandinHub

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        with self.server.lock:
            self.server.requests.append((self.path, self.headers.get("Range", "")))
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._send(401, b'{"error": "Invalid credentials"}')
            return
        parsed = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            self._tree(parsed.query)
        elif len(parts) >= 5 and parts[2] == "resolve":
            self._resolve("/".join(parts[4:]))
        else:
            self._send(404, b'{"error": "not found"}')

    def _tree(self, query: str) -> None:
        entries = tree_entries(self.server.root)
        cursor = int(urllib.parse.parse_qs(query).get("cursor", ["0"])[0])
        page = entries[cursor:cursor + PAGE]
        headers = {}
        if cursor + PAGE < len(entries):
            base = self.path.split("?")[0]
            headers["Link"] = f'<{self.server.url}{base}?recursive=true&cursor={cursor + PAGE}>; rel="next"'
        self._send(200, json.dumps(page).encode(), headers)

    def _resolve(self, relative: str) -> None:
        path = (self.server.root / relative).resolve()
        if not path.is_file() or self.server.root.resolve() not in path.parents:
            self._send(404, b"Entry not found")
            return
        size = path.stat().st_size
        start = 0
        if (ranged := self.headers.get("Range", "")).startswith("bytes="):
            start = int(ranged[len("bytes="):].split("-")[0])
        length = size - start
        cut = self.server.cut_after
        with self.server.lock:
            cut_now = cut is not None and relative not in self.server.cut and length > cut
            if cut_now:
                self.server.cut.add(relative)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(length))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        to_send = cut if cut_now else length
        with path.open("rb") as handle:
            handle.seek(start)
            first = start == 0 and relative in self.server.corrupt
            while to_send > 0 and (data := handle.read(min(1 << 20, to_send))):
                if first:
                    data, first = bytes([data[0] ^ 0xFF]) + data[1:], False
                self.wfile.write(data)
                to_send -= len(data)
        if cut_now:
            self.wfile.flush()
            self.close_connection = True

    def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token")
    parser.add_argument("--cut-after", type=int)
    args = parser.parse_args()
    StandinHub(args.root, (args.host, args.port), token=args.token, cut_after=args.cut_after).serve_forever()


if __name__ == "__main__":
    main()
