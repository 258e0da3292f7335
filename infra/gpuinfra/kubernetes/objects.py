"""The serving objects as manifests (camelCase dicts, exactly what the API server receives), from a PodPlan.

Pure functions: the components in workload.py pass these to typed pulumi-kubernetes resources, and the tests
read them directly. Labels and annotations under `gpuinfra.io/` carry the serving request and the RDMA flag,
so the policy pack can size a pod against its plan the way it sizes a launch template from its tags.
"""

from __future__ import annotations

from typing import Any

from gpuinfra.config import ResolvedCluster
from gpuinfra.kubernetes.serving_plan import (
    MAX_STABILIZATION_S,
    MODELS_MOUNT,
    NODE_MODELS_DIR,
    PROBE_PERIOD_S,
    PodPlan,
    replica_bounds,
)
from gpuinfra.request import ANNOTATION_PREFIX, ServingRequest

ANNOTATION = ANNOTATION_PREFIX.rstrip("/")
RDMA_ANNOTATION = f"{ANNOTATION}/rdma"
ROLE_LABEL = f"{ANNOTATION}/role"
COLOUR_LABEL = f"{ANNOTATION}/colour"  # blue-green: which serving set a pod, Service or autoscaler belongs to
JOB_LABEL = f"{ANNOTATION}/job"  # the ServiceMonitors' jobLabel: `job` is "inference", as in the Ansible scrape
RUN_AS = 10001  # a high UID, not one a node's users have (checkov CKV_K8S_40)
STAGER_DIR = "/opt/gpuinfra"
SCRATCH = "/scratch"  # HOME and every cache the engine writes (the root filesystem is read-only)
LATENCY_METRIC = "inference_latency_seconds"
GPU = "nvidia.com/gpu"
EFA = "vpc.amazonaws.com/efa"
# NCCL's socket fallback must not pick the EKS Pod Identity link or the CNI's interfaces (aws-do-eks PR#54).
NCCL_SOCKET_IFNAME = "^lo,docker,veth,eni,pod-id-link0"


# checkov (Kubernetes framework) checks these objects; each check they do not meet is skipped on the object
# itself, with its reason, so the exception is in the manifest for every reviewer to see.
PINNED_IMAGE_SKIPS = {
    "CKV_K8S_15": "the image is pinned by version; IfNotPresent keeps a pod start off the registry's availability",
    "CKV_K8S_43": "pinned by version, not digest: the offline plan cannot ask the registry; give target.image with "
                  "@sha256 to pin a digest",
}
SERVING_SKIPS = {
    **PINNED_IMAGE_SKIPS,
    "CKV_K8S_35": "the stager and huggingface_hub read HF_TOKEN from the environment; its value comes from a "
                  "Secret by secretKeyRef, never from the manifest",
}


def checkov_skips(reasons: dict[str, str]) -> dict[str, str]:
    """checkov's per-object skip annotations (checkov.io/skipN: CHECK_ID=reason)."""
    return {f"checkov.io/skip{index}": f"{check}={reason}"
            for index, (check, reason) in enumerate(sorted(reasons.items()), start=1)}


def serving_skips(pods: PodPlan) -> dict[str, str]:
    skips = dict(SERVING_SKIPS)
    if pods.rdma:
        skips["CKV_K8S_25"] = ("IPC_LOCK only: EFA pins memory for RDMA; the pod's gpuinfra.io/rdma flag says so and "
                               "the k8s-no-privileged-pods policy allows nothing else")
    if "@sha256:" in pods.image:
        del skips["CKV_K8S_43"]
    return checkov_skips(skips)


def network_policy_spec(cluster: ResolvedCluster, pods: PodPlan) -> dict[str, Any]:
    """Ingress to the serving pods: the API port from anywhere in the cluster (clients, Prometheus), and every
    port from the model's own pods (a group's ranks talk NCCL on ports they pick)."""
    labels = app_labels(cluster)
    return {"podSelector": {"matchLabels": labels}, "policyTypes": ["Ingress"], "ingress": [
        {"from": [{"podSelector": {"matchLabels": labels}}]},
        {"ports": [{"port": pods.port, "protocol": "TCP"}]},
    ]}


def app_labels(cluster: ResolvedCluster) -> dict[str, str]:
    return {"app.kubernetes.io/name": "gpuinfra-serving", "app.kubernetes.io/instance": cluster.stack,
            "app.kubernetes.io/managed-by": "gpuinfra"}


def set_labels(cluster: ResolvedCluster, colour: str | None) -> dict[str, str]:
    """The labels of one serving set: the app's, plus its colour under blue-green."""
    return {**app_labels(cluster), **({COLOUR_LABEL: colour} if colour else {})}


