"""The stack file's `target` block: where the sized model is served. `ec2` (the default) is the Auto Scaling
group of gpuinfra.aws; `eks` creates an EKS cluster whose GPU node groups come from the same launch
templates; `kubernetes` serves on an existing cluster reached through a kubeconfig context.

Imported by gpuinfra.config, so it depends on pydantic alone. The checks that need only the config live
here (`target_problems`); those that need the sizing answer live in gpuinfra.kubernetes.serving_plan.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# RFC 1123 label (namespaces, Secret names) and the Kubernetes minors kubernetes-validate 1.37.0 has schemas for.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"
SECRET_KEY = r"^[-._a-zA-Z0-9]{1,253}$"
KUBERNETES_MINOR = r"^1\.(2[5-9]|3[0-7])$"
# An image reference: registry/name, then a tag or a digest (no `latest`, which is refused in target_problems).
IMAGE = r"^[a-z0-9][a-z0-9._/:-]{0,254}(:[\w][\w.-]{0,127}|@sha256:[0-9a-f]{64})$"
# An EC2 type name (family, generation, attributes, size), and a Graviton one: a `g` among the attributes
# (m7g, c7gn, t4g, x2gd), refused for the system nodes, whose AMI type is x86_64.
INSTANCE_TYPE = r"^[a-z]+[0-9]+[a-z-]*\.[0-9a-z]+$"
GRAVITON_TYPE = r"^[a-z]+[0-9]+[a-z-]*g[a-z-]*\."
# Models whose answers carry a long reasoning trace: end-to-end latency is tens of seconds by design.
REASONING_MODEL_PREFIXES = ("deepseek-r1",)


class TargetModel(BaseModel):
    """Unknown keys are errors; values are frozen once parsed (the same rules as gpuinfra.config)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class Ec2Target(TargetModel):
    kind: Literal["ec2"] = Field("ec2", description="GPU nodes in an Auto Scaling group (gpuinfra.aws)")


class SecretRef(TargetModel):
    name: str = Field("hf-token", pattern=DNS_SUBDOMAIN, description="Secret in the serving namespace")
    key: str = Field("token", pattern=SECRET_KEY, description="The key holding the Hugging Face token")
    optional: bool = Field(True, description="Start without a token when the Secret is absent (public repos)")


class Autoscaling(TargetModel):
    kind: Literal["hpa", "keda", "none"] = Field(
        "hpa", description="hpa: autoscaling/v2 on a Pods metric; keda: a ScaledObject (never both); none: fixed")
    min_replicas: int = Field(2, ge=1, le=100, description="Serving copies never fewer than this")
    max_replicas: int = Field(10, ge=1, le=100, description="Serving copies never more (and within the budget)")
    metric: Literal["ttft-p90", "e2e-p90"] = Field(
        "ttft-p90", description="What `inference_latency_seconds` records per pod: p90 time to first token, or "
                                "p90 end-to-end latency (refused for reasoning models)")
    target_seconds: float = Field(0.5, gt=0, le=600, description="Average of the metric over pods to hold")
    queue_per_replica: int = Field(5, ge=1, le=10000,
                                   description="KEDA only: vllm:num_requests_waiting per replica to scale at")
    prometheus_url: str = Field("http://prometheus-operated.monitoring.svc:9090",
                                pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[A-Za-z0-9._/-]*)?$",
                                description="KEDA only: the Prometheus its triggers query")


COLOURS = ("blue", "green")


class ColourImages(TargetModel):
    blue: str | None = Field(None, pattern=IMAGE, description="blue-green: the blue set's image; default target.image")
    green: str | None = Field(None, pattern=IMAGE,
                              description="blue-green: the green set's image; default target.image")


class Rollout(TargetModel):
    strategy: Literal["rolling", "canary", "blue-green"] = Field(
        "rolling", description="rolling: one pod (group) at a time; canary: only the highest ordinals take a new "
                               "template (the rollout partition); blue-green: two complete serving sets, the "
                               "Service on the active one (needs twice the GPUs within the budget and nodes)")
    canary_replicas: int = Field(1, ge=1, le=100, description="canary: copies that run the new template")
    active: Literal["blue", "green"] = Field("blue", description="blue-green: the colour the Service sends "
                                                                 "traffic to; switching it is the cut-over")
    images: ColourImages = Field(default_factory=ColourImages,
                                 description="blue-green: each colour's serving image (the new release goes to "
                                             "the idle colour first)")


