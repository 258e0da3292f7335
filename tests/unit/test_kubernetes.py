"""The Kubernetes target: the real program under Pulumi's mocks (the stand-in cloud of gpuinfra.preview), the
objects it declares checked against the sizing plan, kubernetes-validate (strict, at the stack's version),
and the pydantic models of the custom resources."""

from __future__ import annotations

import math
from functools import cache

import kubernetes_validate
import pytest
from gpuinfra.catalog import find_instance_type
from gpuinfra.errors import InfeasibleError, InputError
from gpuinfra.kubernetes.crds import custom_resource_model
from gpuinfra.kubernetes.manifests import kubernetes_objects
from gpuinfra.kubernetes.serving_plan import (
    ENGINE_WARMUP_S,
    PROBE_PERIOD_S,
    STARTUP_MARGIN,
    pod_plan,
    world_size_per_pod,
)
from gpuinfra.plan import resolve_stack
from gpuinfra.preview import PreviewResult, run_offline
from gpuinfra.sizing import GIB

STACKS = ["eks-70b", "eks-r1"]
EXISTING = ("target.kind=kubernetes", "target.context=prod-gpu", "capacity.type=on-demand")


@cache
def preview(stack: str, *sets: str) -> PreviewResult:
    return run_offline(resolve_stack(stack, sets=list(sets)))


@cache
def manifests(stack: str, *sets: str) -> tuple[dict, ...]:
    return tuple(kubernetes_objects(preview(stack, *sets).resources))


def one(stack: str, kind: str, *sets: str) -> dict:
    (found,) = [m for m in manifests(stack, *sets) if m["kind"] == kind and m["metadata"].get("namespace") == "llm"]
    return found


def pod_templates(stack: str, *sets: str) -> list[dict]:
    if one_or_none(stack, "StatefulSet", *sets):
        return [one(stack, "StatefulSet", *sets)["spec"]["template"]]
    lws = one(stack, "LeaderWorkerSet", *sets)["spec"]["leaderWorkerTemplate"]
    return [lws["leaderTemplate"], lws["workerTemplate"]]


def one_or_none(stack: str, kind: str, *sets: str) -> dict | None:
    found = [m for m in manifests(stack, *sets) if m["kind"] == kind]
    return found[0] if found else None


def engine(template: dict) -> dict:
    (container,) = template["spec"]["containers"]
    return container


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("stack", STACKS)
def test_every_object_passes_kubernetes_validate_strict_at_the_stack_version(stack):
    version = resolve_stack(stack).config.target.version
    checked = 0
    for manifest in manifests(stack):
        model = custom_resource_model(manifest)
        if model is None:
            kubernetes_validate.validate(manifest, version, strict=True)
        else:
            model.model_validate(manifest)
            for template in (manifest["spec"].get("leaderWorkerTemplate") or {}).values():
                if isinstance(template, dict):  # the pods inside an LWS, as core PodTemplates
                    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                                  "metadata": {"name": "t"}, "template": template}, version,
                                                 strict=True)
        checked += 1
    assert checked >= 15


def test_a_broken_object_fails_the_validation_used_above():
    statefulset = dict(one("eks-70b", "StatefulSet"))
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate({**statefulset, "spec": {**statefulset["spec"], "replica": 2}}, "1.33",
                                     strict=True)
    lws = one("eks-r1", "LeaderWorkerSet")
    with pytest.raises(ValueError):
        custom_resource_model(lws).model_validate({**lws, "spec": {**lws["spec"], "startupPolicy": "Ready"}})


def test_single_node_plan_is_a_statefulset_whose_pods_match_the_plan():
    cluster = resolve_stack("eks-70b")
    pods = pod_plan(cluster)
    assert one_or_none("eks-70b", "LeaderWorkerSet") is None
    statefulset = one("eks-70b", "StatefulSet")
    assert "replicas" not in statefulset["spec"]  # the HPA owns it
    (workload,) = [r for r in preview("eks-70b").resources if r.type == "kubernetes:apps/v1:StatefulSet"]
    assert workload.ignore_changes == ("spec.replicas",)
    container = engine(statefulset["spec"]["template"])
    argv = container["command"]
    assert argv[:2] == ["/usr/local/bin/vllm", "serve"]
    # The pod's GPU count is the plan's world size per pod (TP 4 on an 8-GPU node: two pods per node).
    assert container["resources"]["limits"]["nvidia.com/gpu"] == pods.gpus == 4 == int(
        flag(argv, "--tensor-parallel-size")) * int(flag(argv, "--pipeline-parallel-size"))
    assert pods.pods_per_node == 2
    assert int(flag(argv, "--max-model-len")) == cluster.config.context_tokens
    assert flag(argv, "--gpu-memory-utilization") == str(cluster.request.gpu_memory_utilization)
    # Every approved type may host the pod: the capacity flags are the smallest over the types.
    plans = [e.max_num_batched_tokens for e in cluster.evaluations]
    assert int(flag(argv, "--max-num-batched-tokens")) == min(plans)
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    terms = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms[0]["matchExpressions"][0]["values"] == ["p4de.24xlarge", "p5.48xlarge"]
    assert "vpc.amazonaws.com/efa" not in container["resources"]["limits"]  # one node: no RDMA


