"""Pydantic models of the custom resources gpuinfra emits, limited to the fields it sets (unknown fields are
errors), with each field's type and allowed values from the CRD's own API: LeaderWorkerSet
(leaderworkerset.x-k8s.io/v1), KEDA ScaledObject (keda.sh/v1alpha1), ServiceMonitor and PrometheusRule
(monitoring.coreos.com/v1), Karpenter NodePool (karpenter.sh/v1) and EC2NodeClass (karpenter.k8s.aws/v1, both
as of the pinned chart's CRDs). kubernetes-validate has no schema for CRDs, so these check them offline; the
pod templates inside a LeaderWorkerSet are checked by kubernetes-validate as core PodTemplates.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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


# Karpenter (the CRDs of gpuinfra.kubernetes.karpenter.KARPENTER_VERSION). Durations and label values are the
# CRDs' own patterns; a quantity is an integer or Kubernetes quantity text.
DURATION = r"^(([0-9]+(s|m|h))+|Never)$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?|m)?$"


class ClusterMetadata(Strict):
    """A cluster-scoped object's metadata (no namespace)."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class NodeSelectorRequirement(Strict):
    key: str = Field(min_length=1, max_length=316)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt", "Gte", "Lte"]
    values: list[str] = Field(default_factory=list, max_length=100)

    @model_validator(mode="after")
    def _in_has_values(self) -> NodeSelectorRequirement:
        if self.operator == "In" and not self.values:
            raise ValueError("requirements with operator 'In' must have a value defined")
        if self.key.startswith("karpenter.sh/") and self.key not in ("karpenter.sh/capacity-type",):
            raise ValueError(f'label domain "karpenter.sh" is restricted ({self.key})')
        for value in self.values:
            if not re.fullmatch(LABEL_VALUE, value) or len(value) > 63:
                raise ValueError(f"{value!r} is not a label value")
        return self


class Taint(Strict):
    key: str = Field(min_length=1, max_length=316)
    value: str | None = Field(None, pattern=LABEL_VALUE, max_length=63)
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"]


class NodeClassRef(Strict):
    group: Literal["karpenter.k8s.aws"]
    kind: Literal["EC2NodeClass"]
    name: str = Field(min_length=1)


class NodeClaimTemplateSpec(Strict):
    nodeClassRef: NodeClassRef
    requirements: list[NodeSelectorRequirement] = Field(min_length=1, max_length=100)
    taints: list[Taint] = Field(default_factory=list)
    expireAfter: str = Field(pattern=DURATION)
    terminationGracePeriod: str | None = Field(None, pattern=r"^([0-9]+(s|m|h))+$")


