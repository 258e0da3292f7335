"""The serving probe (first completion + bounded load test) over real HTTP against the stand-in engine."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from gpuinfra.assets import serving_probe

from tests.rigs import standin_engine


@pytest.fixture(scope="module")
def engine():
    args = standin_engine.parser().parse_args(["serve", "/models/x", "--host", "127.0.0.1", "--port", "0",
                                               "--served-model-name", "tiny"])
    server = standin_engine.Engine(args)
    server.ready.set()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()


def probe(*argv: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, serving_probe.__file__, *argv], capture_output=True, text=True,
                          timeout=120)
    assert done.stderr == ""
    return done.returncode, json.loads(done.stdout)


def test_first_completion_records_time_to_first_token(engine):
    url, _ = engine
    code, result = probe("first", url, "tiny", "--max-tokens", "16")
    assert code == 0 and result["ok"] and result["output_tokens"] == 16
    assert 0 < result["ttft_s"] < result["e2e_s"]
    assert result["text"].startswith("You are checking")


def test_first_completion_against_a_wrong_model_fails_with_the_servers_answer(engine):
    url, _ = engine
    code, result = probe("first", url, "not-served")
    assert code == 1 and not result["ok"] and result["error"].startswith("HTTP 404")


def test_nothing_listening_is_a_clean_failure():
    code, result = probe("first", "http://127.0.0.1:9", "tiny", "--timeout", "2")
    assert code == 1 and "ConnectionRefusedError" in result["error"]


def test_load_test_reports_percentiles_and_meets_a_loose_sla(engine):
    url, server = engine
    sla = {"ttft_p99_s": 2.0, "e2e_p99_s": 30, "error_rate": 0.01, "min_output_tokens_per_s": 10}
    code, result = probe("load", url, "tiny", "--concurrency", "4", "--requests", "20", "--max-seconds", "60",
                         "--max-tokens", "8", "--sla", json.dumps(sla))
    assert code == 0 and result["passed"] and result["sla_misses"] == []
    assert result["requests"] == 20 and result["errors"] == 0 and result["output_tokens"] == 160
    assert result["ttft_p50_s"] <= result["ttft_p99_s"] <= result["latency_p99_s"]
    assert result["output_tokens_per_s"] > 10
    assert "vllm:e2e_request_latency_seconds_bucket" in server.metrics.render("tiny")


def test_load_test_misses_a_tight_sla_with_every_reason(engine):
    url, _ = engine
    sla = {"ttft_p99_s": 0.000001, "e2e_p99_s": 0.000001, "error_rate": 0.01, "min_output_tokens_per_s": 1e9}
    code, result = probe("load", url, "tiny", "--concurrency", "2", "--requests", "4", "--max-seconds", "30",
                         "--max-tokens", "4", "--sla", json.dumps(sla))
    assert code == 1 and not result["passed"]
    assert [m.split(" ")[1] for m in result["sla_misses"]] == ["time", "end-to-end", "tokens/s"]


def test_load_test_stops_at_its_time_bound(engine):
    url, _ = engine
    started = time.monotonic()
    code, result = probe("load", url, "tiny", "--concurrency", "2", "--requests", "100000", "--max-seconds", "1",
                         "--max-tokens", "4")
    assert code == 0 and 0 < result["requests"] < 100000
    assert time.monotonic() - started < 15


def test_load_test_counts_errors():
    summary = serving_probe.summarize([serving_probe.Sample(False, None, 0.1, 0, "HTTP 500: boom")] * 3
                                      + [serving_probe.Sample(True, 0.05, 0.2, 10)], wall_s=1.0, concurrency=2)
    assert summary["error_rate"] == 0.75 and summary["first_errors"] == ["HTTP 500: boom"]
    assert serving_probe.judge(summary, {"error_rate": 0.01}) == ["error rate 0.75 is above the SLA's 0.01"]
    assert serving_probe.judge(serving_probe.summarize([], 1.0, 1), {}) == ["no request succeeded"]


@pytest.mark.parametrize(("values", "pct", "expected"), [
    ([1.0], 99, 1.0), (list(range(1, 11)), 50, 5), (list(range(1, 11)), 99, 10), (list(range(1, 101)), 99, 99),
    ([], 50, None)])
def test_percentile_is_nearest_rank(values, pct, expected):
    assert serving_probe.percentile(values, pct) == expected


def test_wait_returns_once_healthy_and_times_out_otherwise(engine):
    url, server = engine
    code, result = probe("wait", url, "--timeout", "10")
    assert code == 0 and result["healthy"]
    server.ready.clear()
    try:
        code, result = probe("wait", url, "--timeout", "1")
    finally:
        server.ready.set()
    assert code == 1 and result["error"] == "not healthy after 1s: /health answered 503"