def colour_pods(cluster: ResolvedCluster, pods: PodPlan, colour: str | None) -> PodPlan:
    """The pod plan of one serving set: a colour may run its own image (the release it is trying out)."""
    image = getattr(cluster.config.target.rollout.images, colour) if colour else None
    return pods.model_copy(update={"image": image}) if image else pods


def request_annotations(cluster: ResolvedCluster, pods: PodPlan) -> dict[str, str]:
    """The serving request, the plan's shape and the RDMA flag, for the policy pack (as the EC2 tags are)."""
    return {
        **ServingRequest.of(cluster.request).to_labels(ANNOTATION_PREFIX),
        f"{ANNOTATION}/nodes-per-copy": str(pods.group_size),
        f"{ANNOTATION}/autoscaling-metric": cluster.config.target.autoscaling.metric,
        RDMA_ANNOTATION: "true" if pods.rdma else "false",
        # Consolidation would evict a pod that takes minutes to load its weights again.
        "karpenter.sh/do-not-disrupt": "true",
    }


def resources(pods: PodPlan) -> dict[str, Any]:
    amounts = {GPU: pods.gpus, "memory": f"{pods.memory_gib}Gi"}
    if pods.efa_devices:
        amounts[EFA] = pods.efa_devices
    return {"requests": {**amounts, "cpu": str(pods.cpu)}, "limits": {**amounts, "cpu": str(pods.cpu_limit)}}


def security_context(rdma: bool) -> dict[str, Any]:
    """Non-root, read-only root, no privilege escalation, every capability dropped; RDMA adds IPC_LOCK only
    (pinned memory for EFA), and only where the pod's gpuinfra.io/rdma annotation says so."""
    capabilities: dict[str, Any] = {"drop": ["ALL"]}
    if rdma:
        capabilities["add"] = ["IPC_LOCK"]
    return {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
            "runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "capabilities": capabilities,
            "seccompProfile": {"type": "RuntimeDefault"}}


def engine_env(cluster: ResolvedCluster, pods: PodPlan) -> list[dict[str, Any]]:
    secret = cluster.config.target.hf_token_secret
    env: list[dict[str, Any]] = [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret.name, "key": secret.key,
                                                            "optional": secret.optional}}},
        {"name": "HF_HUB_OFFLINE", "value": "1"},  # the stager has put and verified every file
        {"name": "HOME", "value": SCRATCH},
        {"name": "XDG_CACHE_HOME", "value": f"{SCRATCH}/.cache"},
        {"name": "XDG_CONFIG_HOME", "value": f"{SCRATCH}/.config"},
        {"name": "TRITON_CACHE_DIR", "value": f"{SCRATCH}/.triton"},
        {"name": "VLLM_CACHE_ROOT", "value": f"{SCRATCH}/vllm"},
    ]
    if pods.rdma:
        env += [{"name": "FI_PROVIDER", "value": "efa"}, {"name": "FI_EFA_USE_DEVICE_RDMA", "value": "1"},
                {"name": "NCCL_SOCKET_IFNAME", "value": NCCL_SOCKET_IFNAME}]
    return env


def http_probes(pods: PodPlan) -> dict[str, Any]:
    """/health: the startup budget from the weights and the disk, then readiness every 5 s, liveness every 30 s."""
    health = {"httpGet": {"path": "/health", "port": "http"}, "timeoutSeconds": 5}
    return {
        "startupProbe": {**health, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": pods.startup_failure_threshold},
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 3},
        "livenessProbe": {**health, "periodSeconds": 30, "failureThreshold": 3},
    }


def worker_probes(pods: PodPlan) -> dict[str, Any]:
    """A headless rank serves no HTTP: it is alive while its leader's port answers (its own crash restarts the
    container, and RecreateGroupOnPodRestart restarts the group)."""
    dial = {"exec": {"command": ["python3", "-c", "import os, socket; socket.create_connection((os.environ["
                                 f"'LWS_LEADER_ADDRESS'], {pods.port}), 5).close()"]}, "timeoutSeconds": 10}
    return {
        "startupProbe": {**dial, "periodSeconds": PROBE_PERIOD_S, "failureThreshold": pods.startup_failure_threshold},
        "readinessProbe": {**dial, "periodSeconds": 10, "failureThreshold": 3},
        "livenessProbe": {**dial, "periodSeconds": 30, "failureThreshold": 3},
    }


def volume_mounts(pods: PodPlan, *, stager: bool) -> list[dict[str, Any]]:
    mounts = [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": not stager},
              {"name": "scratch", "mountPath": SCRATCH}, {"name": "tmp", "mountPath": "/tmp"}]
    if stager:
        mounts.append({"name": "stager", "mountPath": STAGER_DIR, "readOnly": True})
    elif pods.shm_gib:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    return mounts