def test_shm_is_mounted_and_counted_in_the_memory_limit_when_a_pod_has_several_gpus():
    cluster = resolve_stack("eks-70b")
    pods = pod_plan(cluster)
    template = one("eks-70b", "StatefulSet")["spec"]["template"]
    shm = [v for v in template["spec"]["volumes"] if v["name"] == "dshm"]
    assert shm == [{"emptyDir": {"medium": "Memory", "sizeLimit": f"{pods.shm_gib}Gi"}, "name": "dshm"}]
    assert {"mountPath": "/dev/shm", "name": "dshm"} in engine(template)["volumeMounts"]
    primary = cluster.primary
    engine_ram = primary.host_ram_gib_required - 4.0 * (primary.gpus_per_node - pods.gpus)
    limits = engine(template)["resources"]["limits"]
    assert limits["memory"] == f"{math.ceil(engine_ram + pods.shm_gib)}Gi" == engine(template)["resources"][
        "requests"]["memory"]
    # A one-GPU pod has no shm volume.
    small = pod_plan(resolve_stack("eks-70b", sets=["model=deepseek-r1-distill-qwen-7b", "precision=bf16",
                                                    "instance_types=g6e.xlarge", "concurrency=1",
                                                    "context_tokens=8192", "nodes=2"]))
    assert small.gpus == 1 and small.shm_gib == 0


def test_startup_budget_comes_from_the_weights_and_the_disk():
    cluster = resolve_stack("eks-70b")
    pods = pod_plan(cluster)
    weights_gb = cluster.primary.weights_gib * GIB / 1e9
    nvme = min(find_instance_type(t).nvme.count for t in pods.instance_types)
    expected = math.ceil(weights_gb / nvme + ENGINE_WARMUP_S)
    assert pods.cold_start_s == expected
    probe = engine(one("eks-70b", "StatefulSet")["spec"]["template"])["startupProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": "http"}
    assert probe["failureThreshold"] == math.ceil(expected * STARTUP_MARGIN / PROBE_PERIOD_S)
    slow = pod_plan(resolve_stack("eks-70b", sets=["target.weights_cache.read_gbps=0.1"]))
    assert slow.startup_failure_threshold > 10 * pods.startup_failure_threshold / 2


def test_pods_are_hardened_and_take_the_token_from_a_secret():
    for stack in STACKS:
        for template in pod_templates(stack):
            spec = template["spec"]
            assert spec["automountServiceAccountToken"] is False
            assert spec["securityContext"]["runAsNonRoot"] is True
            for container in spec["containers"] + spec["initContainers"]:
                context = container["securityContext"]
                assert context["allowPrivilegeEscalation"] is False and context["privileged"] is False
                assert context["readOnlyRootFilesystem"] is True and context["capabilities"]["drop"] == ["ALL"]
                assert context["capabilities"].get("add", []) in ([], ["IPC_LOCK"])
                token = [e for e in container["env"] if e["name"] == "HF_TOKEN"]
                assert token == [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
                    "key": "token", "name": "hf-token", "optional": True}}}]
            rdma = template["metadata"]["annotations"]["gpuinfra.io/rdma"] == "true"
            assert ("add" in engine(template)["securityContext"]["capabilities"]) is rdma


def test_the_stager_verifies_the_weights_before_the_engine_starts():
    cluster = resolve_stack("eks-70b")
    template = one("eks-70b", "StatefulSet")["spec"]["template"]
    (stager,) = template["spec"]["initContainers"]
    assert stager["command"][:2] == ["python3", "/opt/gpuinfra/stage_weights.py"]
    assert stager["command"][2:4] == [cluster.config.weights.source, "/models/deepseek-r1-distill-llama-70b"]
    config_map = one("eks-70b", "ConfigMap")
    from gpuinfra.boot import asset

    assert config_map["data"]["stage_weights.py"] == asset("stage_weights.py")
    models = [v for v in template["spec"]["volumes"] if v["name"] == "models"]
    assert models == [{"hostPath": {"path": "/mnt/nvme/models", "type": "Directory"}, "name": "models"}]


