#!/usr/bin/env python3
"""Talk to an OpenAI-compatible inference server (vLLM, SGLang) the way a client does, and measure it.

    serving_probe.py wait URL --timeout S [--unit NAME]
        polls URL/health until it answers 200; with --unit, gives up as soon as the systemd unit has failed
        or restarted (a crash loop is not worth waiting out)
    serving_probe.py first URL MODEL [--max-tokens N] [--timeout S]
        one streamed completion: time to first token, end-to-end latency, output tokens
    serving_probe.py load URL MODEL --concurrency C --requests N --max-seconds T [--sla JSON]
        a bounded load test: stops after N requests or T seconds, whichever comes first; P50/P99 latency and
        time to first token, output tokens/s, error rate, and a verdict against the SLA when one is given

Prints one JSON object. Exit 0 on success (and the SLA met), 1 when the server failed or the SLA was missed,
2 on bad usage. Standard library only: it runs with the node's system Python.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass

PROMPT = ("You are checking that an inference server is ready. Count from one to ten in words, then name the "
          "capital of France.")


@dataclass
class Sample:
    ok: bool
    ttft_s: float | None
    e2e_s: float
    output_tokens: int
    error: str = ""
    text: str = ""


def stream_completion(base_url: str, model: str, *, max_tokens: int, timeout: float, prompt: str = PROMPT,
                      ignore_eos: bool = False) -> Sample:
    """One streamed /v1/completions request, timed from the first byte sent to the last token received."""
    url = urllib.parse.urlsplit(base_url)
    connection_type = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    if ignore_eos:
        body["ignore_eos"] = True  # vLLM and SGLang: fixed output lengths make load figures comparable
    started = time.perf_counter()
    ttft, chunks, usage_tokens, pieces = None, 0, None, []
    connection = connection_type(url.hostname, url.port, timeout=timeout)
    try:
        connection.request("POST", url.path.rstrip("/") + "/v1/completions", json.dumps(body),
                           {"Content-Type": "application/json", "Accept": "text/event-stream"})
        response = connection.getresponse()
        if response.status != 200:
            detail = response.read(500).decode(errors="replace").strip()
            return Sample(False, None, time.perf_counter() - started, 0, f"HTTP {response.status}: {detail}")
        for raw in response:
            line = raw.decode(errors="replace").strip()
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            if event.get("usage"):
                usage_tokens = event["usage"].get("completion_tokens")
            for choice in event.get("choices") or []:
                if choice.get("text"):
                    if ttft is None:
                        ttft = time.perf_counter() - started
                    chunks += 1
                    pieces.append(choice["text"])
    except (OSError, http.client.HTTPException, ValueError) as exc:
        return Sample(False, ttft, time.perf_counter() - started, chunks, f"{type(exc).__name__}: {exc}")
    finally:
        connection.close()
    elapsed = time.perf_counter() - started
    if ttft is None:
        return Sample(False, None, elapsed, 0, "the stream ended without a token")
    return Sample(True, ttft, elapsed, usage_tokens if usage_tokens is not None else chunks, text="".join(pieces))


def unit_trouble(unit: str) -> str | None:
    shown = subprocess.run(["systemctl", "show", unit, "-p", "ActiveState,SubState,NRestarts,Result"],
                           capture_output=True, text=True, check=False).stdout
    state = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    if (state.get("ActiveState") in ("failed", "inactive") or state.get("SubState") == "auto-restart"
            or int(state.get("NRestarts") or 0) > 0):
        return (f"{unit} is {state.get('ActiveState')} (result {state.get('Result')}, "
                f"{state.get('NRestarts', '0')} restarts)")
    return None


def wait_healthy(base_url: str, timeout: float, unit: str | None, interval: float = 2.0) -> dict:
    url = urllib.parse.urlsplit(base_url)
    started = time.monotonic()
    last = "no answer yet"
    while True:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            connection.request("GET", url.path.rstrip("/") + "/health")
            status = connection.getresponse().status
            if status == 200:
                return {"healthy": True, "waited_s": round(time.monotonic() - started, 2)}
            last = f"/health answered {status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            connection.close()
        if unit and (trouble := unit_trouble(unit)):
            return {"healthy": False, "waited_s": round(time.monotonic() - started, 2), "error": trouble}
        if time.monotonic() - started > timeout:
            return {"healthy": False, "waited_s": round(time.monotonic() - started, 2),
                    "error": f"not healthy after {timeout:.0f}s: {last}"}
        time.sleep(interval)


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (P99 of 10 samples is the largest, never an interpolation below it)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def summarize(samples: list[Sample], wall_s: float, concurrency: int) -> dict:
    good = [s for s in samples if s.ok]
    latencies, ttfts = [s.e2e_s for s in good], [s.ttft_s for s in good if s.ttft_s is not None]
    tokens = sum(s.output_tokens for s in good)

    def rounded(value):
        return None if value is None else round(value, 4)

    return {
        "concurrency": concurrency, "requests": len(samples), "succeeded": len(good),
        "errors": len(samples) - len(good),
        "error_rate": round((len(samples) - len(good)) / len(samples), 4) if samples else None,
        "wall_s": round(wall_s, 3),
        "latency_p50_s": rounded(percentile(latencies, 50)), "latency_p99_s": rounded(percentile(latencies, 99)),
        "ttft_p50_s": rounded(percentile(ttfts, 50)), "ttft_p99_s": rounded(percentile(ttfts, 99)),
        "output_tokens": tokens, "output_tokens_per_s": round(tokens / wall_s, 2) if wall_s > 0 else None,
        "first_errors": sorted({s.error for s in samples if not s.ok})[:5],
    }


def judge(summary: dict, sla: dict) -> list[str]:
    """Every way the run missed the SLA (gpuinfra_sla: ttft_p99_s, e2e_p99_s, error_rate, min_output_tokens_per_s)."""
    misses = []
    if not summary["succeeded"]:
        return ["no request succeeded"]
    checks = (("ttft_p99_s", "ttft_p99_s", "P99 time to first token", "s", max),
              ("latency_p99_s", "e2e_p99_s", "P99 end-to-end latency", "s", max),
              ("error_rate", "error_rate", "error rate", "", max),
              ("output_tokens_per_s", "min_output_tokens_per_s", "output tokens/s", "", min))
    for measured_key, sla_key, label, unit, bound in checks:
        limit, measured = sla.get(sla_key), summary.get(measured_key)
        if limit is None or measured is None:
            continue
        if (bound is max and measured > limit) or (bound is min and measured < limit):
            relation = "above" if bound is max else "below"
            misses.append(f"{label} {measured}{unit} is {relation} the SLA's {limit}{unit}")
    return misses


def load(base_url: str, model: str, *, concurrency: int, requests: int, max_seconds: float, max_tokens: int,
         timeout: float) -> dict:
    samples: list[Sample] = []
    lock = threading.Lock()
    issued = 0
    deadline = time.monotonic() + max_seconds

    def worker() -> None:
        nonlocal issued
        while True:
            with lock:
                if issued >= requests or time.monotonic() >= deadline:
                    return
                issued += 1
            remaining = max(1.0, min(timeout, deadline - time.monotonic() + timeout))
            sample = stream_completion(base_url, model, max_tokens=max_tokens, timeout=remaining, ignore_eos=True)
            with lock:
                samples.append(sample)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return summarize(samples, time.perf_counter() - started, concurrency)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    waiting = modes.add_parser("wait")
    waiting.add_argument("url")
    waiting.add_argument("--timeout", type=float, required=True)
    waiting.add_argument("--unit")
    first = modes.add_parser("first")
    stress = modes.add_parser("load")
    for sub in (first, stress):
        sub.add_argument("url")
        sub.add_argument("model")
        sub.add_argument("--max-tokens", type=int, default=32)
        sub.add_argument("--timeout", type=float, default=120)
    stress.add_argument("--concurrency", type=int, required=True)
    stress.add_argument("--requests", type=int, required=True)
    stress.add_argument("--max-seconds", type=float, required=True)
    stress.add_argument("--sla", type=json.loads, default=None, help="gpuinfra_sla as JSON")
    args = parser.parse_args(argv)
    if args.mode == "wait":
        result = wait_healthy(args.url, args.timeout, args.unit)
        print(json.dumps(result))
        return 0 if result["healthy"] else 1
    if args.mode == "first":
        sample = stream_completion(args.url, args.model, max_tokens=args.max_tokens, timeout=args.timeout)
        print(json.dumps({**asdict(sample), "text": sample.text[:200]}))
        return 0 if sample.ok else 1
    if min(args.concurrency, args.requests) < 1 or args.max_seconds <= 0:
        parser.error("--concurrency, --requests and --max-seconds must be positive")
    summary = load(args.url, args.model, concurrency=args.concurrency, requests=args.requests,
                   max_seconds=args.max_seconds, max_tokens=args.max_tokens, timeout=args.timeout)
    misses = judge(summary, args.sla or {})
    summary.update(sla=args.sla, sla_misses=misses, passed=not misses)
    print(json.dumps(summary))
    return 0 if not misses else 1


if __name__ == "__main__":
    sys.exit(main())
