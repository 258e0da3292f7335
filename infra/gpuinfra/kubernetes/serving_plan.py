"""From the sizing plan to the serving pods: every number a Kubernetes object carries is derived here, once.

A copy of the model that fits one node is a StatefulSet replica; a copy that spans nodes (pipeline parallel
over EFA) is a LeaderWorkerSet group of `nodes_per_copy` pods, one per node. The pod's GPU count is the
plan's world size per pod; its memory limit is the engine's host-RAM need plus the /dev/shm it mounts; its
startup budget comes from the weights it reads and the cache's read speed. The engine's argv comes from the
same function as the Ansible unit's (gpuinfra.serving_command).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gpuinfra.boot import DEFAULT_MOUNT
from gpuinfra.catalog import InstanceType, find_model, load_catalog
from gpuinfra.config import ResolvedCluster
from gpuinfra.contract import serving_plan
from gpuinfra.efa import efa_interfaces
from gpuinfra.errors import InfeasibleError, InputError, Problem
from gpuinfra.kubernetes.target import COLOURS, ClusterTarget, EksTarget, cache_kind
from gpuinfra.serving_command import serve_argv
from gpuinfra.sizing import GIB, HOST_RAM_PER_GPU_GIB, VCPUS_PER_GPU

MODELS_MOUNT = "/models"  # in the container; the node's RAID holds them at DEFAULT_MOUNT/models
NODE_MODELS_DIR = f"{DEFAULT_MOUNT}/models"
ENGINE_PREFIX = "/usr/local"  # the vllm/vllm-openai image installs `vllm` in /usr/local/bin
SHM_GIB_PER_GPU = 2  # NCCL's intra-node buffers and vLLM's shared-memory broadcast, per rank in the pod
NVME_READ_GBPS_PER_DEVICE = 1.0  # conservative sequential read of one instance-store NVMe device
CLAIM_READ_GBPS = 0.25  # a gp3 volume at its default throughput is 0.125 GB/s; io2/gp3 tuned reach more
ENGINE_WARMUP_S = 300  # torch.compile and CUDA-graph capture after the weights are in GPU memory
STARTUP_MARGIN = 2.0  # a cold page cache, a first compile: the probe may wait twice the expected time
PROBE_PERIOD_S = 10
MAX_STABILIZATION_S = 3600  # the HPA's own ceiling on a stabilization window
# Fields that must agree across every instance type one workload may land on; the capacity numbers
# (max_num_seqs, max_num_batched_tokens) take the smallest, which is valid on each.
LAYOUT_FIELDS = ("tensor_parallel", "pipeline_parallel", "data_parallel", "expert_parallel",
                 "enable_expert_parallel", "replicas_per_node", "nodes", "max_model_len", "gpu_memory_utilization",
                 "quantization", "kv_cache_dtype")
CAPACITY_FIELDS = ("max_num_seqs", "max_num_batched_tokens")


class PodPlan(BaseModel):
    """One serving pod: a StatefulSet replica, or one member (leader or worker) of a LeaderWorkerSet group."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    instance_types: list[str] = Field(description="Node types the pod may run on (the sizing-approved ones)")
    gpus: int = Field(description="nvidia.com/gpu per pod: the plan's world size per pod, TP x PP x DP / nodes")
    group_size: int = Field(description="Pods per model copy (nodes per copy); 1 is a StatefulSet")
    pods_per_node: int = Field(description="Copies a node holds (the plan's replicas per node)")
    shm_gib: int = Field(description="/dev/shm size (memory-backed emptyDir); 0 for a one-GPU pod")
    memory_gib: int = Field(description="Memory request = limit: the engine's host-RAM need plus shm")
    cpu: int = Field(description="CPU request, from the engine's vCPU need")
    cpu_limit: int = Field(description="CPU limit: the pod's share of the node")
    efa_devices: int = Field(description="vpc.amazonaws.com/efa per pod (every pod of a group); 0 on one node")
    rdma: bool = Field(description="The pod uses RDMA (EFA): IPC_LOCK, the one capability it adds")
    cache: str = Field(description="node-nvme or volume-claim")
    cache_gib: int = Field(description="Space the weights take in the cache (the sizing's NVMe need)")
    read_gbps: float = Field(description="The cache's read speed used for the startup budget")
    cold_start_s: int = Field(description="Expected time from container start to ready")
    startup_failure_threshold: int = Field(description="Startup probe tries, every PROBE_PERIOD_S seconds")
    image: str
    port: int
    model_dir: str = Field(description="The weights in the container")
    leader_argv: list[str] = Field(description="The engine's argv on rank 0 (a StatefulSet pod or a leader)")
    worker_argv: list[str] | None = Field(description="The argv of the other ranks of a group (LWS workers)")
    serving: dict[str, Any] = Field(description="The serving plan the argv came from")