def volumes(pods: PodPlan, stager_config_map: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = [
        {"name": "scratch", "emptyDir": {"sizeLimit": "20Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "4Gi"}},
        {"name": "stager", "configMap": {"name": stager_config_map, "defaultMode": 0o555}},
    ]
    if pods.shm_gib:
        # Memory-backed: what a rank writes here counts against the memory limit, which includes it.
        result.append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": f"{pods.shm_gib}Gi"}})
    if pods.cache == "node-nvme":
        result.append({"name": "models", "hostPath": {"path": NODE_MODELS_DIR, "type": "Directory"}})
    return result


def stager_container(cluster: ResolvedCluster, pods: PodPlan) -> dict[str, Any]:
    weights = cluster.config.weights
    return {
        "name": "stage-weights",
        "image": pods.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["python3", f"{STAGER_DIR}/stage_weights.py", weights.source, pods.model_dir,
                    "--revision", weights.revision or "main"],
        "env": engine_env(cluster, pods)[:1] + [{"name": "HOME", "value": SCRATCH}],
        "resources": {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "8", "memory": "4Gi"}},
        "securityContext": security_context(rdma=False),
        "volumeMounts": volume_mounts(pods, stager=True),
    }


def engine_container(cluster: ResolvedCluster, pods: PodPlan, *, leader: bool) -> dict[str, Any]:
    argv = pods.leader_argv if leader else pods.worker_argv
    assert argv is not None
    container = {
        "name": "engine",
        "image": pods.image,
        "imagePullPolicy": "IfNotPresent",
        "command": argv,
        "env": engine_env(cluster, pods),
        "ports": [{"name": "http", "containerPort": pods.port, "protocol": "TCP"}],
        "resources": resources(pods),
        "securityContext": security_context(pods.rdma),
        "volumeMounts": volume_mounts(pods, stager=False),
    }
    container.update(http_probes(pods) if leader else worker_probes(pods))
    return container


def pod_template(cluster: ResolvedCluster, pods: PodPlan, *, stager_config_map: str, service_account: str,
                 role: str, colour: str | None = None) -> dict[str, Any]:
    """One pod of the model: `role` is leader (a StatefulSet pod, or rank 0 of a group) or worker; COLOUR
    the serving set under blue-green (its image may differ)."""
    leader = role == "leader"
    pods = colour_pods(cluster, pods, colour)
    spec: dict[str, Any] = {
        "serviceAccountName": service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 60,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{
            "matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In",
                                  "values": pods.instance_types}]}]}}},
        "tolerations": [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}],
        "initContainers": [stager_container(cluster, pods)],
        "containers": [engine_container(cluster, pods, leader=leader)],
        "volumes": volumes(pods, stager_config_map),
    }
    labels = {**set_labels(cluster, colour), ROLE_LABEL: role, JOB_LABEL: "inference"}
    return {"metadata": {"labels": labels, "annotations": request_annotations(cluster, pods)}, "spec": spec}


def partition(cluster: ResolvedCluster, pods: PodPlan) -> int:
    """canary: the copies below this ordinal keep the old template; with an autoscaler above min_replicas, every
    copy it adds takes the new one too."""
    rollout = cluster.config.target.rollout
    if rollout.strategy != "canary":
        return 0
    return replica_bounds(cluster, pods)[0] - rollout.canary_replicas


def claim_templates(cluster: ResolvedCluster, pods: PodPlan) -> list[dict[str, Any]]:
    if pods.cache != "volume-claim":
        return []
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {
        "storage": f"{pods.cache_gib}Gi"}}}
    storage_class = cluster.config.target.weights_cache.storage_class
    if storage_class:
        spec["storageClassName"] = storage_class
    return [{"metadata": {"name": "models"}, "spec": spec}]


def stateful_set_spec(cluster: ResolvedCluster, pods: PodPlan, *, template: dict[str, Any],
                      service_name: str, colour: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceName": service_name,
        "podManagementPolicy": "Parallel",  # copies are independent: start them together
        "selector": {"matchLabels": {**set_labels(cluster, colour), ROLE_LABEL: "leader"}},
        "template": template,
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition(cluster, pods)}},
    }
    if cluster.config.target.autoscaling.kind == "none":
        spec["replicas"] = replica_bounds(cluster, pods)[0]
    claims = claim_templates(cluster, pods)
    if claims:
        spec["volumeClaimTemplates"] = claims
        spec["persistentVolumeClaimRetentionPolicy"] = {"whenDeleted": "Retain", "whenScaled": "Retain"}
    return spec


