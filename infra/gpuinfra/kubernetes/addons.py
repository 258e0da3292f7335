"""Cluster add-ons the GPU nodes need, at pinned versions, as typed DaemonSets (no Helm chart: a chart is one
opaque resource to the mocks and the policy pack): the NVIDIA device plugin (the EKS NVIDIA AMI ships the
driver and the container toolkit, so the GPU Operator's would be off anyway), the AWS EFA device plugin and
the DCGM exporter (the image the Ansible monitoring role runs, from the catalog)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from gpuinfra.catalog import load_catalog
from gpuinfra.kubernetes.objects import GPU, JOB_LABEL, PINNED_IMAGE_SKIPS, checkov_skips

NVIDIA_DEVICE_PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.17.0"
EFA_DEVICE_PLUGIN_IMAGE = "602401143452.dkr.ecr.us-west-2.amazonaws.com/eks/aws-efa-k8s-device-plugin:v0.5.8"
SYSTEM_NAMESPACE = "kube-system"
MONITORING_NAMESPACE = "gpuinfra-system"
DCGM_LABELS = {"app.kubernetes.io/name": "dcgm-exporter", "app.kubernetes.io/managed-by": "gpuinfra"}
KUBELET_PLUGINS = "/var/lib/kubelet/device-plugins"


DEVICE_PLUGIN_SKIPS = {
    **PINNED_IMAGE_SKIPS,
    "CKV_K8S_23": "a device plugin registers with the kubelet through its root-owned socket directory",
    "CKV_K8S_40": "a device plugin registers with the kubelet through its root-owned socket directory",
    "CKV_K8S_8": "a device plugin serves no health endpoint; the kubelet drops its resources when it exits",
    "CKV_K8S_9": "a device plugin serves no health endpoint; the kubelet drops its resources when it exits",
}
EXPORTER_SKIPS = {
    **PINNED_IMAGE_SKIPS,
    "CKV_K8S_23": "DCGM reads every GPU's counters through the host engine, as root",
    "CKV_K8S_40": "DCGM reads every GPU's counters through the host engine, as root",
}


def network_policy(labels: dict[str, str], port: int | None) -> dict[str, Any]:
    """No ingress to a device plugin (it talks to the kubelet over a socket); the metrics port of an exporter."""
    return {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"],
            "ingress": [{"ports": [{"port": port, "protocol": "TCP"}]}] if port else []}


def locked_down(run_as_root: bool = True) -> dict[str, Any]:
    """A device plugin talks to the kubelet's socket as root, with no capability and no escalation."""
    return {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": not run_as_root,
            "seccompProfile": {"type": "RuntimeDefault"}}


def plugin_labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "gpuinfra"}


