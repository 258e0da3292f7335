"""Karpenter on the EKS cluster the stack builds (`target.node_provisioning: karpenter`): one NodePool and one
EC2NodeClass per sizing-approved type instead of the managed GPU node groups.

The NodeClass carries what the EC2 launch template carries (IMDSv2 with its hop limit, the encrypted gp3
root of gpuinfra.aws.node_pool, the same RAID0 cloud-config part, the cluster placement group of a multi-node
copy) and the NodePool the node groups' labels and taint, plus an `nvidia.com/gpu` limit of the whole copies
the budget pays for (gpuinfra.kubernetes.serving_plan.node_pool_gpu_limit). The stack installs Karpenter
itself: its controller role (EKS Pod Identity), the interruption queue and its EventBridge rules, an access
entry for the node role, and the pinned Helm charts; the controller runs on the cluster's system nodes
(gpuinfra.kubernetes.system_nodes: Karpenter cannot run on the nodes it launches).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from gpuinfra.aws.node_pool import (
    IMDS_HOP_LIMIT,
    ROOT_IOPS,
    ROOT_THROUGHPUT_MIBPS,
    ROOT_VOLUME_TYPE,
    resource_suffix,
    root_volume_gib,
)
from gpuinfra.catalog import InstanceType
from gpuinfra.config import CapacityBlock, CapacityReservation, CreateVpc, ResolvedCluster
from gpuinfra.kubernetes.objects import ANNOTATION, GPU, scaling_behavior
from gpuinfra.kubernetes.serving_plan import PodPlan, node_pool_gpu_limit
from gpuinfra.kubernetes.system_nodes import SYSTEM_SELECTOR

# 1.11 is the first with EC2NodeClass placementGroupSelector (a multi-node copy's cluster placement group).
KARPENTER_VERSION = "1.14.1"
CHART_REPOSITORY = "oci://public.ecr.aws/karpenter"
NODE_POOL_API = "karpenter.sh/v1"
NODE_CLASS_GROUP = "karpenter.k8s.aws"
NODE_CLASS_API = f"{NODE_CLASS_GROUP}/v1"
NAMESPACE = "kube-system"
SERVICE_ACCOUNT = "karpenter"
# Leader election needs two; the chart keeps them on different nodes, and target.system_nodes.count >= 2.
CONTROLLER_REPLICAS = 2
INSTANCE_TYPE_LABEL = "node.kubernetes.io/instance-type"
CAPACITY_TYPES = {"on-demand": "on-demand", "spot": "spot", "capacity-reservation": "reserved",
                  "capacity-block": "reserved"}
BUDGET_ANNOTATION = f"{ANNOTATION}/hourly-budget-usd"
# A node Karpenter drains (drift, a manual delete) is forced after this, do-not-disrupt pods or not.
TERMINATION_GRACE = "1h"
# EC2 events the controller acts on before the instance goes (spot reclaim, maintenance, state changes).
INTERRUPTION_EVENTS = {
    "health": {"source": ["aws.health"], "detail-type": ["AWS Health Event"]},
    "spot": {"source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "state": {"source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
}


def gpu_node_labels(instance: InstanceType) -> dict[str, str]:
    """The labels a GPU node of INSTANCE carries, from a managed node group or a NodePool alike."""
    return {"gpuinfra.io/instance-type": instance.name, "nvidia.com/gpu.present": "true",
            "vpc.amazonaws.com/efa.present": str(instance.efa.supported).lower()}


def pool_name(cluster_name: str, instance: InstanceType) -> str:
    return f"{cluster_name}-{resource_suffix(instance.name)}"


def node_pool_spec(cluster: ResolvedCluster, pods: PodPlan, instance: InstanceType, *, weight: int,
                   node_class: str) -> dict[str, Any]:
    """One approved type's NodePool. Disruption suits long-lived GPU serving: only empty nodes are consolidated,
    after the autoscaler's scale-down window (a copy scaled back up lands on the warm node, its weights still in
    the NVMe cache); nodes never expire (expiry is forced and ignores budgets: every node of one age at once);
    at most one node is disrupted at a time, as the PDB allows one pod."""
    config = cluster.config
    requirements = [{"key": INSTANCE_TYPE_LABEL, "operator": "In", "values": [instance.name]},
                    {"key": "karpenter.sh/capacity-type", "operator": "In",
                     "values": [CAPACITY_TYPES[config.capacity.type]]}]
    if config.availability_zone:
        requirements.append({"key": "topology.kubernetes.io/zone", "operator": "In",
                             "values": [config.availability_zone]})
    empty_for = scaling_behavior(pods)["scaleDown"]["stabilizationWindowSeconds"]
    return {
        "weight": weight,
        "template": {"metadata": {"labels": gpu_node_labels(instance)}, "spec": {
            "nodeClassRef": {"group": NODE_CLASS_GROUP, "kind": "EC2NodeClass", "name": node_class},
            "requirements": requirements,
            "taints": [{"key": GPU, "value": "true", "effect": "NoSchedule"}],
            "expireAfter": "Never",
            "terminationGracePeriod": TERMINATION_GRACE,
        }},
        "disruption": {"consolidationPolicy": "WhenEmpty", "consolidateAfter": f"{empty_for}s",
                       "budgets": [{"nodes": "1"}]},
        "limits": {GPU: node_pool_gpu_limit(cluster, pods, instance)},
    }


@dataclass(frozen=True)
class NodeClassInputs:
    """What the EC2NodeClass takes from the cluster the stack builds."""

    role: pulumi.Input[str]  # the node role's name (Karpenter makes the instance profile)
    subnet_ids: list[pulumi.Input[str]]
    security_group_ids: list[pulumi.Input[str]]
    placement_group: pulumi.Input[str] | None  # a multi-node copy's cluster placement group
    user_data: str  # MIME multipart text: Karpenter merges its nodeadm NodeConfig into it
    tags: dict[str, str]


def subnet_terms(cluster: ResolvedCluster, inputs: NodeClassInputs) -> list[dict[str, Any]]:
    """The node subnets: by the tags the stack's own VPC gives them, or by id when the stack was given them."""
    if isinstance(cluster.config.network, CreateVpc):
        return [{"tags": {"gpuinfra:stack": cluster.stack, "gpuinfra:role": "nodes"}}]
    return [{"id": subnet} for subnet in inputs.subnet_ids]


