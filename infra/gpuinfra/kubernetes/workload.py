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
    app_labels,
    autoscaler_spec,
    disruption_budget_spec,
    leader_worker_set_spec,
    network_policy_spec,
    pod_template,
    scaled_object_spec,
    service_spec,
    serving_skips,
    stateful_set_spec,
)
from gpuinfra.kubernetes.serving_plan import PodPlan

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
        k8s.core.v1.Service(f"{name}-api", metadata={"name": name, **meta, "labels": {
            **labels, f"{ANNOTATION}/job": "inference"}}, spec=service_spec(cluster, pods, headless=False), opts=inside)
        k8s.networking.v1.NetworkPolicy(f"{name}-ingress", metadata={"name": name, **meta},
                                        spec=network_policy_spec(cluster, pods), opts=inside)
        target = self._workload(name, args, meta, inside)
        k8s.policy.v1.PodDisruptionBudget(f"{name}-pdb", metadata={"name": name, **meta},
                                          spec=disruption_budget_spec(cluster), opts=inside)
        self._autoscaler(name, args, meta, target, inside)
        self.workload_kind = target["kind"]
        self.service_name = name
        self.register_outputs({"workload_kind": self.workload_kind, "service_name": self.service_name})

    def _workload(self, name: str, args: ModelServingArgs, meta: dict[str, Any],
                  opts: pulumi.ResourceOptions) -> dict[str, str]:
        """The StatefulSet or LeaderWorkerSet, with spec.replicas left to the autoscaler when there is one."""
        cluster, pods = args.cluster, args.pods
        scaled = cluster.config.target.autoscaling.kind != "none"
        if scaled:
            opts = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(ignore_changes=["spec.replicas"]))

        def template(role: str) -> dict[str, Any]:
            return pod_template(cluster, pods, stager_config_map=f"{name}-stager", service_account=name, role=role)

        meta = {**meta, "annotations": serving_skips(pods)}
        if pods.group_size == 1:
            k8s.apps.v1.StatefulSet(f"{name}-sts", metadata={"name": name, **meta}, spec=stateful_set_spec(
                cluster, pods, name=name, template=template("leader"), service_name=f"{name}-pods"), opts=opts)
            return {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name}
        k8s.apiextensions.CustomResource(
            f"{name}-lws", api_version=LWS_API, kind="LeaderWorkerSet", metadata={"name": name, **meta},
            spec=leader_worker_set_spec(cluster, pods, leader=template("leader"), worker=template("worker")),
            opts=opts)
        return {"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "name": name}

    def _autoscaler(self, name: str, args: ModelServingArgs, meta: dict[str, Any], target: dict[str, str],
                    opts: pulumi.ResourceOptions) -> None:
        """An HPA or a KEDA ScaledObject on the workload, never both."""
        scaling = args.cluster.config.target.autoscaling
        if scaling.kind == "hpa":
            k8s.autoscaling.v2.HorizontalPodAutoscaler(f"{name}-hpa", metadata={"name": name, **meta},
                                                       spec=autoscaler_spec(args.cluster, args.pods, target=target),
                                                       opts=opts)
        elif scaling.kind == "keda":
            k8s.apiextensions.CustomResource(
                f"{name}-keda", api_version=KEDA_API, kind="ScaledObject", metadata={"name": name, **meta},
                spec=scaled_object_spec(args.cluster, args.pods, target=target, namespace=args.namespace,
                                        service=name, prometheus_url=scaling.prometheus_url), opts=opts)
