"""The monitoring role's alert rules, rendered from the SLA, checked and unit-tested by promtool on synthetic
series (GPU memory, temperature, Xid, ECC, P99 latency and TTFT over the SLA, error rate), and the Grafana
dashboard's queries checked by promtool too."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml

from tests.rigs.ansible_run import ANSIBLE_DIR

TEMPLATES = ANSIBLE_DIR / "roles" / "monitoring" / "templates"
SLA = {"ttft_p99_s": 1.5, "e2e_p99_s": 45.0, "error_rate": 0.005, "min_output_tokens_per_s": None}
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="scripts/bootstrap.sh installs promtool (prometheus)")


def render(name: str, **variables) -> str:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined)
    environment.filters["to_json"] = json.dumps
    values = {"monitoring_sla": SLA, "monitoring_gpu_memory_alert_ratio": 0.95,
              "monitoring_gpu_temperature_alert_c": 85, "gpuinfra_stack": "prod-70b", **variables}
    return environment.get_template(name).render(**values)


def promtool(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


def alert(name: str, labels: dict, at: str) -> dict:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": labels}] if labels else []}


def test_rules_pass_promtool_check(tmp_path):
    (tmp_path / "rules.yml").write_text(render("gpuinfra.rules.yml.j2"))
    done = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    names = [r["alert"] for g in yaml.safe_load((tmp_path / "rules.yml").read_text())["groups"] for r in g["rules"]]
    assert names == ["GpuMemoryHigh", "GpuTemperatureHigh", "GpuXidError", "GpuEccUncorrectable", "ExporterDown",
                     "InferenceServerDown", "InferenceP99LatencyOverSla", "InferenceP99TimeToFirstTokenOverSla",
                     "InferenceErrorRateOverSla"]
    summaries = {r["alert"]: r["annotations"]["summary"]
                 for g in yaml.safe_load((tmp_path / "rules.yml").read_text())["groups"] for r in g["rules"]}
    assert summaries["InferenceP99LatencyOverSla"].endswith("over the SLA's 45.0s")


def test_a_null_sla_field_has_no_alert(tmp_path):
    text = render("gpuinfra.rules.yml.j2", monitoring_sla={**SLA, "ttft_p99_s": None})
    assert "InferenceP99TimeToFirstTokenOverSla" not in text and "InferenceP99LatencyOverSla" in text


def test_rules_fire_on_synthetic_series(tmp_path):
    rendered = yaml.safe_load(render("gpuinfra.rules.yml.j2"))
    for group in rendered["groups"]:  # the summaries are checked above; here only which alerts fire, where
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rendered))
    gpu = 'instance="n1:9400", gpu="0", job="dcgm"'
    busy = 'instance="n1:8000", job="inference"'
    calm = 'instance="n2:8000", job="inference"'

    def buckets(name: str, instance: str, slow_le: str, per_minute: int) -> list[dict]:
        # Every request lands in the bucket `slow_le`; the +Inf bucket counts them all.
        out = []
        for le in ("0.5", "1", "2.5", "10", "30", "60", "+Inf"):
            grows = float(le if le != "+Inf" else "inf") >= float(slow_le)
            out.append({"series": f'{name}_bucket{{{instance}, le="{le}"}}',
                        "values": f"0+{per_minute if grows else 0}x30"})
        return out

    series = [
        # 20 GB used of 80: fine; then 78 of 80 (97.5 %) for 10 minutes: above the 95 % threshold.
        {"series": f"DCGM_FI_DEV_FB_USED{{{gpu}}}", "values": "20000x5 78000x15"},
        {"series": f"DCGM_FI_DEV_FB_FREE{{{gpu}}}", "values": "60000x5 2000x15"},
        {"series": f"DCGM_FI_DEV_GPU_TEMP{{{gpu}}}", "values": "70x5 90x15"},
        {"series": f"DCGM_FI_DEV_XID_ERRORS{{{gpu}}}", "values": "0x5 79x15"},
        {"series": f"DCGM_FI_DEV_ECC_DBE_VOL_TOTAL{{{gpu}}}", "values": "0x5 2x15"},
        {"series": f"DCGM_FI_DEV_ROW_REMAP_FAILURE{{{gpu}}}", "values": "0x20"},
        {"series": 'up{instance="n1:8000", job="inference"}', "values": "1x5 0x15"},
        {"series": 'up{instance="n1:9100", job="node"}', "values": "1x20"},
        *buckets("vllm:e2e_request_latency_seconds", busy, "60", 60),
        *buckets("vllm:e2e_request_latency_seconds", calm, "10", 60),
        *buckets("sglang:time_to_first_token_seconds", busy, "2.5", 60),
        *buckets("sglang:time_to_first_token_seconds", calm, "1", 60),
        {"series": f'http_requests_total{{{busy}, status="2xx"}}', "values": "0+98x30"},
        {"series": f'http_requests_total{{{busy}, status="5xx"}}', "values": "0+2x30"},
        {"series": f'http_requests_total{{{calm}, status="2xx"}}', "values": "0+1000x30"},
        {"series": f'http_requests_total{{{calm}, status="5xx"}}', "values": "0+1x30"},
    ]
    gpu_labels = {"instance": "n1:9400", "gpu": "0", "job": "dcgm"}
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "alert_rule_test": [
            alert("GpuMemoryHigh", {}, "4m"),
            alert("GpuMemoryHigh", {"severity": "warning", **gpu_labels}, "15m"),
            alert("GpuTemperatureHigh", {}, "6m"),
            alert("GpuTemperatureHigh", {"severity": "critical", **gpu_labels}, "10m"),
            alert("GpuXidError", {"severity": "critical", **gpu_labels}, "6m"),
            alert("GpuEccUncorrectable", {"severity": "critical", **gpu_labels}, "6m"),
            alert("ExporterDown", {}, "15m"),
            alert("InferenceServerDown", {"severity": "critical", "instance": "n1:8000", "job": "inference"}, "10m"),
            # P99 of the busy server is 60 s > 45 s SLA; the calm one's 10 s is not.
            alert("InferenceP99LatencyOverSla", {"severity": "warning", "instance": "n1:8000"}, "15m"),
            alert("InferenceP99TimeToFirstTokenOverSla", {"severity": "warning", "instance": "n1:8000"}, "15m"),
            # 2 % > 0.5 % on n1; 0.1 % on n2 is within the SLA.
            alert("InferenceErrorRateOverSla", {"severity": "critical", "instance": "n1:8000"}, "15m"),
        ]}]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_is_json_and_its_queries_parse(tmp_path):
    dashboard = json.loads(render("gpuinfra-dashboard.json.j2"))
    assert dashboard["uid"] == "gpuinfra-prod-70b"
    panels = {p["title"]: p for p in dashboard["panels"]}
    steps = panels["P99 time to first token"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert steps[-1]["value"] == 1.5
    assert panels["GPU memory used"]["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]["value"] == 0.95
    assert panels["GPU temperature"]["targets"][0]["legendFormat"] == "{{instance}} GPU {{gpu}}"
    # Each query as a recording rule: promtool parses every expression.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:panel_{p['id']}", "expr": p["targets"][0]["expr"]} for p in dashboard["panels"]]}]}
    (tmp_path / "dashboard-queries.yml").write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", "dashboard-queries.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