def node_class_spec(cluster: ResolvedCluster, inputs: NodeClassInputs, root_device: str) -> dict[str, Any]:
    """The EC2 launch settings of gpuinfra.aws.node_pool.gpu_launch_template, as Karpenter takes them. The
    instance store is left to the RAID unit in the user data (not `instanceStorePolicy: RAID0`, which gives it
    to the kubelet's ephemeral storage): the pods' weight cache is a hostPath on that array on both kinds of
    node. EFA: a pod requesting vpc.amazonaws.com/efa makes Karpenter attach an EFA interface per network card."""
    config = cluster.config
    spec: dict[str, Any] = {
        "role": inputs.role,
        "amiSelectorTerms": [{"id": config.ami_id}] if config.ami_id else [{"alias": "al2023@latest"}],
        "subnetSelectorTerms": subnet_terms(cluster, inputs),
        "securityGroupSelectorTerms": [{"id": group} for group in inputs.security_group_ids],
        "metadataOptions": {"httpEndpoint": "enabled", "httpProtocolIPv6": "disabled", "httpTokens": "required",
                            "httpPutResponseHopLimit": IMDS_HOP_LIMIT},
        "blockDeviceMappings": [{"deviceName": root_device, "rootVolume": True, "ebs": {
            "volumeSize": f"{root_volume_gib(config.root_volume_gib)}Gi", "volumeType": ROOT_VOLUME_TYPE,
            "iops": ROOT_IOPS, "throughput": ROOT_THROUGHPUT_MIBPS, "encrypted": True, "deleteOnTermination": True}}],
        "userData": inputs.user_data,
        "detailedMonitoring": True,
        "associatePublicIPAddress": False,
        "tags": inputs.tags,
    }
    if config.ami_id:
        spec["amiFamily"] = "AL2023"  # an AMI by id needs its family (the alias implies it)
    if inputs.placement_group is not None:
        spec["placementGroupSelector"] = {"name": inputs.placement_group}
    if isinstance(config.capacity, CapacityReservation | CapacityBlock):
        spec["capacityReservationSelectorTerms"] = [{"id": config.capacity.reservation_id}]
    return spec