def leader_worker_set_spec(cluster: ResolvedCluster, pods: PodPlan, *, leader: dict[str, Any],
                           worker: dict[str, Any]) -> dict[str, Any]:
    """A group of `group_size` pods per copy: restarted together, workers only once the leader is ready."""
    spec: dict[str, Any] = {
        "leaderWorkerTemplate": {"size": pods.group_size, "restartPolicy": "RecreateGroupOnPodRestart",
                                 "leaderTemplate": leader, "workerTemplate": worker},
        "startupPolicy": "LeaderReady",
        "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {
            "partition": partition(cluster, pods), "maxUnavailable": 1, "maxSurge": 0}},
    }
    if cluster.config.target.autoscaling.kind == "none":
        spec["replicas"] = replica_bounds(cluster, pods)[0]
    return spec


def service_spec(cluster: ResolvedCluster, pods: PodPlan, *, headless: bool,
                 colour: str | None = None) -> dict[str, Any]:
    """The clients' Service selects leaders only (rank 0 serves the API), of COLOUR's set under blue-green
    (the active one for the clients' Service); the headless one names the pods of every set."""
    selector = {**set_labels(cluster, colour), ROLE_LABEL: "leader"}
    spec: dict[str, Any] = {"selector": selector, "ports": [{"name": "http", "port": pods.port,
                                                           "targetPort": "http", "protocol": "TCP"}]}
    if headless:
        spec.update({"clusterIP": "None", "publishNotReadyAddresses": True})
    else:
        spec["type"] = "ClusterIP"
    return spec


def disruption_budget_spec(cluster: ResolvedCluster, colour: str | None = None) -> dict[str, Any]:
    """One pod (group member) of each serving set down at a time; under blue-green each colour serves on its own
    (the idle one is the fallback), so each has its budget."""
    return {"maxUnavailable": 1, "selector": {"matchLabels": set_labels(cluster, colour)}}


def scaling_behavior(pods: PodPlan) -> dict[str, Any]:
    """Scale up only for load that outlasts a cold start (a loading copy is not fresh capacity); scale down
    slowly, one copy at a time, never inside twice the cold start."""
    up = min(MAX_STABILIZATION_S, pods.cold_start_s)
    down = min(MAX_STABILIZATION_S, max(600, 2 * pods.cold_start_s))
    return {
        "scaleUp": {"stabilizationWindowSeconds": up, "selectPolicy": "Max",
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": min(1800, max(60, up))}]},
        "scaleDown": {"stabilizationWindowSeconds": down, "selectPolicy": "Min",
                      "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}]},
    }


def millis(seconds: float) -> str:
    return f"{round(seconds * 1000)}m"


def autoscaler_spec(cluster: ResolvedCluster, pods: PodPlan, *, target: dict[str, str]) -> dict[str, Any]:
    """autoscaling/v2 on the pods' `inference_latency_seconds` (TTFT p90 by default; leaders only for an LWS,
    whose scale subresource selects its leaders)."""
    scaling = cluster.config.target.autoscaling
    return {
        "scaleTargetRef": target,
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": [{"type": "Pods", "pods": {"metric": {"name": LATENCY_METRIC}, "target": {
            "type": "AverageValue", "averageValue": millis(scaling.target_seconds)}}}],
        "behavior": scaling_behavior(pods),
    }


def scaled_object_spec(cluster: ResolvedCluster, pods: PodPlan, *, target: dict[str, str], namespace: str,
                       service: str, prometheus_url: str) -> dict[str, Any]:
    """KEDA on the same latency plus the queue; KEDA owns the HPA it creates, so none of ours targets this.
    The leaders' Service is the only one scraped, so its series are the copies'."""
    scaling = cluster.config.target.autoscaling
    selector = f'namespace="{namespace}",service="{service}"'
    behavior = scaling_behavior(pods)
    return {
        "scaleTargetRef": {"apiVersion": target["apiVersion"], "kind": target["kind"], "name": target["name"]},
        "minReplicaCount": scaling.min_replicas,
        "maxReplicaCount": scaling.max_replicas,
        "pollingInterval": 30,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": behavior}},
        "triggers": [
            {"type": "prometheus", "metricType": "AverageValue", "metadata": {
                "serverAddress": prometheus_url, "threshold": str(scaling.target_seconds),
                "query": f"sum({LATENCY_METRIC}{{{selector}}})"}},
            {"type": "prometheus", "metricType": "AverageValue", "metadata": {
                "serverAddress": prometheus_url, "threshold": str(scaling.queue_per_replica),
                "query": f"sum(vllm:num_requests_waiting{{{selector}}})"}},
        ],
    }
