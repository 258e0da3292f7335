"""Pydantic models of the custom resources gpuinfra emits, limited to the fields it sets (unknown fields are
errors), with each field's type and allowed values from the CRD's own API: LeaderWorkerSet
(leaderworkerset.x-k8s.io/v1), KEDA ScaledObject (keda.sh/v1alpha1), ServiceMonitor and PrometheusRule
(monitoring.coreos.com/v1). kubernetes-validate has no schema for CRDs, so these check them offline; the
pod templates inside a LeaderWorkerSet are checked by kubernetes-validate as core PodTemplates.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Metadata(Strict):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    namespace: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class RollingUpdateConfiguration(Strict):
    partition: int = Field(ge=0)
    maxUnavailable: int | str = Field(description="Not 0 when maxSurge is 0")
    maxSurge: int | str


class RolloutStrategy(Strict):
    type: Literal["RollingUpdate"]
    rollingUpdateConfiguration: RollingUpdateConfiguration


class LeaderWorkerTemplate(Strict):
    size: int = Field(ge=1)
    restartPolicy: Literal["Default", "RecreateGroupOnPodRestart", "RecreateGroupAfterStart", "None"]
    leaderTemplate: dict[str, Any] = Field(description="A core PodTemplateSpec (kubernetes-validate checks it)")
    workerTemplate: dict[str, Any]
    volumeClaimTemplates: list[dict[str, Any]] | None = None


class LeaderWorkerSetSpec(Strict):
    replicas: int | None = Field(None, ge=0)
    leaderWorkerTemplate: LeaderWorkerTemplate
    startupPolicy: Literal["LeaderCreated", "LeaderReady"]
    rolloutStrategy: RolloutStrategy


class LeaderWorkerSet(Strict):
    apiVersion: Literal["leaderworkerset.x-k8s.io/v1"]
    kind: Literal["LeaderWorkerSet"]
    metadata: Metadata
    spec: LeaderWorkerSetSpec


class ScaleTarget(Strict):
    apiVersion: str
    kind: str
    name: str


class PrometheusTriggerMetadata(Strict):
    serverAddress: str = Field(pattern=r"^https?://")
    threshold: str = Field(pattern=r"^[0-9]+(\.[0-9]+)?$", description="KEDA reads it as a string")
    query: str


class Trigger(Strict):
    type: Literal["prometheus"]
    metricType: Literal["AverageValue", "Value", "Utilization"]
    metadata: PrometheusTriggerMetadata


class HpaConfig(Strict):
    behavior: dict[str, Any]


class Advanced(Strict):
    horizontalPodAutoscalerConfig: HpaConfig


class ScaledObjectSpec(Strict):
    scaleTargetRef: ScaleTarget
    minReplicaCount: int = Field(ge=0)
    maxReplicaCount: int = Field(ge=1)
    pollingInterval: int = Field(ge=1)
    advanced: Advanced
    triggers: list[Trigger] = Field(min_length=1)


class ScaledObject(Strict):
    apiVersion: Literal["keda.sh/v1alpha1"]
    kind: Literal["ScaledObject"]
    metadata: Metadata
    spec: ScaledObjectSpec


class Endpoint(Strict):
    port: str
    path: str = Field(pattern=r"^/")
    interval: str = Field(pattern=r"^[0-9]+(ms|s|m|h)$")


class Selector(Strict):
    matchLabels: dict[str, str] = Field(min_length=1)


class NamespaceSelector(Strict):
    matchNames: list[str] = Field(min_length=1)


class ServiceMonitorSpec(Strict):
    jobLabel: str
    selector: Selector
    namespaceSelector: NamespaceSelector
    endpoints: list[Endpoint] = Field(min_length=1)


class ServiceMonitor(Strict):
    apiVersion: Literal["monitoring.coreos.com/v1"]
    kind: Literal["ServiceMonitor"]
    metadata: Metadata
    spec: ServiceMonitorSpec


class Rule(Strict):
    record: str | None = Field(None, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    alert: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    expr: str = Field(min_length=1)
    for_: str | None = Field(None, alias="for", pattern=r"^[0-9]+(ms|s|m|h|d)$")
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class RuleGroup(Strict):
    name: str
    rules: list[Rule] = Field(min_length=1)


class PrometheusRuleSpec(Strict):
    groups: list[RuleGroup] = Field(min_length=1)


class PrometheusRule(Strict):
    apiVersion: Literal["monitoring.coreos.com/v1"]
    kind: Literal["PrometheusRule"]
    metadata: Metadata
    spec: PrometheusRuleSpec


CUSTOM_RESOURCES: dict[tuple[str, str], type[Strict]] = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): LeaderWorkerSet,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
}


def custom_resource_model(manifest: dict[str, Any]) -> type[Strict] | None:
    return CUSTOM_RESOURCES.get((manifest.get("apiVersion", ""), manifest.get("kind", "")))
