"""Monitoring on Kubernetes: ServiceMonitors for vLLM and DCGM, and one PrometheusRule carrying the
autoscaler's recording rule and the SLA alert rules of the Ansible monitoring role.

The alert rules have one source, the Jinja template `gpuinfra/assets/gpuinfra.rules.yml.j2` (the monitoring
role's template is a symlink to it), rendered here with the same variables the role gives it. The
ServiceMonitors set `job` from the Services' gpuinfra.io/job label, so `up{job="inference"}` and
`up{job="dcgm"}` mean on a cluster what they mean on the Ansible hosts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2
import pulumi
import pulumi_kubernetes as k8s
import yaml

from gpuinfra.boot import asset
from gpuinfra.config import ResolvedCluster
from gpuinfra.kubernetes.objects import JOB_LABEL, LATENCY_METRIC, app_labels

RULES_TEMPLATE = "gpuinfra.rules.yml.j2"
GPU_TEMPERATURE_ALERT_C = 85  # = monitoring_gpu_temperature_alert_c in the role's defaults (tested equal)
SCRAPE_INTERVAL = "15s"
# Which vLLM histogram each autoscaling metric is the p90 of.
LATENCY_HISTOGRAMS = {"ttft-p90": "vllm:time_to_first_token_seconds", "e2e-p90": "vllm:e2e_request_latency_seconds"}
OPERATOR_API = "monitoring.coreos.com/v1"


def gpu_memory_alert_ratio(gpu_memory_utilization: float) -> float:
    """85 %, or 5 points above what the engine preallocates, at most 100 % (the role's default, tested equal)."""
    return round(min(max(0.85, gpu_memory_utilization + 0.05), 1.0), 2)


def alert_rule_groups(sla: dict[str, Any], gpu_memory_utilization: float) -> list[dict[str, Any]]:
    """The monitoring role's rule groups, rendered from its template with the stack's SLA."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701 (YAML)
    text = environment.from_string(asset(RULES_TEMPLATE)).render(
        ansible_managed="Managed by gpuinfra (Kubernetes PrometheusRule)", monitoring_sla=sla,
        monitoring_gpu_memory_alert_ratio=gpu_memory_alert_ratio(gpu_memory_utilization),
        monitoring_gpu_temperature_alert_c=GPU_TEMPERATURE_ALERT_C)
    return yaml.safe_load(text)["groups"]


def recording_rule_group(metric: str) -> dict[str, Any]:
    """`inference_latency_seconds` per pod: the p90 of the chosen histogram over a minute; 0 for a pod with no
    requests in that minute (the quantile of nothing is NaN, which `>= 0` drops and `or` replaces)."""
    histogram = LATENCY_HISTOGRAMS[metric]
    by = "namespace, service, pod"
    quantile = (f'histogram_quantile(0.9, sum by ({by}, le) (rate({histogram}_bucket{{job="inference"}}[1m])))'
                " >= 0")
    idle = f'0 * sum by ({by}) (rate({histogram}_count{{job="inference"}}[1m]))'
    return {"name": "gpuinfra-autoscaling", "rules": [{"record": LATENCY_METRIC, "expr": f"({quantile}) or ({idle})"}]}


def prometheus_rule_spec(cluster: ResolvedCluster) -> dict[str, Any]:
    sla = cluster.config.sla.model_dump(mode="json")
    return {"groups": [recording_rule_group(cluster.config.target.autoscaling.metric),
                       *alert_rule_groups(sla, cluster.request.gpu_memory_utilization)]}


def service_monitor_spec(selector: dict[str, str], namespace: str, port: str) -> dict[str, Any]:
    return {"jobLabel": JOB_LABEL, "selector": {"matchLabels": selector}, "namespaceSelector": {
        "matchNames": [namespace]}, "endpoints": [{"port": port, "path": "/metrics", "interval": SCRAPE_INTERVAL}]}


@dataclass(frozen=True)
class ServingMonitoringArgs:
    cluster: ResolvedCluster
    namespace: str
    dcgm_namespace: str | None  # where gpuinfra's DCGM exporter runs; None: the cluster's own (not watched)
    dcgm_labels: dict[str, str]


class ServingMonitoring(pulumi.ComponentResource):
    """ServiceMonitors (vLLM leaders, DCGM) and the PrometheusRule, for a prometheus-operator Prometheus."""

    def __init__(self, name: str, args: ServingMonitoringArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:kubernetes:ServingMonitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = app_labels(args.cluster)
        k8s.apiextensions.CustomResource(
            f"{name}-vllm", api_version=OPERATOR_API, kind="ServiceMonitor",
            metadata={"name": f"{name}-vllm", "namespace": args.namespace, "labels": labels},
            spec=service_monitor_spec({**labels, JOB_LABEL: "inference"}, args.namespace, "http"), opts=child)
        if args.dcgm_namespace:
            k8s.apiextensions.CustomResource(
                f"{name}-dcgm", api_version=OPERATOR_API, kind="ServiceMonitor",
                metadata={"name": f"{name}-dcgm", "namespace": args.dcgm_namespace, "labels": labels},
                spec=service_monitor_spec(args.dcgm_labels, args.dcgm_namespace, "metrics"), opts=child)
        k8s.apiextensions.CustomResource(
            f"{name}-rules", api_version=OPERATOR_API, kind="PrometheusRule",
            metadata={"name": f"{name}-rules", "namespace": args.namespace, "labels": labels},
            spec=prometheus_rule_spec(args.cluster), opts=child)
        self.rule_name = f"{name}-rules"
        self.register_outputs({"rule_name": self.rule_name})