def node_daemon_set(name: str, *, image: str, instance_types: list[str], mounts: dict[str, str],
                    container: dict[str, Any] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A DaemonSet on the GPU node types only, tolerating their taint, mounting MOUNTS {host path: container path}."""
    labels = labels or plugin_labels(name)
    volumes = [{"name": f"host-{index}", "hostPath": {"path": host}} for index, host in enumerate(mounts)]
    main = {"name": name, "image": image, "imagePullPolicy": "IfNotPresent", "securityContext": locked_down(),
            "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}},
            "volumeMounts": [{"name": f"host-{index}", "mountPath": path}
                             for index, path in enumerate(mounts.values())], **(container or {})}
    return {
        "selector": {"matchLabels": labels},
        "updateStrategy": {"type": "RollingUpdate"},
        "template": {"metadata": {"labels": labels}, "spec": {
            "priorityClassName": "system-node-critical",
            "automountServiceAccountToken": False,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
                "matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                      "values": instance_types}]}]}}},
            "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "CriticalAddonsOnly", "operator": "Exists"}],
            "containers": [main],
            "volumes": volumes,
        }},
    }


def dcgm_exporter_container() -> dict[str, Any]:
    monitoring = load_catalog().software.monitoring
    health = {"httpGet": {"path": "/health", "port": "metrics"}, "periodSeconds": 30, "timeoutSeconds": 5}
    return {
        "args": ["-f", "/etc/dcgm-exporter/default-counters.csv"],
        "env": [{"name": "DCGM_EXPORTER_KUBERNETES", "value": "true"},
                {"name": "DCGM_EXPORTER_LISTEN", "value": f":{monitoring.dcgm_exporter_port}"}],
        "ports": [{"name": "metrics", "containerPort": monitoring.dcgm_exporter_port, "protocol": "TCP"}],
        # DCGM reads GPU counters through the NVIDIA runtime; SYS_ADMIN is what profiling metrics need and is
        # not granted: the default counters work without it.
        "readinessProbe": health, "livenessProbe": {**health, "failureThreshold": 3},
    }


@dataclass(frozen=True)
class GpuAddonsArgs:
    instance_types: list[str]
    efa: bool  # any approved type has EFA


class GpuAddons(pulumi.ComponentResource):
    """Device plugins for nvidia.com/gpu and vpc.amazonaws.com/efa, and the DCGM exporter with its Service."""

    dcgm_namespace: str
    dcgm_labels: dict[str, str]

    def __init__(self, name: str, args: GpuAddonsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:kubernetes:GpuAddons", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        types = args.instance_types
        plugin_annotations = checkov_skips(DEVICE_PLUGIN_SKIPS)
        plugins = ["nvidia-device-plugin", *(["aws-efa-k8s-device-plugin"] if args.efa else [])]
        for plugin in plugins:
            k8s.networking.v1.NetworkPolicy(f"{name}-{plugin}", metadata={
                "name": plugin, "namespace": SYSTEM_NAMESPACE}, spec=network_policy(plugin_labels(plugin), None),
                opts=child)
        k8s.apps.v1.DaemonSet(f"{name}-nvidia-device-plugin", metadata={
            "name": "nvidia-device-plugin", "namespace": SYSTEM_NAMESPACE, "annotations": plugin_annotations},
            spec=node_daemon_set(
            "nvidia-device-plugin", image=NVIDIA_DEVICE_PLUGIN_IMAGE, instance_types=types,
            mounts={KUBELET_PLUGINS: KUBELET_PLUGINS}, container={"env": [
                {"name": "FAIL_ON_INIT_ERROR", "value": "true"}, {"name": "DEVICE_LIST_STRATEGY", "value": "envvar"}]}),
            opts=child)
        if args.efa:
            k8s.apps.v1.DaemonSet(f"{name}-efa-device-plugin", metadata={
                "name": "aws-efa-k8s-device-plugin", "namespace": SYSTEM_NAMESPACE, "annotations": plugin_annotations},
                spec=node_daemon_set(
                "aws-efa-k8s-device-plugin", image=EFA_DEVICE_PLUGIN_IMAGE, instance_types=types,
                mounts={KUBELET_PLUGINS: KUBELET_PLUGINS, "/dev/infiniband": "/dev/infiniband"}), opts=child)
        namespace = k8s.core.v1.Namespace(f"{name}-monitoring", metadata={"name": MONITORING_NAMESPACE, "labels": {
            "pod-security.kubernetes.io/enforce": "privileged", "pod-security.kubernetes.io/warn": "restricted"}},
            opts=child)
        inside = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        k8s.networking.v1.NetworkPolicy(f"{name}-dcgm-exporter", metadata={
            "name": "dcgm-exporter", "namespace": MONITORING_NAMESPACE}, spec=network_policy(
            DCGM_LABELS, load_catalog().software.monitoring.dcgm_exporter_port), opts=inside)
        k8s.apps.v1.DaemonSet(f"{name}-dcgm-exporter", metadata={
            "name": "dcgm-exporter", "namespace": MONITORING_NAMESPACE, "labels": DCGM_LABELS,
            "annotations": checkov_skips(EXPORTER_SKIPS)}, spec=node_daemon_set(
            "dcgm-exporter", image=load_catalog().software.monitoring.dcgm_exporter_image, instance_types=types,
            mounts={"/var/lib/kubelet/pod-resources": "/var/lib/kubelet/pod-resources"},
            container=dcgm_exporter_container(), labels=DCGM_LABELS), opts=inside)
        k8s.core.v1.Service(f"{name}-dcgm", metadata={
            "name": "dcgm-exporter", "namespace": MONITORING_NAMESPACE, "labels": {**DCGM_LABELS, JOB_LABEL: "dcgm"}},
            spec={"selector": DCGM_LABELS, "ports": [{"name": "metrics", "port": load_catalog().software.monitoring
                                                      .dcgm_exporter_port, "targetPort": "metrics"}]}, opts=inside)
        self.dcgm_namespace = MONITORING_NAMESPACE
        self.dcgm_labels = {**DCGM_LABELS, JOB_LABEL: "dcgm"}
        self.register_outputs({"dcgm_namespace": self.dcgm_namespace})
