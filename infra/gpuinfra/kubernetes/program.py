"""The Kubernetes target's program: an EKS cluster built from the EC2 pool's parts (kind eks), or an existing
cluster's kubeconfig context (kind kubernetes), then the serving objects and their monitoring. Called by
gpuinfra.aws.program.declare for a stack whose `target.kind` is not ec2, so `pulumi up` and `gpuinfra plan`
run the same code."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from gpuinfra.config import ResolvedCluster
from gpuinfra.contract import stack_contract
from gpuinfra.kubernetes.addons import GpuAddons, GpuAddonsArgs
from gpuinfra.kubernetes.monitoring import ServingMonitoring, ServingMonitoringArgs
from gpuinfra.kubernetes.serving_plan import (
    PodPlan,
    check_kubernetes_target,
    colours,
    node_pool_gpu_limit,
    replica_bounds,
)
from gpuinfra.kubernetes.system_nodes import SYSTEM_SELECTOR
from gpuinfra.kubernetes.target import EksTarget
from gpuinfra.kubernetes.workload import ModelServing, ModelServingArgs


def kubernetes_contract(cluster: ResolvedCluster, pods: PodPlan) -> dict[str, Any]:
    target = cluster.config.target
    fewest, most = replica_bounds(cluster, pods)
    rollout: dict[str, Any] = {"strategy": target.rollout.strategy}
    if len(colours(cluster)) > 1:
        rollout.update({"active": target.rollout.active, "sets": {
            colour: f"gpuinfra-{cluster.stack}-{colour}.{target.namespace}.svc" for colour in colours(cluster)}})
    contract = {"kind": target.kind, "version": target.version, "namespace": target.namespace,
                "workload": "StatefulSet" if pods.group_size == 1 else "LeaderWorkerSet",
                "service": f"gpuinfra-{cluster.stack}.{target.namespace}.svc", "port": pods.port,
                "replicas": {"min": fewest, "max": most}, "autoscaler": target.autoscaling.kind, "rollout": rollout,
                "pod": pods.model_dump(mode="json", exclude={"serving", "leader_argv", "worker_argv"})}
    if isinstance(target, EksTarget):
        contract["node_provisioning"] = target.node_provisioning
        # Not in the $/h the plan prints or the budget checks: the catalog prices GPU types only.
        contract["system_nodes"] = {**target.system_nodes.model_dump(), "label": SYSTEM_SELECTOR,
                                    "in_hourly_budget": False}
        if target.node_provisioning == "karpenter":
            contract["node_pool_gpu_limits"] = {i.name: node_pool_gpu_limit(cluster, pods, i)
                                                for i in cluster.instance_types}
    return contract


def eks_cluster(cluster: ResolvedCluster, pods: PodPlan, tags: dict[str, str], serving: dict[str, str],
                name: str) -> tuple[Any, dict[str, Any]]:
    """Network, node identity and the EKS cluster with its node groups; the provider that reaches it."""
    from gpuinfra.aws.identity import NodeIdentity, NodeIdentityArgs
    from gpuinfra.aws.network import Network, NetworkArgs
    from gpuinfra.aws.program import choose_zones
    from gpuinfra.config import CreateVpc
    from gpuinfra.kubernetes.eks import EksCluster, EksClusterArgs

    config = cluster.config
    provider = aws.Provider("aws", region=config.region)
    top = pulumi.ResourceOptions(providers={"aws": provider})
    node_zones: list[str] = []
    control_zones: list[str] = []
    if isinstance(config.network, CreateVpc):
        available = aws.get_availability_zones(
            state="available",
            filters=[aws.GetAvailabilityZonesFilterArgs(name="zone-type", values=["availability-zone"])],
            opts=pulumi.InvokeOptions(provider=provider)).names
        node_zones, control_zones = choose_zones(cluster, sorted(available))
    # The control plane needs subnets in two zones: the load-balancer pair serves it.
    network = Network(f"{name}-network", NetworkArgs(
        settings=config.network, region=config.region, node_zones=node_zones, load_balancer_zones=control_zones,
        ssh_cidrs=config.access.ssh_cidrs, with_load_balancer_subnets=True, tags=tags), opts=top)
    identity = NodeIdentity(f"{name}-identity", NodeIdentityArgs(
        region=config.region, ssm=config.access.ssm, weights_bucket=config.weights.s3_bucket,
        weights_prefix=config.weights.s3_prefix, tags=tags), opts=top)
    eks = EksCluster(f"{name}-eks", EksClusterArgs(
        cluster=cluster, pods=pods, control_plane_subnet_ids=[*network.node_subnet_ids,
                                                               *network.load_balancer_subnet_ids],
        node_subnet_ids=network.node_subnet_ids, node_security_group_id=network.node_security_group_id,
        node_role_name=identity.role_name, node_role_arn=identity.role_arn, tags={**tags, **serving},
        system_tags=tags), opts=top)
    k8s_provider = k8s.Provider(f"{name}-k8s", kubeconfig=eks.kubeconfig, enable_server_side_apply=True)
    if eks.karpenter is not None:
        from gpuinfra.kubernetes.eks import ROOT_DEVICE, node_user_data_text
        from gpuinfra.kubernetes.karpenter import KarpenterNodePools, KarpenterNodePoolsArgs, NodeClassInputs

        inputs = NodeClassInputs(role=identity.role_name, subnet_ids=network.node_subnet_ids,
                                 security_group_ids=eks.gpu_security_group_ids,
                                 placement_group=eks.placement_group_name, user_data=node_user_data_text(),
                                 tags={**tags, **serving})
        KarpenterNodePools(f"{name}-karpenter", KarpenterNodePoolsArgs(
            cluster=cluster, pods=pods, inputs=inputs, cluster_name=eks.cluster_name,
            queue_name=eks.karpenter.queue_name, root_device=ROOT_DEVICE), opts=pulumi.ResourceOptions(
            providers={"kubernetes": k8s_provider}, depends_on=[eks.system_nodes.node_group]))
    outputs = {"availability_zones": node_zones or None, "vpc_id": network.vpc_id, "eks_cluster_name":
               eks.cluster_name, "node_group_names": eks.node_group_names, "node_role_name": identity.role_name}
    return k8s_provider, outputs


def declare_kubernetes(cluster: ResolvedCluster, tags: dict[str, str], serving: dict[str, str]) -> dict[str, Any]:
    """TAGS go on every AWS resource; SERVING (the gpuinfra:* request) on the launch templates, as on EC2."""
    pods = check_kubernetes_target(cluster)
    target = cluster.config.target
    name = f"gpuinfra-{cluster.stack}"
    outputs: dict[str, Any] = {}
    if isinstance(target, EksTarget):
        provider, outputs = eks_cluster(cluster, pods, tags, serving, name)
    else:
        provider = k8s.Provider(f"{name}-k8s", context=target.context, enable_server_side_apply=True)
    on_cluster = pulumi.ResourceOptions(providers={"kubernetes": provider})
    dcgm_namespace, dcgm_labels = None, {}
    before: list[pulumi.Resource] = []
    if isinstance(target, EksTarget):
        addons = GpuAddons(f"{name}-addons", GpuAddonsArgs(
            instance_types=pods.instance_types, efa=any(i.efa.supported for i in cluster.instance_types)),
            opts=on_cluster)
        dcgm_namespace, dcgm_labels = addons.dcgm_namespace, addons.dcgm_labels
        before.append(addons)
    serving_objects = ModelServing(name, ModelServingArgs(cluster=cluster, pods=pods, namespace=target.namespace),
                                   opts=on_cluster)
    if target.monitoring:
        ServingMonitoring(f"{name}-monitoring", ServingMonitoringArgs(
            cluster=cluster, namespace=target.namespace, dcgm_namespace=dcgm_namespace, dcgm_labels=dcgm_labels),
            opts=pulumi.ResourceOptions.merge(on_cluster, pulumi.ResourceOptions(
                depends_on=[serving_objects, *before])))
    return {**stack_contract(cluster), **outputs, "kubernetes": kubernetes_contract(cluster, pods)}
