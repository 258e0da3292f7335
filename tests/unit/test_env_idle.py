"""Idle detection: the rules on raw samples, then a real Prometheus (Debian's package, as the alert-rule tests
use) scraping the stand-in vLLM engine on loopback: idle after a quiet window, active while a request runs or
right after one was served, active when the metrics are stale or Prometheus is gone; and `env ls` / `env reap`
acting on it."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from gpuinfra.cli import main
from gpuinfra.environments.idle import Activity, Series, judge, probe

from tests.rigs import standin_engine

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = shutil.which("prometheus")
WINDOW = timedelta(seconds=12)
MAX_AGE = timedelta(seconds=4)
NOW = 1_000_000.0


def series(name: str, values: list[float], *, start: float = NOW - 20, step: float = 1.0) -> Series:
    return Series(name=name, labels={}, samples=[(start + i * step, v) for i, v in enumerate(values)])


def quiet(values: int = 21) -> tuple[list[Series], list[Series]]:
    return ([series("vllm:request_success_total", [5.0] * values)],
            [series("vllm:num_requests_running", [0.0] * values)])


def test_flat_counters_and_nothing_running_for_the_whole_window_is_idle():
    counters, running = quiet()
    assert judge(counters, running, WINDOW, NOW, MAX_AGE) == Activity(idle=True,
                                                                        reason="no request served or running for 12s")


@pytest.mark.parametrize("counters, running, reason", [
    ([], quiet()[1], "no request counter (vllm:request_success_total) in Prometheus: counted as active"),
    (quiet()[0], [], "no vllm:num_requests_running in Prometheus: counted as active"),
    ([series("vllm:request_success_total", [5.0] * 10)], quiet()[1], "is stale (last sample 11s ago)"),
    ([series("vllm:request_success_total", [5.0] * 5, start=NOW - 4)], quiet()[1], "covers 4s of the 12s idle window"),
    ([series("vllm:request_success_total", [5.0] * 15 + [6.0] * 6)], quiet()[1], "1 request(s) served within"),
    ([series("vllm:request_success_total", [5.0] * 15 + [0.0] * 6)], quiet()[1], "was reset within the last 12s"),
    (quiet()[0], [series("vllm:num_requests_running", [0.0] * 20 + [2.0])], "2 request(s) running within"),
])
def test_anything_short_of_knowing_it_is_quiet_counts_as_active(counters, running, reason):
    activity = judge(counters, running, WINDOW, NOW, MAX_AGE)
    assert not activity.idle and reason in activity.reason


def test_no_prometheus_or_an_unreachable_one_is_active():
    assert probe(None, WINDOW).reason == "no Prometheus known for this environment: counted as active"
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    activity = probe(f"http://127.0.0.1:{port}", WINDOW)
    assert not activity.idle and "did not answer" in activity.reason


# --- a real Prometheus scraping the stand-in engine --------------------------------------------------------


class RunningMetrics(standin_engine.Metrics):
    """The stand-in engine's metrics plus two series real vLLM exports and the shared stand-in does not:
    vllm:num_requests_running (a gauge) and vllm:request_success_total (a counter). Added here, not in
    tests/rigs/standin_engine.py, whose content keys the cached stand-in repositories of the host tests."""

    def __init__(self) -> None:
        super().__init__()
        self.running = 0
        self.succeeded = 0

    def render(self, model: str) -> str:
        with self.lock:
            running, succeeded = self.running, self.succeeded
        return super().render(model) + (
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{model}"}} {running}\n'
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{model_name="{model}",finished_reason="length"}} {succeeded}\n')


class CountingHandler(standin_engine._Handler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        metrics = self.server.metrics
        with metrics.lock:
            metrics.running += 1
        try:
            super().do_POST()
        finally:
            with metrics.lock:
                metrics.running -= 1
                metrics.succeeded += 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_with_running_metrics(port: int, model_dir: str) -> None:
    """The stand-in engine with RunningMetrics, in a process of its own (so that stopping it ends the
    keep-alive connections Prometheus scrapes through, as a server's death does)."""
    args = standin_engine.parser().parse_args(["serve", model_dir, "--host", "127.0.0.1", "--port", str(port),
                                               "--served-model-name", "m"])
    engine = standin_engine.Engine(args)
    engine.metrics = RunningMetrics()
    engine.RequestHandlerClass = CountingHandler
    engine.ready.set()
    engine.serve_forever()


class Scraped:
    """The extended stand-in engine and Prometheus, two processes on loopback, each stopped by its PID."""

    def __init__(self, work: Path) -> None:
        (work / "model").mkdir()
        (work / "model" / "config.json").write_text("{}")
        self.engine_port = free_port()
        self.engine = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.unit.test_env_idle import serve_with_running_metrics as s; "
                                   "s(int(sys.argv[1]), sys.argv[2])", str(self.engine_port), str(work / "model")],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n  - job_name: inference\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{self.engine_port}']\n")
        self.prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.wait_ready()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        for url in (f"{self.url}/-/ready", f"http://127.0.0.1:{self.engine_port}/health"):
            while True:
                try:
                    with urllib.request.urlopen(url, timeout=2) as reply:
                        if reply.status == 200:
                            break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{url} did not answer in 60 s") from None
                    time.sleep(0.5)

    def complete(self, max_tokens: int = 4) -> None:
        body = json.dumps({"model": "m", "prompt": "hello there", "max_tokens": max_tokens, "stream": True}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{self.engine_port}/v1/completions", data=body,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as reply:
            reply.read()

    def stop_engine(self) -> None:
        if self.engine.poll() is None:
            self.engine.terminate()
            self.engine.wait(timeout=30)

    def close(self) -> None:
        self.stop_engine()
        self.prometheus.terminate()
        self.prometheus.wait(timeout=30)


@pytest.fixture
def scraped(tmp_path):
    if PROMETHEUS is None:
        pytest.skip("scripts/bootstrap.sh installs Debian's prometheus package")
    rig = Scraped(tmp_path)
    try:
        yield rig
    finally:
        rig.close()


def until(condition, timeout: float = 30.0):
    """Poll a probe until CONDITION holds (bounded); returns the last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        verdict = condition()
        if verdict[0] or time.monotonic() > deadline:
            return verdict[1]
        time.sleep(1)


@pytest.mark.slow
def test_a_real_prometheus_scraping_the_standin_engine(scraped):
    def idle_verdict():
        activity = probe(scraped.url, WINDOW, max_sample_age=MAX_AGE)
        return activity.idle, activity

    # A fresh scrape does not cover the window yet: active until it does, then idle (nothing was asked).
    first = probe(scraped.url, WINDOW, max_sample_age=MAX_AGE)
    assert not first.idle and ("covers" in first.reason or "no request counter" in first.reason)
    assert until(idle_verdict, timeout=40).idle
    scraped.complete()
    served = until(lambda: (not probe(scraped.url, WINDOW, max_sample_age=MAX_AGE).idle,
                            probe(scraped.url, WINDOW, max_sample_age=MAX_AGE)))
    assert "request(s) served within the last 12s" in served.reason or "running" in served.reason
    slow = threading.Thread(target=scraped.complete, kwargs={"max_tokens": 1500})  # about 6 s of tokens
    slow.start()

    def running_verdict():
        activity = probe(scraped.url, WINDOW, max_sample_age=MAX_AGE)
        return "running" in activity.reason, activity

    assert "1 request(s) running within the last 12s" in until(running_verdict, timeout=10).reason
    slow.join(timeout=60)
    assert until(idle_verdict, timeout=40).idle  # quiet for a whole window again
    scraped.stop_engine()

    def stale_verdict():
        activity = probe(scraped.url, WINDOW, max_sample_age=MAX_AGE)
        return "stale" in activity.reason, activity

    stale = until(stale_verdict, timeout=20)
    assert not stale.idle and "stale" in stale.reason


@pytest.mark.slow
def test_env_ls_and_reap_act_on_idleness(scraped, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUINFRA_BACKEND", f"file://{tmp_path / 'state'}")
    monkeypatch.setenv("GPUINFRA_ENGINE", "standin")
    monkeypatch.setenv("GPUINFRA_HOME", str(tmp_path / "home"))

    def env(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(["env", *argv], out=out), out.getvalue()

    assert env("up", "dev-7b", "--name", "quiet", "--idle-after", "12s", "--prometheus", scraped.url)[0] == 0
    assert env("up", "dev-7b", "--name", "no-idle", "--idle-after", "off", "--prometheus", scraped.url)[0] == 0

    def state():
        rows = {row["name"]: row for row in json.loads(env("ls", "--json")[1])}
        return rows["quiet"]["state"] == "idle", rows

    rows = until(state, timeout=40)
    assert rows["quiet"]["state"] == "idle" and rows["quiet"]["reason"] == "no request served or running for 12s"
    assert rows["no-idle"]["state"] == "ready" and rows["no-idle"]["reason"] == "idle detection off"
    scraped.complete()
    time.sleep(2.5)  # two scrapes
    rc, out = env("reap", "--yes")
    assert rc == 0 and "reap keep quiet:" in out and "request(s) served within the last 12s" in out
    rows = until(state, timeout=40)
    rc, out = env("reap", "--yes")
    assert rc == 0 and "reap destroy quiet: idle: no request served or running for 12s (limit 12s)" in out
    assert [row["name"] for row in json.loads(env("ls", "--json")[1])] == ["no-idle"]