class WeightsCache(TargetModel):
    kind: Literal["node-nvme", "volume-claim"] | None = Field(
        None, description="node-nvme: the node's instance-store RAID0 (hostPath, kept across pod restarts); "
                          "volume-claim: a per-replica PersistentVolumeClaim; default: node-nvme on eks, "
                          "volume-claim on an existing cluster")
    storage_class: str | None = Field(None, pattern=DNS_SUBDOMAIN, description="volume-claim: the StorageClass")
    read_gbps: float | None = Field(None, gt=0, le=1000, description="Sequential read speed of the cache in GB/s, "
                                                                    "for the startup budget; default: the catalog's "
                                                                    "NVMe count x 1 GB/s, or 0.25 GB/s for a claim")


class KubernetesTarget(TargetModel):
    version: str = Field("1.33", pattern=KUBERNETES_MINOR,
                         description="The cluster's Kubernetes minor; rendered objects are validated against it")
    namespace: str = Field("gpuinfra", pattern=DNS_LABEL, description="Where the serving objects go")
    image: str | None = Field(None, pattern=IMAGE, description="Serving image; default: vllm/vllm-openai at the "
                                                                "catalog's pinned vLLM version")
    hf_token_secret: SecretRef = Field(default_factory=SecretRef, description="The Hugging Face token's Secret")
    weights_cache: WeightsCache = Field(default_factory=WeightsCache)
    autoscaling: Autoscaling = Field(default_factory=Autoscaling)
    rollout: Rollout = Field(default_factory=Rollout)
    monitoring: bool = Field(True, description="ServiceMonitors and a PrometheusRule (prometheus-operator CRDs)")

    @field_validator("version", mode="before")
    @classmethod
    def _version_is_text(cls, value: Any) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise ValueError(f'quote it: "1.33", not {value} (YAML reads 1.30 as the number 1.3)')
        return value


class SystemNodes(TargetModel):
    """The untainted node group every EKS cluster of this stack gets: the GPU nodes are tainted, so CoreDNS,
    the Karpenter, KEDA, LWS and Prometheus controllers need somewhere else to run."""

    instance_type: str = Field("m7i.large", pattern=INSTANCE_TYPE,
                               description="An x86_64 type without GPUs (the nodes run AL2023_x86_64_STANDARD); "
                                           "its cost is not in hourly_budget_usd, which prices GPU nodes")
    count: int = Field(2, ge=2, le=20, description="Nodes, spread over the control plane's zones (two at least: "
                                                   "CoreDNS's and Karpenter's two replicas, one drained at a time)")


class EksTarget(KubernetesTarget):
    kind: Literal["eks"] = Field(description="Create an EKS cluster with one GPU node group per approved type")
    node_provisioning: Literal["managed-node-groups", "karpenter"] = Field(
        "managed-node-groups", description="managed-node-groups: one EKS managed node group per approved type; "
                                           "karpenter: one Karpenter NodePool and EC2NodeClass per approved type, "
                                           "GPUs limited by hourly_budget_usd (Karpenter installed by the stack)")
    public_endpoint: bool = Field(False, description="Expose the EKS API publicly (default: private only)")
    system_nodes: SystemNodes = Field(default_factory=SystemNodes,
                                      description="The untainted system node group (both node provisioning modes)")


class ClusterTarget(KubernetesTarget):
    kind: Literal["kubernetes"] = Field(description="Serve on an existing cluster (its GPU nodes are not created)")
    context: str = Field(min_length=1, max_length=253, pattern=r"^[\w@.:/-]+$",
                         description="The kubeconfig context naming the cluster")


Target = Annotated[Ec2Target | EksTarget | ClusterTarget, Field(discriminator="kind")]


def is_reasoning_model(slug: str) -> bool:
    return slug.startswith(REASONING_MODEL_PREFIXES)


def cache_kind(target: EksTarget | ClusterTarget) -> str:
    """Where the weights live: as configured, else the node's NVMe on a cluster this stack builds (its nodes
    assemble the RAID) and a volume claim on someone else's cluster."""
    if target.weights_cache.kind:
        return target.weights_cache.kind
    return "node-nvme" if isinstance(target, EksTarget) else "volume-claim"


