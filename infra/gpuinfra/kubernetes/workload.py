"""The model served on Kubernetes: namespace, service account, the stager's ConfigMap, Services, the workload
(a StatefulSet for a one-node copy, a LeaderWorkerSet for a copy over several nodes), its disruption budget
and its autoscaler. Every object is a typed pulumi-kubernetes resource (CustomResource for the CRDs), so the
offline plan and the policy pack see each one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from gpuinfra.boot import asset
from gpuinfra.config import ResolvedCluster
from gpuinfra.kubernetes.objects import (
    ANNOTATION,
    JOB_LABEL,
    app_labels,
    autoscaler_spec,
    colour_pods,
    disruption_budget_spec,
    leader_worker_set_spec,
    network_policy_spec,
    pod_template,
    scaled_object_spec,
    service_spec,
    serving_skips,
    set_labels,
    stateful_set_spec,
)
from gpuinfra.kubernetes.serving_plan import PodPlan, colours

LWS_API = "leaderworkerset.x-k8s.io/v1"
KEDA_API = "keda.sh/v1alpha1"
STAGER = "stage_weights.py"


@dataclass(frozen=True)
class ModelServingArgs:
    cluster: ResolvedCluster
    pods: PodPlan
    namespace: str


def namespace_labels(pods: PodPlan) -> dict[str, str]:
    """Pod Security admission: `restricted` unless the pods need a hostPath cache or RDMA's IPC_LOCK, which only
    `privileged` admits; warnings and audit stay at `restricted` so every exception is visible."""
    level = "privileged" if pods.rdma or pods.cache == "node-nvme" else "restricted"
    return {"pod-security.kubernetes.io/enforce": level, "pod-security.kubernetes.io/warn": "restricted",
            "pod-security.kubernetes.io/audit": "restricted", f"{ANNOTATION}/rdma": str(pods.rdma).lower()}


def set_name(name: str, colour: str | None) -> str:
    """A serving set's workload, Service, budget and autoscaler name: NAME, or NAME-COLOUR under blue-green."""
    return f"{name}-{colour}" if colour else name


class ModelServing(pulumi.ComponentResource):
    workload_kind: str
    service_name: str

    def __init__(self, name: str, args: ModelServingArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:kubernetes:ModelServing", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        cluster, pods, ns = args.cluster, args.pods, args.namespace
        labels = app_labels(cluster)
        namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata={
            "name": ns, "labels": {**labels, **namespace_labels(pods)}}, opts=child)
        inside = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        meta = {"namespace": ns, "labels": labels}
        k8s.core.v1.ServiceAccount(f"{name}-sa", metadata={"name": name, **meta},
                                   automount_service_account_token=False, opts=inside)
        k8s.core.v1.ConfigMap(f"{name}-stager", metadata={"name": f"{name}-stager", **meta},
                              data={STAGER: asset(STAGER)}, opts=inside)
        k8s.core.v1.Service(f"{name}-pods", metadata={"name": f"{name}-pods", **meta},
                            spec=service_spec(cluster, pods, headless=True), opts=inside)
        sets = colours(cluster)
        # The clients' Service: the one serving set, or the active colour. Under blue-green the colours' own
        # Services are the scraped ones (job=inference), so no pod is counted twice.
        active = cluster.config.target.rollout.active if len(sets) > 1 else None
        scraped = {} if active else {JOB_LABEL: "inference"}
        k8s.core.v1.Service(f"{name}-api", metadata={"name": name, **meta, "labels": {**labels, **scraped}},
                            spec=service_spec(cluster, pods, headless=False, colour=active), opts=inside)
        k8s.networking.v1.NetworkPolicy(f"{name}-ingress", metadata={"name": name, **meta},
                                        spec=network_policy_spec(cluster, pods), opts=inside)
        for colour in sets:
            self._serving_set(name, args, meta, colour, inside)
        self.workload_kind = "StatefulSet" if pods.group_size == 1 else "LeaderWorkerSet"
        self.service_name = name
        self.register_outputs({"workload_kind": self.workload_kind, "service_name": self.service_name})

    def _serving_set(self, name: str, args: ModelServingArgs, meta: dict[str, Any], colour: str | None,
                     opts: pulumi.ResourceOptions) -> None:
        """One complete serving set: its workload, disruption budget and autoscaler, and under blue-green its own
        Service (to test the idle colour, and what Prometheus scrapes and KEDA queries)."""
        cluster, pods = args.cluster, args.pods
        own = set_name(name, colour)
        meta = {**meta, "labels": set_labels(cluster, colour)}
        service = name
        if colour:
            service = own
            k8s.core.v1.Service(f"{own}-api", metadata={"name": own, **meta, "labels": {
                **meta["labels"], JOB_LABEL: "inference"}}, spec=service_spec(cluster, pods, headless=False,
                                                                               colour=colour), opts=opts)
        target = self._workload(name, args, meta, colour, opts)
        k8s.policy.v1.PodDisruptionBudget(f"{own}-pdb", metadata={"name": own, **meta},
                                          spec=disruption_budget_spec(cluster, colour), opts=opts)
        self._autoscaler(own, args, meta, target, service, opts)

    def _workload(self, name: str, args: ModelServingArgs, meta: dict[str, Any], colour: str | None,
                  opts: pulumi.ResourceOptions) -> dict[str, str]:
        """The StatefulSet or LeaderWorkerSet, with spec.replicas left to the autoscaler when there is one."""
        cluster = args.cluster
        pods = colour_pods(cluster, args.pods, colour)
        own = set_name(name, colour)
        scaled = cluster.config.target.autoscaling.kind != "none"
        if scaled:
            opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["spec.replicas"]))

        def template(role: str) -> dict[str, Any]:
            return pod_template(cluster, args.pods, stager_config_map=f"{name}-stager", service_account=name,
                                role=role, colour=colour)

        meta = {**meta, "annotations": serving_skips(pods)}
        if pods.group_size == 1:
            k8s.apps.v1.StatefulSet(f"{own}-sts", metadata={"name": own, **meta}, spec=stateful_set_spec(
                cluster, pods, template=template("leader"), service_name=f"{name}-pods", colour=colour),
                opts=opts)
            return {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": own}
        k8s.apiextensions.CustomResource(
            f"{own}-lws", api_version=LWS_API, kind="LeaderWorkerSet", metadata={"name": own, **meta},
            spec=leader_worker_set_spec(cluster, pods, leader=template("leader"), worker=template("worker")),
            opts=opts)
        return {"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "name": own}

    def _autoscaler(self, name: str, args: ModelServingArgs, meta: dict[str, Any], target: dict[str, str],
                    service: str, opts: pulumi.ResourceOptions) -> None:
        """An HPA or a KEDA ScaledObject on the workload, never both; KEDA queries the set's own Service."""
        scaling = args.cluster.config.target.autoscaling
        if scaling.kind == "hpa":
            k8s.autoscaling.v2.HorizontalPodAutoscaler(f"{name}-hpa", metadata={"name": name, **meta},
                                                       spec=autoscaler_spec(args.cluster, args.pods, target=target),
                                                       opts=opts)
        elif scaling.kind == "keda":
            k8s.apiextensions.CustomResource(
                f"{name}-keda", api_version=KEDA_API, kind="ScaledObject", metadata={"name": name, **meta},
                spec=scaled_object_spec(args.cluster, args.pods, target=target, namespace=args.namespace,
                                        service=service, prometheus_url=scaling.prometheus_url), opts=opts)
