"""STAND-IN for the vLLM server on hosts without a GPU (the test hosts, CI).

Installed on the test hosts as a wheel named `vllm` at the catalog's pinned version (from a local
find-links directory, in place of PyPI), it answers `vllm serve MODEL_DIR ...` the way the role uses it:

- the command line is parsed strictly, like vLLM's, so a flag the role invents fails the unit;
- MODEL_DIR must hold a config.json (vLLM fails the same way on a missing or half-staged model);
- multi-node: `--nnodes N --node-rank R --master-addr A --master-port P`, ranks > 0 run `--headless` and
  connect to the head, and the head answers /health only once every rank has joined;
- /health, /v1/models, /v1/completions (streamed or not, a token every few milliseconds), and /metrics with
  the vLLM metric names the alert rules use.

It generates no real text: tokens are words of the prompt, echoed. The arguments it was started with are
written to $STANDIN_STATE_DIR/args-rank<R>.json for the tests to read.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import socket
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

TOKEN_DELAY_S = 0.004
BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
           40.0, 80.0, float("inf"))


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="vllm")
    commands = root.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("model")
    serve.add_argument("--host", default="0.0.0.0")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name")
    for flag in ("--tensor-parallel-size", "--pipeline-parallel-size", "--data-parallel-size", "--max-model-len",
                 "--max-num-seqs", "--max-num-batched-tokens", "--nnodes", "--node-rank", "--master-port"):
        serve.add_argument(flag, type=int)
    serve.add_argument("--gpu-memory-utilization", type=float)
    serve.add_argument("--quantization")
    serve.add_argument("--kv-cache-dtype")
    serve.add_argument("--master-addr")
    serve.add_argument("--distributed-executor-backend", choices=["mp", "ray"])
    serve.add_argument("--enable-expert-parallel", action="store_true")
    serve.add_argument("--headless", action="store_true")
    serve.add_argument("--disable-log-requests", action="store_true")
    serve.add_argument("--trust-remote-code", action="store_true")
    return root


class Metrics:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.histograms = {"vllm:time_to_first_token_seconds": [0] * len(BUCKETS),
                           "vllm:e2e_request_latency_seconds": [0] * len(BUCKETS)}
        self.sums = dict.fromkeys(self.histograms, 0.0)
        self.http: dict[str, int] = {}
        self.tokens = 0

    def observe(self, name: str, value: float) -> None:
        with self.lock:
            self.sums[name] += value
            for index, bound in enumerate(BUCKETS):
                if value <= bound:
                    self.histograms[name][index] += 1

    def request(self, status: int) -> None:
        with self.lock:
            key = f"{status // 100}xx"
            self.http[key] = self.http.get(key, 0) + 1

    def render(self, model: str) -> str:
        lines = []
        with self.lock:
            for name, counts in self.histograms.items():
                lines.append(f"# TYPE {name} histogram")
                for bound, count in zip(BUCKETS, counts, strict=True):
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    lines.append(f'{name}_bucket{{model_name="{model}",le="{le}"}} {count}')
                lines.append(f'{name}_count{{model_name="{model}"}} {counts[-1]}')
                lines.append(f'{name}_sum{{model_name="{model}"}} {self.sums[name]}')
            lines.append("# TYPE vllm:generation_tokens_total counter")
            lines.append(f'vllm:generation_tokens_total{{model_name="{model}"}} {self.tokens}')
            lines.append("# TYPE http_requests_total counter")
            for status, count in sorted(self.http.items()):
                lines.append(f'http_requests_total{{handler="/v1/completions",method="POST",status="{status}"}} '
                             f"{count}")
        return "\n".join(lines) + "\n"


class Engine(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, args: argparse.Namespace):
        super().__init__((args.host, args.port), _Handler)
        self.args = args
        self.model = args.served_model_name or args.model
        self.metrics = Metrics()
        self.joined = 0
        self.ready = threading.Event()


class _Handler(BaseHTTPRequestHandler):
    server: Engine
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/health":
            self._send(200 if self.server.ready.is_set() else 503, b"")
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": self.server.model}]}).encode())
        elif self.path == "/metrics":
            self._send(200, self.server.metrics.render(self.server.model).encode(), "text/plain; version=0.0.4")
        else:
            self._send(404, b'{"detail": "Not Found"}')

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        try:
            body = json.loads(self.rfile.read(length))
        except ValueError:
            self._send(400, b'{"error": "invalid JSON"}')
            self.server.metrics.request(400)
            return
        if self.path != "/v1/completions" or body.get("model") != self.server.model:
            code = 404
            self._send(code, json.dumps({"error": f"The model `{body.get('model')}` does not exist."}).encode())
            self.server.metrics.request(code)
            return
        started = time.perf_counter()
        words = str(body.get("prompt", "")).split() or ["token"]
        count = int(body.get("max_tokens") or 16)
        tokens = [words[i % len(words)] + " " for i in range(count)]
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for index, token in enumerate(tokens):
                time.sleep(TOKEN_DELAY_S)
                if index == 0:
                    self.server.metrics.observe("vllm:time_to_first_token_seconds", time.perf_counter() - started)
                self._chunk({"choices": [{"index": 0, "text": token}]})
            if (body.get("stream_options") or {}).get("include_usage"):
                self._chunk({"choices": [], "usage": {"completion_tokens": len(tokens)}})
            self._chunk_raw(b"data: [DONE]\n\n")
            self._chunk_raw(b"")
        else:
            time.sleep(TOKEN_DELAY_S * len(tokens))
            self._send(200, json.dumps({"choices": [{"index": 0, "text": "".join(tokens)}],
                                        "usage": {"completion_tokens": len(tokens)}}).encode())
        self.server.metrics.observe("vllm:e2e_request_latency_seconds", time.perf_counter() - started)
        with self.server.metrics.lock:
            self.server.metrics.tokens += len(tokens)
        self.server.metrics.request(200)

    def _chunk(self, event: dict) -> None:
        self._chunk_raw(b"data: " + json.dumps(event).encode() + b"\n\n")

    def _chunk_raw(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def _rendezvous_head(engine: Engine, port: int, workers: int) -> None:
    listener = socket.create_server(("0.0.0.0", port))
    while engine.joined < workers:
        connection, address = listener.accept()
        rank = connection.recv(64).decode().strip()
        print(f"rank {rank} joined from {address[0]}", flush=True)
        engine.joined += 1
    print(f"all {workers + 1} nodes joined", flush=True)
    engine.ready.set()


def _join(args: argparse.Namespace) -> None:
    while True:
        try:
            with socket.create_connection((args.master_addr, args.master_port), timeout=5) as connection:
                connection.sendall(f"{args.node_rank}\n".encode())
            print(f"rank {args.node_rank} joined {args.master_addr}:{args.master_port}", flush=True)
            return
        except OSError as exc:
            print(f"rank {args.node_rank} waiting for {args.master_addr}:{args.master_port}: {exc}", flush=True)
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    print(f"STAND-IN vLLM serving {args.model} (no GPU, no real model)", flush=True)
    config = Path(args.model) / "config.json"
    if not config.is_file():
        print(f"ValueError: {args.model} is not a model directory: no config.json", file=sys.stderr, flush=True)
        return 1
    rank = args.node_rank or 0
    if state := os.environ.get("STANDIN_STATE_DIR"):
        Path(state).mkdir(parents=True, exist_ok=True)
        recorded = {"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items()
                                                  if k.startswith(("NCCL_", "FI_", "HF_", "VLLM_"))}}
        (Path(state) / f"args-rank{rank}.json").write_text(json.dumps(recorded))
    nodes = args.nnodes or 1
    if args.headless:
        _join(args)
        threading.Event().wait()
        return 0
    engine = Engine(args)
    if nodes > 1:
        threading.Thread(target=_rendezvous_head, args=(engine, args.master_port, nodes - 1), daemon=True).start()
    else:
        engine.ready.set()
    print(f"serving on {args.host}:{args.port}", flush=True)
    engine.serve_forever()
    return 0


# --- the wheel -----------------------------------------------------------------------------------------


def build_wheel(target: Path, version: str) -> Path:
    """A `vllm` wheel holding this module as vllm/_standin.py and a `vllm` console script."""
    name = f"vllm-{version}-py3-none-any.whl"
    dist = f"vllm-{version}.dist-info"
    files = {
        "vllm/__init__.py": f'"""STAND-IN vLLM for GPU-less test hosts."""\n__version__ = "{version}"\n',
        "vllm/_standin.py": Path(__file__).read_text(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n"
                            "Summary: STAND-IN for vLLM on GPU-less test hosts\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpuinfra-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{dist}/entry_points.txt": "[console_scripts]\nvllm = vllm._standin:main\n",
    }
    record = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as wheel:
        for path, text in files.items():
            data = text.encode()
            wheel.writestr(zipfile.ZipInfo(path, (2020, 1, 1, 0, 0, 0)), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append(f"{dist}/RECORD,,")
        wheel.writestr(zipfile.ZipInfo(f"{dist}/RECORD", (2020, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    target.mkdir(parents=True, exist_ok=True)
    (target / name).write_bytes(buffer.getvalue())
    return target / name


if __name__ == "__main__":
    sys.exit(main())