def test_multi_node_plan_is_a_leader_worker_set_with_efa_on_every_pod():
    cluster = resolve_stack("eks-r1")
    pods = pod_plan(cluster)
    lws = one("eks-r1", "LeaderWorkerSet")["spec"]
    template = lws["leaderWorkerTemplate"]
    assert template["size"] == cluster.nodes_per_copy == 2
    assert template["restartPolicy"] == "RecreateGroupOnPodRestart"
    assert lws["startupPolicy"] == "LeaderReady"
    assert "replicas" not in lws
    efa = sum(1 for _ in range(find_instance_type("p5.48xlarge").efa.max_interfaces))
    leader, worker = engine(template["leaderTemplate"]), engine(template["workerTemplate"])
    for container in (leader, worker):
        assert container["resources"]["limits"]["vpc.amazonaws.com/efa"] == efa == 32
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 8 == world_size_per_pod(pods.serving)
        assert {"name": "FI_PROVIDER", "value": "efa"} in container["env"]
        assert container["securityContext"]["capabilities"]["add"] == ["IPC_LOCK"]
    assert flag(leader["command"], "--node-rank") == "0" and "--headless" not in leader["command"]
    assert flag(worker["command"], "--node-rank") == "$(LWS_WORKER_INDEX)" and "--headless" in worker["command"]
    assert flag(worker["command"], "--master-addr") == "$(LWS_LEADER_ADDRESS)"
    assert "startupProbe" in leader and leader["livenessProbe"]["httpGet"]["path"] == "/health"
    assert "exec" in worker["livenessProbe"]
    api = [m for m in manifests("eks-r1") if m["kind"] == "Service" and m["metadata"]["name"] == "gpuinfra-eks-r1"]
    assert api[0]["spec"]["selector"]["gpuinfra.io/role"] == "leader"
    assert template["workerTemplate"]["metadata"]["labels"]["gpuinfra.io/role"] == "worker"