def default_image() -> str:
    return f"vllm/vllm-openai:v{load_catalog().software.inference_engines['vllm'].version}"


def common_serving_plan(cluster: ResolvedCluster) -> dict[str, Any]:
    """The serving plan every approved type shares (layout equal; capacity the smallest), else an error."""
    hf_repo = find_model(cluster.config.model).hf_repo
    plans = [serving_plan(cluster.request, e, port=cluster.config.endpoint.port, hf_repo=hf_repo)
             for e in cluster.evaluations]
    first = plans[0]
    problems = []
    for index, (plan, evaluation) in enumerate(zip(plans[1:], cluster.evaluations[1:], strict=True), start=1):
        differs = [f"{key} {plan[key]} (not {first[key]})" for key in LAYOUT_FIELDS if plan[key] != first[key]]
        if differs:
            problems.append(Problem(f"cluster.instance_types.{index}", f"one workload serves every approved type, "
                                    f"but {evaluation.instance_type} plans {', '.join(differs)} against "
                                    f"{cluster.evaluations[0].instance_type}: list types with the same layout"))
    if problems:
        raise InputError(problems)
    return {**first, **{key: min(plan[key] for plan in plans) for key in CAPACITY_FIELDS}}


def world_size_per_pod(plan: dict[str, Any]) -> int:
    return plan["tensor_parallel"] * plan["pipeline_parallel"] * max(1, plan["data_parallel"]) // plan["nodes"]


def read_speed(cluster: ResolvedCluster, cache: str) -> float:
    configured = cluster.config.target.weights_cache.read_gbps
    if configured:
        return configured
    if cache == "volume-claim":
        return CLAIM_READ_GBPS
    return min(max(1, i.nvme.count) * NVME_READ_GBPS_PER_DEVICE for i in cluster.instance_types)


def startup(weights_gib: float, group_size: int, read_gbps: float) -> tuple[int, int]:
    """(expected cold start s, startup probe failureThreshold): each pod reads its share of the weights."""
    read_s = weights_gib * GIB / 1e9 / group_size / read_gbps
    cold = math.ceil(read_s + ENGINE_WARMUP_S)
    return cold, math.ceil(cold * STARTUP_MARGIN / PROBE_PERIOD_S)


def engine_argv(plan: dict[str, Any], model_dir: str) -> tuple[list[str], list[str] | None]:
    """Rank 0's argv and, for a group, the workers' (their rank is the pod's LWS_WORKER_INDEX)."""
    if plan["nodes"] == 1:
        return serve_argv(plan, "vllm", ENGINE_PREFIX, model_dir), None
    leader_address = "$(LWS_LEADER_ADDRESS)"
    leader = serve_argv(plan, "vllm", ENGINE_PREFIX, model_dir, node_rank=0, head_address=leader_address)
    worker = serve_argv(plan, "vllm", ENGINE_PREFIX, model_dir, node_rank=1, head_address=leader_address)
    rank = worker.index("--node-rank") + 1
    return leader, [*worker[:rank], "$(LWS_WORKER_INDEX)", *worker[rank + 1:]]


