"""The system nodes of the EKS cluster the stack builds, in both node provisioning modes: one small managed node
group, untainted and labelled `gpuinfra.io/node-role: system`. Every GPU node is tainted
`nvidia.com/gpu:NoSchedule`, so without these CoreDNS, the Karpenter, KEDA, LeaderWorkerSet and
prometheus-operator controllers would have nowhere to run and the cluster would never become usable. Their
size and count are the stack's `target.system_nodes` (gpuinfra.kubernetes.target.SystemNodes)."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from gpuinfra.aws.identity import assume_role_policy
from gpuinfra.aws.node_pool import IMDS_HOP_LIMIT, ROOT_VOLUME_TYPE
from gpuinfra.kubernetes.objects import ANNOTATION
from gpuinfra.kubernetes.target import SystemNodes

SYSTEM_AMI_TYPE = "AL2023_x86_64_STANDARD"  # the target model refuses Graviton types for it
SYSTEM_ROOT_GIB = 50  # images of a few controllers; no model weights
SYSTEM_ROOT_DEVICE = "/dev/xvda"
SYSTEM_LABEL = f"{ANNOTATION}/node-role"
SYSTEM_SELECTOR = {SYSTEM_LABEL: "system"}  # the nodeSelector of what must not wait for a GPU node
# What any EKS node's role needs and no more: join the cluster, run the VPC CNI, pull images (read-only).
EKS_NODE_POLICIES = ("AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly")


@dataclass(frozen=True)
class SystemNodeGroupArgs:
    cluster_name: pulumi.Input[str]
    partition: str
    settings: SystemNodes
    # The control plane's subnets (two zones at least): CoreDNS's two replicas on nodes in different zones,
    # where the GPU node subnets may be a single zone (a copy over several nodes).
    subnet_ids: list[pulumi.Input[str]]
    security_group_ids: list[pulumi.Input[str]]
    tags: dict[str, str]  # the stack's tags: the system nodes serve no model, so no gpuinfra:* request


class SystemNodeGroup(pulumi.ComponentResource):
    """The node role, launch template (IMDSv2 only, encrypted root, like the GPU nodes') and node group."""

    node_group: aws.eks.NodeGroup
    node_group_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]

    def __init__(self, name: str, args: SystemNodeGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:kubernetes:SystemNodeGroup", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = self._role(name, args, child)
        template = aws.ec2.LaunchTemplate(
            name, description="gpuinfra system node (CoreDNS, Karpenter and other controllers)",
            metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
                http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=IMDS_HOP_LIMIT),
            block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
                device_name=SYSTEM_ROOT_DEVICE, ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                    volume_size=SYSTEM_ROOT_GIB, volume_type=ROOT_VOLUME_TYPE, encrypted="true",
                    delete_on_termination="true"))],
            vpc_security_group_ids=args.security_group_ids, update_default_version=True,
            tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags={
                **args.tags, "Name": name}) for kind in ("instance", "volume")],
            tags=args.tags, opts=child)
        count = args.settings.count
        self.node_group = aws.eks.NodeGroup(
            name, cluster_name=args.cluster_name, node_group_name=name, node_role_arn=role.arn,
            subnet_ids=args.subnet_ids, ami_type=SYSTEM_AMI_TYPE, instance_types=[args.settings.instance_type],
            capacity_type="ON_DEMAND",  # a spot reclaim of both would take DNS away from every serving pod
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(id=template.id, version=template.latest_version.apply(
                str)),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=count, desired_size=count, max_size=count),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            labels=SYSTEM_SELECTOR, tags=args.tags, opts=child)
        self.node_group_name = self.node_group.node_group_name
        self.role_arn = role.arn
        self.register_outputs({"node_group_name": self.node_group_name, "role_arn": self.role_arn})

    def _role(self, name: str, args: SystemNodeGroupArgs, child: pulumi.ResourceOptions) -> aws.iam.Role:
        """A role of their own: the system nodes read no weights (the GPU node role may), and the GPU role's
        access entry stays the one the stack makes for Karpenter's nodes."""
        role = aws.iam.Role(f"{name}-role", description="gpuinfra system node (CoreDNS, controllers)",
                            assume_role_policy=assume_role_policy(), tags=args.tags, opts=child)
        for policy in EKS_NODE_POLICIES:
            aws.iam.RolePolicyAttachment(f"{name}-{policy}", role=role.name,
                                         policy_arn=f"arn:{args.partition}:iam::aws:policy/{policy}", opts=child)
        return role