def target_problems(config: Any) -> list[tuple[str, str]]:
    """(field path, reason) for what a Kubernetes target cannot do with this config (CONFIG: a ClusterConfig)."""
    target = config.target
    if isinstance(target, Ec2Target):
        return []
    problems: list[tuple[str, str]] = []
    scaling, rollout = target.autoscaling, target.rollout
    if scaling.min_replicas > scaling.max_replicas:
        problems.append(("target.autoscaling.min_replicas", f"{scaling.min_replicas} is more than max_replicas "
                                                            f"{scaling.max_replicas}"))
    if scaling.kind != "none" and scaling.metric == "e2e-p90" and is_reasoning_model(config.model):
        problems.append(("target.autoscaling.metric", f"{config.model} is a reasoning model: a whole answer takes "
                                                      "tens of seconds end to end, so an e2e latency target pins "
                                                      "the autoscaler at max_replicas; use ttft-p90"))
    if rollout.strategy == "canary" and rollout.canary_replicas >= scaling.min_replicas:
        problems.append(("target.rollout.canary_replicas", f"{rollout.canary_replicas} is not fewer than the "
                                                           f"{scaling.min_replicas} replicas that always run: a "
                                                           "canary must leave old copies serving"))
    if target.image and target.image.endswith(":latest"):
        problems.append(("target.image", "pin a version or a digest, not :latest"))
    problems += rollout_problems(rollout)
    if rollout.strategy == "blue-green" and config.hourly_budget_usd is None:
        problems.append(("hourly_budget_usd", "is required with target.rollout.strategy: blue-green: the plan must "
                                              "show that twice the GPUs fit within it"))
    if isinstance(target, EksTarget) and target.node_provisioning == "karpenter":
        problems += karpenter_problems(config)
    if isinstance(target, EksTarget) and re.match(GRAVITON_TYPE, target.system_nodes.instance_type):
        problems.append(("target.system_nodes.instance_type", f"{target.system_nodes.instance_type} is a Graviton "
                                                              "(arm64) type; the system nodes run x86_64 "
                                                              "(AL2023_x86_64_STANDARD)"))
    cache = target.weights_cache
    if cache.storage_class and cache_kind(target) != "volume-claim":
        problems.append(("target.weights_cache.storage_class", "applies to kind: volume-claim only"))
    if config.endpoint.enabled:
        problems.append(("endpoint.enabled", "the Kubernetes target serves through a Service; the EC2 load "
                                             "balancer does not apply (set it false)"))
    if isinstance(target, ClusterTarget) and config.capacity.type != "on-demand":
        problems.append(("capacity", "target kind kubernetes uses the cluster's existing nodes; capacity applies "
                                     "to nodes this stack creates (ec2, eks)"))
    return problems


def rollout_problems(rollout: Rollout) -> list[tuple[str, str]]:
    """The blue-green keys mean nothing to another strategy: setting them there is a mistake, not a default."""
    problems = []
    if rollout.strategy != "blue-green":
        for key in ("active", "images"):
            if key in rollout.model_fields_set:
                problems.append((f"target.rollout.{key}", f"applies to strategy blue-green only (strategy is "
                                                          f"{rollout.strategy})"))
    for colour in COLOURS:
        image = getattr(rollout.images, colour)
        if image and image.endswith(":latest"):
            problems.append((f"target.rollout.images.{colour}", "pin a version or a digest, not :latest"))
    return problems


def karpenter_problems(config: Any) -> list[tuple[str, str]]:
    """What Karpenter cannot do with this config: its NodePools' GPU limits come from the budget, and it
    launches spot at the market price (no max price)."""
    problems = []
    if config.hourly_budget_usd is None:
        problems.append(("hourly_budget_usd", "is required with target.node_provisioning: karpenter: each "
                                              "NodePool's nvidia.com/gpu limit is the whole instances it pays for"))
    if getattr(config.capacity, "max_price_usd_per_hour", None) is not None:
        problems.append(("capacity.max_price_usd_per_hour", "Karpenter launches spot at the market price and "
                                                            "takes no max price; drop it or use managed-node-groups"))
    return problems
