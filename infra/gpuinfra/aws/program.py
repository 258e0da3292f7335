"""The Pulumi program: a resolved stack in, components declared, outputs out. `infra/__main__.py` feeds it
the stack's config; `gpuinfra plan` feeds it the same config under Pulumi's mock runtime."""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_aws as aws

from gpuinfra.aws.endpoint import ServingEndpoint, ServingEndpointArgs
from gpuinfra.aws.identity import NodeIdentity, NodeIdentityArgs
from gpuinfra.aws.network import Network, NetworkArgs
from gpuinfra.aws.node_pool import GpuNodePool, GpuNodePoolArgs, image_choice
from gpuinfra.config import CONFIG_KEY, CreateVpc, ResolvedCluster, parse_cluster, resolve
from gpuinfra.contract import stack_contract
from gpuinfra.environments.models import ENVIRONMENT_CONFIG_KEY, drain_time, lifecycle_tags
from gpuinfra.errors import InputError
from gpuinfra.kubernetes.target import Ec2Target
from gpuinfra.request import TAG_PREFIX, ServingRequest

MAX_NODE_ZONES = 3


def stack_tags(cluster: ResolvedCluster) -> dict[str, str]:
    return {**cluster.config.tags, "gpuinfra:stack": cluster.stack}


def serving_tags(cluster: ResolvedCluster) -> dict[str, str]:
    """The serving request, on every resource that launches GPUs, for the policy pack to size against."""
    return {
        **ServingRequest.of(cluster.request).to_labels(TAG_PREFIX),
        f"{TAG_PREFIX}nodes": str(cluster.config.nodes),
        f"{TAG_PREFIX}nodes-per-copy": str(cluster.nodes_per_copy),
    }


def choose_zones(cluster: ResolvedCluster, available: list[str]) -> tuple[list[str], list[str]]:
    """Node zones (the one given, else up to three, which widens spot pools) and two load-balancer zones."""
    zone = cluster.config.availability_zone
    node_zones = [zone] if zone else available[:1] if cluster.nodes_per_copy > 1 else available[:MAX_NODE_ZONES]
    others = [z for z in available if z not in node_zones[:1]]
    return node_zones, [node_zones[0], *others[:1]]


def declare(cluster: ResolvedCluster, environment_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """ENVIRONMENT_TAGS (an on-demand environment's owner, expiry, budget, price) go on every resource, the
    launch templates' instances, volumes and interfaces included."""
    if not isinstance(cluster.config.target, Ec2Target):
        from gpuinfra.kubernetes.program import declare_kubernetes

        return declare_kubernetes(cluster, {**stack_tags(cluster), **(environment_tags or {})}, serving_tags(cluster))
    config = cluster.config
    name = f"gpuinfra-{cluster.stack}"
    tags = {**stack_tags(cluster), **(environment_tags or {})}
    provider = aws.Provider("aws", region=config.region)
    top = pulumi.ResourceOptions(providers={"aws": provider})
    node_zones: list[str] = []
    load_balancer_zones: list[str] = []
    if isinstance(config.network, CreateVpc):
        available = aws.get_availability_zones(
            state="available",
            filters=[aws.GetAvailabilityZonesFilterArgs(name="zone-type", values=["availability-zone"])],
            opts=pulumi.InvokeOptions(provider=provider)).names
        node_zones, load_balancer_zones = choose_zones(cluster, sorted(available))
    network = Network(f"{name}-network", NetworkArgs(
        settings=config.network, region=config.region, node_zones=node_zones, load_balancer_zones=load_balancer_zones,
        ssh_cidrs=config.access.ssh_cidrs, with_load_balancer_subnets=config.endpoint.enabled, tags=tags), opts=top)
    identity = NodeIdentity(f"{name}-identity", NodeIdentityArgs(
        region=config.region, ssm=config.access.ssm, weights_bucket=config.weights.s3_bucket,
        weights_prefix=config.weights.s3_prefix, tags=tags), opts=top)
    endpoint = None
    if config.endpoint.enabled:
        endpoint = ServingEndpoint(f"{name}-endpoint", ServingEndpointArgs(
            vpc_id=network.vpc_id, subnet_ids=network.load_balancer_subnet_ids,
            node_security_group_id=network.node_security_group_id,
            client_cidr=config.network.cidr if isinstance(config.network, CreateVpc) else None,
            port=config.endpoint.port, tags=tags), opts=top)
    pool = GpuNodePool(f"{name}-nodes", GpuNodePoolArgs(
        instance_types=cluster.instance_types, evaluations=cluster.evaluations, nodes=config.nodes,
        nodes_per_copy=cluster.nodes_per_copy, capacity=config.capacity,
        subnet_ids=network.node_subnet_ids,
        security_group_id=network.node_security_group_id, instance_profile_arn=identity.instance_profile_arn,
        image=image_choice(config.ami_id, config.region), root_volume_gib=config.root_volume_gib,
        ssh_key_name=config.access.ssh_key_name,
        target_group_arns=[endpoint.target_group_arn] if endpoint else [],
        tags={**tags, **serving_tags(cluster)}, drain_at=drain_time(environment_tags)), opts=top)
    return {
        **stack_contract(cluster),
        "availability_zones": node_zones or None,
        "auto_scaling_group_name": pool.auto_scaling_group_name,
        "launch_template_ids": pool.launch_template_ids,
        "placement_group_name": pool.placement_group_name,
        "vpc_id": network.vpc_id,
        "node_security_group_id": network.node_security_group_id,
        "node_role_name": identity.role_name,
        "endpoint_dns_name": endpoint.dns_name if endpoint else None,
    }


def main() -> None:
    """Entry point for `pulumi up`: the stack's `gpuinfra:cluster` object, validated before anything is declared."""
    settings = pulumi.Config("gpuinfra")
    raw = settings.require_object(CONFIG_KEY.split(":", 1)[1])
    environment = settings.get_object(ENVIRONMENT_CONFIG_KEY.split(":", 1)[1])  # set by `gpuinfra env up`
    try:
        cluster = resolve(pulumi.get_stack(), parse_cluster(raw))
        extra_tags = lifecycle_tags(environment) if environment is not None else None
    except InputError as exc:
        # RunError prints the message alone: every problem with its path, no traceback, nothing declared.
        raise pulumi.RunError("invalid stack config:\n" + "\n".join(f"  {p}" for p in exc.problems)) from None
    for key, value in declare(cluster, extra_tags).items():
        pulumi.export(key, value)
