"""Is an environment idle? Asked of the monitoring role's Prometheus, failing safe.

Idle means: over the whole idle window, vLLM's request counters (`vllm:request_success_total`, and the
end-to-end latency histogram's `_count`, one per finished request) did not increase and
`vllm:num_requests_running` stayed 0. In PromQL terms,
`sum(increase(vllm:request_success_total[W])) == 0 and max_over_time(vllm:num_requests_running[W]) == 0`,
but judged from the raw samples, so that every way of not knowing counts as **active**:

- Prometheus unreachable, or no URL known;
- a series missing (no counter, no running gauge);
- a series stale (its newest sample older than `max_sample_age`), e.g. the server or the scrape is down;
- a series that does not cover the whole window (Prometheus or the server started within it);
- a counter reset within the window (the server restarted: something happened).

A broken exporter therefore never makes an environment idle; the hard expiry still applies to it.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from datetime import timedelta

from pydantic import Field

from gpuinfra.environments.durations import format_duration
from gpuinfra.environments.models import Model

REQUEST_COUNTERS = ("vllm:request_success_total", "vllm:e2e_request_latency_seconds_count")
RUNNING_GAUGE = "vllm:num_requests_running"
DEFAULT_SELECTOR = 'job="inference"'  # the monitoring role's scrape job for the heads of the copies
MAX_SAMPLE_AGE = timedelta(seconds=90)  # six missed scrapes at the role's 15 s interval


class Activity(Model):
    """The probe's verdict and its reason, for `env ls` and the reaper's log line."""

    idle: bool
    reason: str


class Series(Model):
    name: str
    labels: dict[str, str]
    samples: list[tuple[float, float]] = Field(description="(unix time, value), oldest first")


def judge(counters: list[Series], running: list[Series], window: timedelta, now: float,
          max_sample_age: timedelta = MAX_SAMPLE_AGE) -> Activity:
    """The rules of the module docstring, over raw samples."""
    span = format_duration(window)
    if not counters:
        return Activity(idle=False, reason=f"no request counter ({REQUEST_COUNTERS[0]}) in Prometheus: "
                                           "counted as active")
    if not running:
        return Activity(idle=False, reason=f"no {RUNNING_GAUGE} in Prometheus: counted as active")
    tolerance = max_sample_age.total_seconds()
    for series in [*counters, *running]:
        age = now - series.samples[-1][0]
        if age > tolerance:
            return Activity(idle=False, reason=f"{series.name} is stale (last sample {age:.0f}s ago): counted as "
                                               "active")
        if series.samples[0][0] > now - window.total_seconds() + tolerance:
            covered = format_duration(timedelta(seconds=now - series.samples[0][0]))
            return Activity(idle=False, reason=f"{series.name} covers {covered} of the {span} idle window: counted "
                                               "as active")
    busy = max(value for series in running for _, value in series.samples)
    if busy > 0:
        return Activity(idle=False, reason=f"{busy:g} request(s) running within the last {span}")
    served = 0.0
    for series in counters:
        values = [value for _, value in series.samples]
        if any(later < earlier for earlier, later in zip(values, values[1:], strict=False)):
            return Activity(idle=False, reason=f"{series.name} was reset within the last {span} (server restart): "
                                               "counted as active")
        served = max(served, values[-1] - values[0])
    if served > 0:
        return Activity(idle=False, reason=f"{served:g} request(s) served within the last {span}")
    return Activity(idle=True, reason=f"no request served or running for {span}")


def query_samples(prometheus_url: str, expression: str, at: float, timeout_s: float = 3.0) -> list[Series]:
    """Raw samples of a range selector (the instant query of `metric[W]` returns them as a matrix)."""
    query = urllib.parse.urlencode({"query": expression, "time": f"{at:.3f}"})
    with urllib.request.urlopen(f"{prometheus_url.rstrip('/')}/api/v1/query?{query}", timeout=timeout_s) as reply:
        body = json.loads(reply.read())
    if body.get("status") != "success" or body["data"]["resultType"] != "matrix":
        raise ValueError(f"unexpected answer to {expression}: {str(body)[:200]}")
    return [Series(name=item["metric"].get("__name__", "?"), labels=item["metric"],
                   samples=[(float(ts), float(value)) for ts, value in item["values"]])
            for item in body["data"]["result"] if item["values"]]


def probe(prometheus_url: str | None, window: timedelta, *, selector: str = DEFAULT_SELECTOR,
          max_sample_age: timedelta = MAX_SAMPLE_AGE, now: float | None = None) -> Activity:
    """Ask Prometheus; any failure to know is an active verdict with its reason."""
    if not prometheus_url:
        return Activity(idle=False, reason="no Prometheus known for this environment: counted as active")
    at = time.time() if now is None else now
    seconds = int(window.total_seconds())
    names = "|".join(REQUEST_COUNTERS)
    try:
        counters = query_samples(prometheus_url, f'{{__name__=~"{names}",{selector}}}[{seconds}s]', at)
        running = query_samples(prometheus_url, f"{RUNNING_GAUGE}{{{selector}}}[{seconds}s]", at)
    except (OSError, ValueError) as exc:
        return Activity(idle=False, reason=f"Prometheus at {prometheus_url} did not answer ({exc}): counted as "
                                           "active")
    return judge(counters, running, window, at, max_sample_age)