class NodeClaimTemplateMetadata(Strict):
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _unrestricted(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            if key.startswith("karpenter.sh/") or key == "kubernetes.io/hostname":
                raise ValueError(f"label {key} is restricted")
        return labels


class NodeClaimTemplate(Strict):
    metadata: NodeClaimTemplateMetadata
    spec: NodeClaimTemplateSpec


class DisruptionBudget(Strict):
    nodes: str = Field(pattern=r"^((100|[0-9]{1,2})%|[0-9]+)$")
    reasons: list[Literal["Underutilized", "Empty", "Drifted"]] | None = None


class Disruption(Strict):
    consolidationPolicy: Literal["WhenEmpty", "WhenEmptyOrUnderutilized", "Balanced"]
    consolidateAfter: str = Field(pattern=DURATION)
    budgets: list[DisruptionBudget] = Field(min_length=1, max_length=50)


class NodePoolSpec(Strict):
    weight: int | None = Field(None, ge=1, le=100)
    template: NodeClaimTemplate
    disruption: Disruption
    limits: dict[str, int | str] = Field(description="Quantities: an integer or quantity text")

    @field_validator("limits")
    @classmethod
    def _quantities(cls, limits: dict[str, int | str]) -> dict[str, int | str]:
        for name, value in limits.items():
            if isinstance(value, str) and not re.fullmatch(QUANTITY, value) or isinstance(value, int) and value < 0:
                raise ValueError(f"limits.{name}: {value!r} is not a quantity")
        return limits


class NodePool(Strict):
    apiVersion: Literal["karpenter.sh/v1"]
    kind: Literal["NodePool"]
    metadata: ClusterMetadata
    spec: NodePoolSpec


class AmiSelectorTerm(Strict):
    alias: str | None = Field(None, pattern=r"^(al2|al2023|bottlerocket)@(latest|v[0-9]+(\.[0-9]+)*)$")
    id: str | None = Field(None, pattern=r"^ami-[0-9a-z]+$")

    @model_validator(mode="after")
    def _one(self) -> AmiSelectorTerm:
        if (self.alias is None) == (self.id is None):
            raise ValueError("give exactly one of alias, id")
        return self


class SelectorTerm(Strict):
    """A subnet or security-group selector term: tags, or an id (mutually exclusive)."""

    tags: dict[str, str] | None = Field(None, min_length=1)
    id: str | None = Field(None, pattern=r"^(subnet|sg)-[0-9a-z]+$")

    @model_validator(mode="after")
    def _one(self) -> SelectorTerm:
        if (self.tags is None) == (self.id is None):
            raise ValueError("give exactly one of tags, id")
        if self.tags and not all(self.tags.values()) or self.tags and not all(self.tags):
            raise ValueError("empty tag keys or values aren't supported")
        return self


class MetadataOptions(Strict):
    httpEndpoint: Literal["enabled", "disabled"]
    httpProtocolIPv6: Literal["enabled", "disabled"]
    httpPutResponseHopLimit: int = Field(ge=1, le=64)
    httpTokens: Literal["required", "optional"]


class Ebs(Strict):
    volumeSize: str = Field(pattern=r"^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-3][0-9]{3}|64000)Gi$")
    volumeType: Literal["standard", "io1", "io2", "gp2", "sc1", "st1", "gp3"]
    iops: int | None = Field(None, ge=3000, le=80000)
    throughput: int | None = Field(None, ge=125, le=2000)
    encrypted: bool
    deleteOnTermination: bool


class BlockDeviceMapping(Strict):
    deviceName: str = Field(pattern=r"^/dev/")
    rootVolume: bool
    ebs: Ebs


class PlacementGroupSelector(Strict):
    name: str = Field(min_length=1)


class CapacityReservationSelectorTerm(Strict):
    id: str = Field(pattern=r"^cr-[0-9a-z]+$")


class EC2NodeClassSpec(Strict):
    role: str = Field(min_length=1)
    amiFamily: Literal["AL2023"] | None = None
    amiSelectorTerms: list[AmiSelectorTerm] = Field(min_length=1)
    subnetSelectorTerms: list[SelectorTerm] = Field(min_length=1)
    securityGroupSelectorTerms: list[SelectorTerm] = Field(min_length=1)
    metadataOptions: MetadataOptions
    blockDeviceMappings: list[BlockDeviceMapping] = Field(min_length=1)
    userData: str = Field(min_length=1)
    detailedMonitoring: bool
    associatePublicIPAddress: bool
    tags: dict[str, str]
    placementGroupSelector: PlacementGroupSelector | None = None
    capacityReservationSelectorTerms: list[CapacityReservationSelectorTerm] | None = None
    instanceStorePolicy: Literal["RAID0"] | None = None

    @model_validator(mode="after")
    def _cross_field(self) -> EC2NodeClassSpec:
        """The CRD's CEL rules on the fields we set."""
        aliased = any(term.alias for term in self.amiSelectorTerms)
        if aliased and len(self.amiSelectorTerms) > 1:
            raise ValueError("'alias' is mutually exclusive, cannot be set with other amiSelectorTerms")
        if not aliased and self.amiFamily is None:
            raise ValueError("must specify amiFamily if amiSelectorTerms does not contain an alias")
        if sum(mapping.rootVolume for mapping in self.blockDeviceMappings) > 1:
            raise ValueError("must have only one blockDeviceMappings with rootVolume")
        for key in self.tags:
            if not key or key == "eks:eks-cluster-name" or key.startswith(("kubernetes.io/cluster/",
                                                                           "karpenter.sh/nodepool")):
                raise ValueError(f"tag {key!r} is restricted")
        return self


class EC2NodeClass(Strict):
    apiVersion: Literal["karpenter.k8s.aws/v1"]
    kind: Literal["EC2NodeClass"]
    metadata: ClusterMetadata
    spec: EC2NodeClassSpec


CUSTOM_RESOURCES: dict[tuple[str, str], type[Strict]] = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): LeaderWorkerSet,
    ("keda.sh/v1alpha1", "ScaledObject"): ScaledObject,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ServiceMonitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): PrometheusRule,
    ("karpenter.sh/v1", "NodePool"): NodePool,
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): EC2NodeClass,
}


def custom_resource_model(manifest: dict[str, Any]) -> type[Strict] | None:
    return CUSTOM_RESOURCES.get((manifest.get("apiVersion", ""), manifest.get("kind", "")))