def chart_values(cluster_name: pulumi.Input[str], queue_name: pulumi.Input[str]) -> dict[str, Any]:
    return {
        "settings": {"clusterName": cluster_name, "interruptionQueue": queue_name},
        "serviceAccount": {"name": SERVICE_ACCOUNT},
        "replicas": CONTROLLER_REPLICAS,
        "dnsPolicy": "Default",  # the controller must start before CoreDNS has a node
        "nodeSelector": SYSTEM_SELECTOR,  # Karpenter cannot run on the nodes it launches
        "controller": {"resources": {"requests": {"cpu": "1", "memory": "1Gi"},
                                     "limits": {"cpu": "1", "memory": "1Gi"}}},
    }


@dataclass(frozen=True)
class KarpenterNodePoolsArgs:
    cluster: ResolvedCluster
    pods: PodPlan
    inputs: NodeClassInputs
    cluster_name: pulumi.Input[str]
    queue_name: pulumi.Input[str]  # the interruption queue KarpenterAws made
    root_device: str


class KarpenterNodePools(pulumi.ComponentResource):
    """On the cluster: the pinned Karpenter CRD and controller charts, then a NodePool and an EC2NodeClass per
    approved type (cluster-scoped), the first type weighted highest as the node groups' priority order."""

    def __init__(self, name: str, args: KarpenterNodePoolsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:kubernetes:KarpenterNodePools", name, None, opts)
        cluster, pods, inputs = args.cluster, args.pods, args.inputs
        child = pulumi.ResourceOptions(parent=self)
        crds = k8s.helm.v3.Release(f"{name}-karpenter-crd", name="karpenter-crd", namespace=NAMESPACE,
                                   chart=f"{CHART_REPOSITORY}/karpenter-crd", version=KARPENTER_VERSION, opts=child)
        controller = k8s.helm.v3.Release(
            f"{name}-karpenter", name="karpenter", namespace=NAMESPACE, chart=f"{CHART_REPOSITORY}/karpenter",
            version=KARPENTER_VERSION, skip_crds=True, values=chart_values(args.cluster_name, args.queue_name),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[crds]))
        after = pulumi.ResourceOptions(parent=self, depends_on=[crds, controller])
        budget = cluster.config.hourly_budget_usd
        for index, instance in enumerate(cluster.instance_types):
            pool = pool_name(f"gpuinfra-{cluster.stack}", instance)
            meta = {"name": pool, "labels": {"app.kubernetes.io/managed-by": "gpuinfra",
                                             "app.kubernetes.io/instance": cluster.stack}}
            k8s.apiextensions.CustomResource(f"{pool}-class", api_version=NODE_CLASS_API, kind="EC2NodeClass",
                                             metadata=meta, spec=node_class_spec(cluster, inputs, args.root_device),
                                             opts=after)
            k8s.apiextensions.CustomResource(
                f"{pool}-pool", api_version=NODE_POOL_API, kind="NodePool",
                metadata={**meta, "annotations": {BUDGET_ANNOTATION: str(budget)}},
                spec=node_pool_spec(cluster, pods, instance, weight=100 - index, node_class=pool), opts=after)
        self.register_outputs({})


