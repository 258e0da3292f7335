"""The PrometheusRule of the Kubernetes target: the monitoring role's alert rules from the one template, with the
role's thresholds, and the autoscaler's recording rule, checked and unit-tested by promtool on synthetic series."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest
import yaml
from gpuinfra.kubernetes.monitoring import GPU_TEMPERATURE_ALERT_C, gpu_memory_alert_ratio, prometheus_rule_spec
from gpuinfra.plan import resolve_stack

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "ansible" / "roles" / "monitoring"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="scripts/bootstrap.sh installs promtool (prometheus)")


def promtool(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([PROMTOOL, *argv], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_the_role_and_the_package_render_one_template():
    assert (ROLE / "templates" / "gpuinfra.rules.yml.j2").resolve() == \
        (REPO / "infra" / "gpuinfra" / "assets" / "gpuinfra.rules.yml.j2").resolve()


@pytest.mark.parametrize("utilization", [0.5, 0.82, 0.9, 0.97])
def test_thresholds_are_the_roles_defaults(utilization):
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    expression = defaults["monitoring_gpu_memory_alert_ratio"]
    rendered = jinja2.Environment().from_string(expression).render(
        gpuinfra_serving_plan={"gpu_memory_utilization": utilization})
    assert float(rendered) == gpu_memory_alert_ratio(utilization)
    assert defaults["monitoring_gpu_temperature_alert_c"] == GPU_TEMPERATURE_ALERT_C


def test_prometheus_rule_carries_the_roles_alerts_with_the_stack_sla():
    cluster = resolve_stack("eks-70b")
    groups = prometheus_rule_spec(cluster)["groups"]
    assert [g["name"] for g in groups] == ["gpuinfra-autoscaling", "gpuinfra-gpu", "gpuinfra-serving"]
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    assert set(alerts) == {"GpuMemoryHigh", "GpuTemperatureHigh", "GpuXidError", "GpuEccUncorrectable",
                           "ExporterDown", "InferenceServerDown", "InferenceP99LatencyOverSla",
                           "InferenceP99TimeToFirstTokenOverSla", "InferenceErrorRateOverSla"}
    assert alerts["InferenceP99TimeToFirstTokenOverSla"]["expr"].endswith(f"> {cluster.config.sla.ttft_p99_s}")
    assert "> 0.95" in alerts["GpuMemoryHigh"]["expr"]  # 5 points over the plan's 0.9


@needs_promtool
def test_recording_rule_is_the_p90_time_to_first_token_per_pod(tmp_path):
    groups = prometheus_rule_spec(resolve_stack("eks-70b"))["groups"]
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": groups}))
    checked = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    busy = 'job="inference", namespace="llm", service="gpuinfra-eks-70b", pod="p0"'
    idle = 'job="inference", namespace="llm", service="gpuinfra-eks-70b", pod="p1"'
    series = []
    for le, grows in (("0.25", False), ("0.5", False), ("1", True), ("2.5", True), ("+Inf", True)):
        # p0: 60 requests a minute, each first token between 0.5 s and 1 s; p1: no requests at all.
        series.append({"series": f'vllm:time_to_first_token_seconds_bucket{{{busy}, le="{le}"}}',
                       "values": f"0+{60 if grows else 0}x20"})
        series.append({"series": f'vllm:time_to_first_token_seconds_bucket{{{idle}, le="{le}"}}', "values": "5x20"})
    series += [{"series": f"vllm:time_to_first_token_seconds_count{{{busy}}}", "values": "0+60x20"},
               {"series": f"vllm:time_to_first_token_seconds_count{{{idle}}}", "values": "5x20"}]
    # p90 within the (0.5, 1] bucket: 0.5 + 0.9 x 0.5 = 0.95 s; the idle pod records 0, not NaN.
    sample = 'inference_latency_seconds{{namespace="llm", pod="{}", service="gpuinfra-eks-70b"}}'
    tests = {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": "inference_latency_seconds", "eval_time": "10m", "exp_samples": [
            {"labels": sample.format("p0"), "value": 0.95}, {"labels": sample.format("p1"), "value": 0}]}],
    }]}
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    done = promtool("test", "rules", "tests.yml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


def test_e2e_metric_records_the_end_to_end_histogram():
    spec = prometheus_rule_spec(resolve_stack("eks-70b", sets=["model=deepseek-v3", "precision=fp8",
                                                               "instance_types=p5en.48xlarge",
                                                               "target.autoscaling.metric=e2e-p90",
                                                               "hourly_budget_usd=1000", "nodes=2"]))
    (record,) = spec["groups"][0]["rules"]
    assert "vllm:e2e_request_latency_seconds_bucket" in record["expr"]