def pod_plan(cluster: ResolvedCluster) -> PodPlan:
    target = cluster.config.target
    assert isinstance(target, EksTarget | ClusterTarget)
    plan = common_serving_plan(cluster)
    primary = cluster.primary
    gpus = world_size_per_pod(plan)
    group = plan["nodes"]
    shm = SHM_GIB_PER_GPU * gpus if gpus > 1 else 0
    # The sizing's host need is per node; a pod runs `gpus` of the node's GPU workers and loads its
    # node's share of the weights once.
    ram = max(e.host_ram_gib_required - HOST_RAM_PER_GPU_GIB * (e.gpus_per_node - gpus) for e in cluster.evaluations)
    vcpus = max(e.host.vcpus_required - VCPUS_PER_GPU * (e.gpus_per_node - gpus) for e in cluster.evaluations)
    share = min(i.vcpus * gpus // i.gpus for i in cluster.instance_types)
    efa = min(sum(1 for s in efa_interfaces(i) if s.interface_type != "interface")
              for i in cluster.instance_types) if group > 1 else 0
    cache = cache_kind(target)
    read_gbps = read_speed(cluster, cache)
    cold, threshold = startup(primary.weights_gib, group, read_gbps)
    model_dir = f"{MODELS_MOUNT}/{plan['served_model_name']}"
    leader, worker = engine_argv(plan, model_dir)
    return PodPlan(
        instance_types=[i.name for i in cluster.instance_types], gpus=gpus, group_size=group,
        pods_per_node=plan["replicas_per_node"], shm_gib=shm, memory_gib=math.ceil(ram + shm), cpu=vcpus,
        cpu_limit=max(vcpus, share), efa_devices=efa, rdma=efa > 0, cache=cache,
        cache_gib=math.ceil(primary.nvme_gib_required), read_gbps=read_gbps, cold_start_s=cold,
        startup_failure_threshold=threshold, image=target.image or default_image(), port=plan["port"],
        model_dir=model_dir, leader_argv=leader, worker_argv=worker, serving=plan)


def nodes_for(pods: PodPlan, copies: int) -> int:
    """Nodes that COPIES serving copies need."""
    return math.ceil(copies / pods.pods_per_node) * pods.group_size


def colours(cluster: ResolvedCluster) -> list[str | None]:
    """The serving sets: blue and green under blue-green, else one (None: no colour)."""
    return list(COLOURS) if cluster.config.target.rollout.strategy == "blue-green" else [None]


def serving_nodes(cluster: ResolvedCluster, pods: PodPlan, copies: int) -> int:
    """Nodes that COPIES copies of every serving set need (each colour on nodes of its own: a colour's pods
    may share a node with the other's, but the budget must not count on it)."""
    return len(colours(cluster)) * nodes_for(pods, copies)


def affordable_nodes(budget: float, usd_per_hour: float, group_size: int) -> int:
    """Whole copies' nodes (multiples of GROUP_SIZE) of one type that BUDGET $/h pays for."""
    return int(budget // (usd_per_hour * group_size)) * group_size


def max_nodes_within_budget(cluster: ResolvedCluster, pods: PodPlan) -> int | None:
    """The most serving nodes, at the dearest approved type, that stay within the hourly budget."""
    budget = cluster.config.hourly_budget_usd
    prices = [i.price.usd_per_hour for i in cluster.instance_types]
    if budget is None or None in prices:
        return None
    return affordable_nodes(budget, max(p for p in prices if p is not None), pods.group_size)


def node_pool_gpu_limit(cluster: ResolvedCluster, pods: PodPlan, instance: InstanceType) -> int:
    """A Karpenter NodePool's nvidia.com/gpu limit: the GPUs of the whole copies of INSTANCE the budget pays
    for. Infeasible (exit 1) when that is not even one copy."""
    budget = cluster.config.hourly_budget_usd
    price = instance.price.usd_per_hour
    assert budget is not None  # karpenter_problems refuses karpenter without a budget
    nodes = affordable_nodes(budget, price, pods.group_size) if price is not None else 0
    if nodes < pods.group_size:
        why = "has no catalog price" if price is None else f"costs ${price:.2f}/h a node"
        raise InfeasibleError([Problem("cluster.hourly_budget_usd", f"{instance.name} {why}: ${budget:.2f}/h pays "
                                       f"for no whole copy of {pods.group_size} node(s), so its Karpenter NodePool "
                                       "could launch nothing")])
    return nodes * instance.gpus


def replica_bounds(cluster: ResolvedCluster, pods: PodPlan) -> tuple[int, int]:
    """(fewest, most) serving copies of one serving set: the autoscaler's bounds, or without one the pool's
    fixed count (split between the colours under blue-green)."""
    scaling = cluster.config.target.autoscaling
    if scaling.kind == "none":
        fixed = cluster.config.nodes // (pods.group_size * len(colours(cluster))) * pods.pods_per_node
        return fixed, fixed
    return scaling.min_replicas, scaling.max_replicas


def check_kubernetes_target(cluster: ResolvedCluster) -> PodPlan:
    """What only the sizing answer can tell: the common plan, the replicas against the nodes and the budget."""
    pods = pod_plan(cluster)
    config = cluster.config
    check_system_nodes(config.target)
    scaling = config.target.autoscaling
    fewest, most = replica_bounds(cluster, pods)
    if scaling.kind != "none" and nodes_for(pods, fewest) > config.nodes:
        raise InputError([Problem("cluster.target.autoscaling.min_replicas",
                                  f"{fewest} copies of {pods.group_size} node(s) x {pods.gpus} GPUs need "
                                  f"{nodes_for(pods, fewest)} nodes ({pods.pods_per_node} per node), but the stack "
                                  f"has nodes: {config.nodes}")])
    affordable = max_nodes_within_budget(cluster, pods)
    if affordable is not None and nodes_for(pods, most) > affordable:
        copies = affordable // pods.group_size * pods.pods_per_node
        raise InfeasibleError([Problem("cluster.target.autoscaling.max_replicas",
                                       f"{most} copies need {nodes_for(pods, most)} x {pods.instance_types[0]}-class "
                                       f"nodes, over the ${config.hourly_budget_usd:.2f}/h budget, which pays for "
                                       f"{copies} copies")])
    if len(colours(cluster)) > 1:
        check_blue_green(cluster, pods, fewest, most)
    return pods


def check_system_nodes(target: Any) -> None:
    """A catalog type is a GPU type: as a system node it would be an untainted GPU node, outside the budget,
    that any pod could land on."""
    if not isinstance(target, EksTarget):
        return
    name = target.system_nodes.instance_type
    if name in {i.name for i in load_catalog().instances}:
        raise InputError([Problem("cluster.target.system_nodes.instance_type",
                                  f"{name} is a GPU type; the system nodes run CoreDNS and the controllers "
                                  "(e.g. m7i.large)")])


def check_blue_green(cluster: ResolvedCluster, pods: PodPlan, fewest: int, most: int) -> None:
    """Both colours run at once: their fewest copies must fit the stack's nodes (what it provisions and what
    `gpuinfra env up` checks against the account's vCPU quota), and their most within the budget."""
    config = cluster.config
    where = "cluster.target.rollout.strategy"
    if fewest < 1:
        raise InputError([Problem(where, f"blue-green with autoscaling kind none splits nodes: {config.nodes} between "
                                         f"two colours, which leaves no whole copy of {pods.group_size} node(s) "
                                         "each")])
    both = serving_nodes(cluster, pods, fewest)
    if both > config.nodes:
        raise InputError([Problem(where, f"blue-green runs both colours at once: 2 x {fewest} copies need {both} "
                                         f"nodes, but the stack has nodes: {config.nodes} (the nodes it provisions "
                                         "and the quota `gpuinfra env up` checks); raise nodes or use canary")])
    affordable = max_nodes_within_budget(cluster, pods)
    peak = serving_nodes(cluster, pods, most)
    if affordable is not None and peak > affordable:
        gpus = peak * min(i.gpus for i in cluster.instance_types)
        dearest = max(cluster.instance_types, key=lambda i: i.price.usd_per_hour or 0.0).name
        raise InfeasibleError([Problem(where, f"blue-green may run both colours at max_replicas {most}: 2 x "
                                              f"{nodes_for(pods, most)} x {dearest} nodes "
                                              f"({gpus} GPUs), over the ${config.hourly_budget_usd:.2f}/h budget, "
                                              f"which pays for {affordable} nodes; lower max_replicas or use canary")])