def _ec2_statements(arn: str, cluster_name: str) -> list[dict[str, Any]]:
    """Launch and delete only what carries this cluster's tag; read anything in the region (Karpenter's own
    reference policy, narrowed to the actions it uses)."""
    owned = {f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}": "owned",
             "aws:RequestTag/eks:eks-cluster-name": cluster_name}
    created = [f"{arn}:{kind}/*" for kind in ("fleet", "instance", "volume", "network-interface", "launch-template",
                                              "spot-instances-request")]
    return [
        {"Sid": "LaunchFromSharedResources", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": [f"{arn.removesuffix('*')}:image/*", f"{arn}:snapshot/*", f"{arn}:security-group/*",
                      f"{arn}:subnet/*", f"{arn}:capacity-reservation/*", f"{arn}:placement-group/*"]},
        {"Sid": "LaunchFromOwnTemplates", "Effect": "Allow", "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
         "Resource": f"{arn}:launch-template/*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}}},
        {"Sid": "CreateTagged", "Effect": "Allow",
         "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"], "Resource": created,
         "Condition": {"StringEquals": owned}},
        {"Sid": "TagOnCreate", "Effect": "Allow", "Action": ["ec2:CreateTags"], "Resource": created,
         "Condition": {"StringEquals": {**owned, "ec2:CreateAction": ["RunInstances", "CreateFleet",
                                                                      "CreateLaunchTemplate"]}}},
        {"Sid": "TagOwnInstances", "Effect": "Allow", "Action": ["ec2:CreateTags"], "Resource": f"{arn}:instance/*",
         "Condition": {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}}},
        {"Sid": "DeleteOwn", "Effect": "Allow", "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
         "Resource": [f"{arn}:instance/*", f"{arn}:launch-template/*"],
         "Condition": {"StringEquals": {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}}},
        {"Sid": "ReadRegion", "Effect": "Allow", "Resource": "*",
         "Action": [f"ec2:Describe{what}" for what in (
             "AvailabilityZones", "CapacityReservations", "Images", "Instances", "InstanceTypeOfferings",
             "InstanceTypes", "LaunchTemplates", "PlacementGroups", "SecurityGroups", "SpotPriceHistory",
             "Subnets")]},
    ]


def controller_policy(partition: str, region: str, cluster_name: str, cluster_arn: str, node_role_arn: str,
                      queue_arn: str) -> str:
    arn = f"arn:{partition}:ec2:{region}:*"
    profiles = f"arn:{partition}:iam::*:instance-profile/*"
    tagged = {f"aws:ResourceTag/kubernetes.io/cluster/{cluster_name}": "owned"}
    statements = [
        *_ec2_statements(arn, cluster_name),
        {"Sid": "ReadAmiParameters", "Effect": "Allow", "Action": ["ssm:GetParameter"],
         "Resource": f"arn:{partition}:ssm:{region}::parameter/aws/service/*"},
        {"Sid": "ReadPrices", "Effect": "Allow", "Action": ["pricing:GetProducts"], "Resource": "*"},
        {"Sid": "InterruptionQueue", "Effect": "Allow", "Resource": queue_arn,
         "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]},
        {"Sid": "PassNodeRole", "Effect": "Allow", "Action": ["iam:PassRole"], "Resource": node_role_arn,
         "Condition": {"StringEquals": {"iam:PassedToService": ["ec2.amazonaws.com"]}}},
        {"Sid": "CreateInstanceProfile", "Effect": "Allow", "Action": ["iam:CreateInstanceProfile"],
         "Resource": profiles, "Condition": {"StringEquals": {
             f"aws:RequestTag/kubernetes.io/cluster/{cluster_name}": "owned"}}},
        {"Sid": "ManageOwnInstanceProfiles", "Effect": "Allow", "Resource": profiles, "Condition": {
            "StringEquals": tagged}, "Action": ["iam:TagInstanceProfile", "iam:AddRoleToInstanceProfile",
                                                "iam:RemoveRoleFromInstanceProfile", "iam:DeleteInstanceProfile"]},
        {"Sid": "ReadInstanceProfiles", "Effect": "Allow", "Resource": profiles,
         "Action": ["iam:GetInstanceProfile", "iam:ListInstanceProfiles"]},
        {"Sid": "DescribeCluster", "Effect": "Allow", "Action": ["eks:DescribeCluster"], "Resource": cluster_arn},
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


@dataclass(frozen=True)
class KarpenterAwsArgs:
    cluster: aws.eks.Cluster
    partition: str
    region: str
    node_role_arn: pulumi.Input[str]
    tags: dict[str, str]


class KarpenterAws(pulumi.ComponentResource):
    """What Karpenter needs from AWS: the interruption queue fed by EventBridge, the controller's role through
    EKS Pod Identity, and an access entry so its nodes join. The controller runs on the cluster's system nodes
    (gpuinfra.kubernetes.system_nodes), which every EKS cluster of this stack has."""

    queue_name: pulumi.Output[str]

    def __init__(self, name: str, args: KarpenterAwsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:kubernetes:KarpenterAws", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        queue = self._interruption_queue(name, args, child)
        role = aws.iam.Role(f"{name}-controller", description="Karpenter controller (EKS Pod Identity)",
                            assume_role_policy=json.dumps({"Version": "2012-10-17", "Statement": [{
                                "Effect": "Allow", "Principal": {"Service": "pods.eks.amazonaws.com"},
                                "Action": ["sts:AssumeRole", "sts:TagSession"]}]}), tags=args.tags, opts=child)
        aws.iam.RolePolicy(f"{name}-controller", role=role.id, policy=pulumi.Output.all(
            args.cluster.name, args.cluster.arn, args.node_role_arn, queue.arn).apply(
            lambda v: controller_policy(args.partition, args.region, v[0], v[1], v[2], v[3])), opts=child)
        agent = aws.eks.Addon(f"{name}-pod-identity", cluster_name=args.cluster.name,
                              addon_name="eks-pod-identity-agent", tags=args.tags, opts=child)
        aws.eks.PodIdentityAssociation(f"{name}-controller", cluster_name=args.cluster.name, namespace=NAMESPACE,
                                       service_account=SERVICE_ACCOUNT, role_arn=role.arn, tags=args.tags,
                                       opts=pulumi.ResourceOptions(parent=self, depends_on=[agent]))
        aws.eks.AccessEntry(f"{name}-nodes", cluster_name=args.cluster.name, principal_arn=args.node_role_arn,
                            type="EC2_LINUX", tags=args.tags, opts=child)
        self.queue_name = queue.name
        self.register_outputs({"queue_name": self.queue_name})

    def _interruption_queue(self, name: str, args: KarpenterAwsArgs, child: pulumi.ResourceOptions) -> aws.sqs.Queue:
        queue = aws.sqs.Queue(f"{name}-interruptions", message_retention_seconds=300, sqs_managed_sse_enabled=True,
                              tags=args.tags, opts=child)
        aws.sqs.QueuePolicy(f"{name}-interruptions", queue_url=queue.url, policy=queue.arn.apply(
            lambda arn: json.dumps({"Version": "2012-10-17", "Statement": [
                {"Sid": "EventBridge", "Effect": "Allow", "Action": "sqs:SendMessage", "Resource": arn,
                 "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]}},
                {"Sid": "TlsOnly", "Effect": "Deny", "Action": "sqs:*", "Resource": arn, "Principal": "*",
                 "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]})), opts=child)
        for event, pattern in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(f"{name}-{event}", event_pattern=json.dumps(pattern), tags=args.tags,
                                            opts=child)
            aws.cloudwatch.EventTarget(f"{name}-{event}", rule=rule.name, arn=queue.arn, opts=child)
        return queue