def test_disruption_budget_and_autoscaler():
    for stack in STACKS:
        pdb = one(stack, "PodDisruptionBudget")
        assert pdb["spec"]["maxUnavailable"] == 1
        hpa = one(stack, "HorizontalPodAutoscaler")["spec"]
        assert hpa["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": "inference_latency_seconds"},
                                                            "target": {"type": "AverageValue",
                                                                       "averageValue": "500m"}}}]
        assert hpa["minReplicas"] == 2
        pods = pod_plan(resolve_stack(stack))
        assert hpa["behavior"]["scaleUp"]["stabilizationWindowSeconds"] == pods.cold_start_s
        assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 2 * pods.cold_start_s
        assert one_or_none(stack, "ScaledObject") is None
    assert one("eks-70b", "HorizontalPodAutoscaler")["spec"]["maxReplicas"] == 10
    assert one("eks-r1", "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"


def test_keda_replaces_the_hpa_never_both():
    sets = ("target.autoscaling.kind=keda",)
    assert one_or_none("eks-70b", "HorizontalPodAutoscaler", *sets) is None
    scaled = one("eks-70b", "ScaledObject", *sets)
    queries = [t["metadata"]["query"] for t in scaled["spec"]["triggers"]]
    assert any("inference_latency_seconds" in q for q in queries)
    assert any("vllm:num_requests_waiting" in q for q in queries)
    assert "replicas" not in one("eks-70b", "StatefulSet", *sets)["spec"]


def test_without_an_autoscaler_the_replicas_are_the_pools():
    statefulset = one("eks-70b", "StatefulSet", "target.autoscaling.kind=none", "nodes=2")
    assert statefulset["spec"]["replicas"] == 4  # 2 nodes x 2 copies of TP 4


def test_canary_partition_leaves_old_copies_serving():
    statefulset = one("eks-70b", "StatefulSet")
    assert statefulset["spec"]["updateStrategy"]["rollingUpdate"]["partition"] == 1  # min 2, 1 canary
    assert one("eks-r1", "LeaderWorkerSet")["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"][
        "partition"] == 0


def test_existing_cluster_by_context_creates_no_aws_resources():
    resources = preview("eks-70b", *EXISTING).resources
    assert not [r for r in resources if r.type.startswith("aws:")]
    (provider,) = [r for r in resources if r.type == "pulumi:providers:kubernetes"]
    assert provider.inputs["context"] == "prod-gpu"
    statefulset = one("eks-70b", "StatefulSet", *EXISTING)
    assert statefulset["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == \
        f"{math.ceil(resolve_stack('eks-70b').primary.nvme_gib_required)}Gi"


def test_eks_node_groups_come_from_the_shared_launch_templates():
    result = preview("eks-r1")
    (eks,) = [r for r in result.resources if r.type == "gpuinfra:kubernetes:EksCluster"]
    # The GPU groups and their templates are the cluster's own children; the system group is a component's.
    groups = [r for r in result.resources if r.type == "aws:eks/nodeGroup:NodeGroup" and r.parent == eks.name]
    templates = {r.name: r for r in result.resources if r.type == "aws:ec2/launchTemplate:LaunchTemplate"
                 and r.parent == eks.name}
    assert len(groups) == 1
    group = groups[0].inputs
    assert group["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
    assert group["labels"]["gpuinfra.io/instance-type"] == "p5.48xlarge"
    assert group["scalingConfig"]["minSize"] == 4 and group["scalingConfig"]["maxSize"] == 6  # 3 copies x 2
    (template,) = templates.values()
    inputs = template.inputs
    assert len(inputs["networkInterfaces"]) == 32 and inputs["networkInterfaces"][0]["interfaceType"] == "efa"
    assert inputs["metadataOptions"]["httpTokens"] == "required"
    assert inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
    assert inputs["placement"]["groupName"]
    assert "iamInstanceProfile" not in inputs and "instanceInitiatedShutdownBehavior" not in inputs
    import base64

    user_data = base64.b64decode(inputs["userData"]).decode()
    assert "multipart/mixed" in user_data and "gpuinfra-instance-store-raid" in user_data
    (cluster,) = [r for r in result.resources if r.type == "aws:eks/cluster:Cluster"]
    assert cluster.inputs["version"] == "1.33"
    assert cluster.inputs["encryptionConfig"]["resources"] == ["secrets"]
    assert cluster.inputs["vpcConfig"]["endpointPublicAccess"] is False
    plugins = {m["metadata"]["name"] for m in manifests("eks-r1") if m["kind"] == "DaemonSet"}
    assert plugins == {"nvidia-device-plugin", "aws-efa-k8s-device-plugin", "dcgm-exporter"}


def test_plan_outputs_describe_the_kubernetes_serving():
    outputs = preview("eks-r1").outputs["kubernetes"]
    assert outputs["workload"] == "LeaderWorkerSet" and outputs["replicas"] == {"min": 2, "max": 3}
    assert outputs["pod"]["gpus"] == 8 and outputs["pod"]["efa_devices"] == 32


@pytest.mark.parametrize(("sets", "path", "reason", "error"), [
    (["target.autoscaling.metric=e2e-p90"], "target.autoscaling.metric", "reasoning model", InputError),
    (["target.autoscaling.min_replicas=5", "target.autoscaling.max_replicas=3"],
     "target.autoscaling.min_replicas", "more than max_replicas", InputError),
    (["target.rollout.canary_replicas=2"], "target.rollout.canary_replicas", "not fewer", InputError),
    (["target.image=vllm/vllm-openai:latest"], "target.image", ":latest", InputError),
    (["endpoint.enabled=true"], "endpoint.enabled", "Service", InputError),
    (["target.autoscaling.min_replicas=6", "target.autoscaling.max_replicas=6"],
     "target.autoscaling.min_replicas", "need 3 nodes", InputError),
    (["target.autoscaling.max_replicas=20"], "target.autoscaling.max_replicas", "budget", InfeasibleError),
    (["target.kind=kubernetes"], "target.kubernetes.context", "Field required", InputError),
    (["target.version=1.20"], "target.eks.version", "quote it", InputError),
    (["target.version='1.20'"], "target.eks.version", "pattern", InputError),
    (["target.namespace=Bad_Name"], "target.eks.namespace", "pattern", InputError),
    (["target.replicas=3"], "target.eks.replicas", "unknown field", InputError),
])
def test_bad_kubernetes_stacks_are_refused_with_the_field(sets, path, reason, error):
    with pytest.raises(error) as caught:
        resolve_stack("eks-70b", sets=sets)
    assert any(p.path.removeprefix("cluster.") == path and reason in p.reason for p in caught.value.problems), \
        caught.value.problems


def test_multi_node_plan_without_an_efa_type_is_refused():
    with pytest.raises(InputError) as caught:
        resolve_stack("eks-r1", sets=["model=deepseek-r1-distill-qwen-32b", "precision=bf16", "kv_cache_dtype=auto",
                                      "instance_types=g6e.xlarge", "context_tokens=4096", "concurrency=1"])
    assert any("has no EFA" in p.reason for p in caught.value.problems)


def test_types_with_different_layouts_cannot_share_one_workload():
    with pytest.raises(InputError) as caught:
        resolve_stack("eks-70b", sets=["instance_types=p4de.24xlarge,g6e.48xlarge"])
    assert any(p.path == "cluster.instance_types.1" and "same layout" in p.reason for p in caught.value.problems), \
        caught.value.problems


def test_ec2_stacks_are_unchanged_by_the_target_block():
    resolved = resolve_stack("prod-70b")
    assert resolved.config.target.kind == "ec2"
    assert not [r for r in preview("prod-70b").resources if r.type.startswith("kubernetes:")]
