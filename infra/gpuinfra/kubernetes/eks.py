"""An EKS cluster whose GPU nodes are the EC2 pool's nodes: one managed node group per sizing-approved type,
each launched from gpuinfra.aws.node_pool's launch-template code (EFA on every network card, the cluster
placement group for a copy over several nodes, IMDSv2, encrypted root, the NVMe RAID0 unit in the user
data), labelled with its type and tainted `nvidia.com/gpu:NoSchedule`; or, with `node_provisioning:
karpenter`, Karpenter's AWS parts instead (gpuinfra.kubernetes.karpenter). In both modes, an untainted
system node group for CoreDNS and the controllers (gpuinfra.kubernetes.system_nodes). Plain pulumi-aws
`eks` resources, not the pulumi-eks component, so the mocks and the policy pack see every one."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from gpuinfra.aws.identity import partition_of
from gpuinfra.aws.node_pool import LaunchTemplateSpec, gpu_launch_template, resource_suffix
from gpuinfra.boot import RAID_UNIT_NAME, cloud_config
from gpuinfra.catalog import find_instance_type
from gpuinfra.config import ResolvedCluster
from gpuinfra.kubernetes.karpenter import KarpenterAws, KarpenterAwsArgs, gpu_node_labels
from gpuinfra.kubernetes.objects import GPU, RUN_AS
from gpuinfra.kubernetes.serving_plan import NODE_MODELS_DIR, PodPlan, replica_bounds, serving_nodes
from gpuinfra.kubernetes.system_nodes import EKS_NODE_POLICIES, SystemNodeGroup, SystemNodeGroupArgs
from gpuinfra.kubernetes.target import EksTarget

AMI_TYPE = "AL2023_x86_64_NVIDIA"  # driver, container toolkit and EFA in the AMI; nodeadm bootstraps it
ROOT_DEVICE = "/dev/xvda"
CAPACITY_TYPES = {"on-demand": "ON_DEMAND", "spot": "SPOT", "capacity-reservation": "ON_DEMAND",
                  "capacity-block": "CAPACITY_BLOCK"}
BOUNDARY = "GPUINFRA-BOUNDARY"


def models_dir_dropin() -> dict[str, str]:
    """After the RAID unit mounts the array (every boot), the weight cache belongs to the serving UID."""
    return {"path": f"/etc/systemd/system/{RAID_UNIT_NAME}.d/models-dir.conf", "permissions": "0644",
            "owner": "root:root", "content": "[Service]\nExecStartPost=/usr/bin/install -d -o "
                                             f"{RUN_AS} -g {RUN_AS} -m 0755 {NODE_MODELS_DIR}\n"}


def node_user_data_text() -> str:
    """MIME multipart, as EKS requires of a node group's template (EKS adds its nodeadm part to it) and as
    Karpenter takes an EC2NodeClass's userData (it merges its NodeConfig into it)."""
    part = cloud_config(extra_files=[models_dir_dropin()])
    return (f'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="{BOUNDARY}"\n\n--{BOUNDARY}\n'
            f'Content-Type: text/cloud-config; charset="us-ascii"\n\n{part}\n--{BOUNDARY}--\n')


def node_user_data() -> str:
    """The launch template's user data: node_user_data_text, base64-encoded."""
    return base64.b64encode(node_user_data_text().encode()).decode()


def kubeconfig(name: str, endpoint: str, certificate: str, region: str) -> str:
    """A kubeconfig that authenticates with `aws eks get-token` (no token in the state)."""
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": name,
        "clusters": [{"name": name, "cluster": {"server": endpoint, "certificate-authority-data": certificate}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "users": [{"name": name, "user": {"exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1", "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", name, "--region", region]}}}],
    })


@dataclass(frozen=True)
class EksClusterArgs:
    cluster: ResolvedCluster
    pods: PodPlan
    control_plane_subnet_ids: list[pulumi.Input[str]]  # two zones or more
    node_subnet_ids: list[pulumi.Input[str]]  # one zone for a copy over several nodes
    node_security_group_id: pulumi.Input[str]
    node_role_name: pulumi.Input[str]
    node_role_arn: pulumi.Input[str]
    tags: dict[str, str]  # the stack's tags plus the serving request (gpuinfra:*) the policies size against
    system_tags: dict[str, str]  # the stack's tags alone, for what serves no model (system nodes, Karpenter)


class EksCluster(pulumi.ComponentResource):
    cluster_name: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    node_group_names: dict[str, pulumi.Output[str]]
    gpu_security_group_ids: list[pulumi.Input[str]]
    placement_group_name: pulumi.Output[str] | None
    system_nodes: SystemNodeGroup  # both modes: where CoreDNS and the controllers run
    karpenter: KarpenterAws | None  # node_provisioning karpenter: its AWS parts

    def __init__(self, name: str, args: EksClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:kubernetes:EksCluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        config = args.cluster.config
        partition = partition_of(config.region)
        eks = self._control_plane(name, args, partition, child)
        for policy in EKS_NODE_POLICIES:
            aws.iam.RolePolicyAttachment(f"{name}-{policy}", role=args.node_role_name,
                                         policy_arn=f"arn:{partition}:iam::aws:policy/{policy}", opts=child)
        placement = None
        if args.pods.group_size > 1:
            placement = aws.ec2.PlacementGroup(f"{name}-cluster", strategy="cluster", tags=args.tags, opts=child)
        self.node_group_names = {}
        self.gpu_security_group_ids = [args.node_security_group_id, eks.vpc_config.cluster_security_group_id]
        self.placement_group_name = placement.name if placement else None
        target = config.target
        assert isinstance(target, EksTarget)  # gpuinfra.kubernetes.program builds an EksCluster for kind eks only
        self.system_nodes = SystemNodeGroup(f"{name}-system", SystemNodeGroupArgs(
            cluster_name=eks.name, partition=partition, settings=target.system_nodes,
            subnet_ids=args.control_plane_subnet_ids, security_group_ids=self.gpu_security_group_ids,
            tags=args.system_tags), opts=child)
        self.node_group_names["system"] = self.system_nodes.node_group_name
        self.karpenter = None
        if target.node_provisioning == "karpenter":
            self.karpenter = KarpenterAws(f"{name}-karpenter", KarpenterAwsArgs(
                cluster=eks, partition=partition, region=config.region, node_role_arn=args.node_role_arn,
                tags=args.system_tags), opts=child)
        else:
            self._gpu_node_groups(name, args, eks, child)
        self.cluster_name = eks.name
        self.kubeconfig = pulumi.Output.all(eks.name, eks.endpoint, eks.certificate_authority.data).apply(
            lambda values: kubeconfig(values[0], values[1], values[2], config.region))
        self.register_outputs({"cluster_name": self.cluster_name, "node_group_names": self.node_group_names})

    def _gpu_node_groups(self, name: str, args: EksClusterArgs, eks: aws.eks.Cluster,
                         child: pulumi.ResourceOptions) -> None:
        """One managed node group per approved type, each from the EC2 pool's launch-template builder."""
        config = args.cluster.config
        for index, (instance, evaluation) in enumerate(zip(args.cluster.instance_types, args.cluster.evaluations,
                                                           strict=True)):
            template = gpu_launch_template(f"{name}-nodes", instance, evaluation, LaunchTemplateSpec(
                security_group_ids=self.gpu_security_group_ids, tags=args.tags,
                capacity=config.capacity, image_id=None, instance_profile_arn=None, user_data=node_user_data(),
                ssh_key_name=config.access.ssh_key_name, root_volume_gib=config.root_volume_gib,
                root_device=ROOT_DEVICE, placement_group_name=self.placement_group_name,
                terminate_on_shutdown=False), child)
            group = self._node_group(name, args, eks, instance.name, template, primary=index == 0, opts=child)
            self.node_group_names[instance.name] = group.node_group_name

    def _control_plane(self, name: str, args: EksClusterArgs, partition: str,
                       child: pulumi.ResourceOptions) -> aws.eks.Cluster:
        """Private API endpoint by default, secrets encrypted with a rotated KMS key, control-plane audit logs."""
        target = args.cluster.config.target
        role = aws.iam.Role(f"{name}-cluster-role", assume_role_policy=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "eks.amazonaws.com"},
                                                    "Action": "sts:AssumeRole"}]}), tags=args.tags, opts=child)
        attachment = aws.iam.RolePolicyAttachment(f"{name}-cluster-policy", role=role.name, policy_arn=(
            f"arn:{partition}:iam::aws:policy/AmazonEKSClusterPolicy"), opts=child)
        key = aws.kms.Key(f"{name}-secrets", description=f"{name}: Kubernetes secrets envelope key",
                          enable_key_rotation=True, deletion_window_in_days=30, tags=args.tags, opts=child)
        return aws.eks.Cluster(
            f"{name}-cluster", name=name, role_arn=role.arn, version=target.version,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=args.control_plane_subnet_ids, security_group_ids=[args.node_security_group_id],
                endpoint_private_access=True, endpoint_public_access=target.public_endpoint),
            access_config=aws.eks.ClusterAccessConfigArgs(authentication_mode="API_AND_CONFIG_MAP",
                                                          bootstrap_cluster_creator_admin_permissions=True),
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=key.arn), resources=["secrets"]),
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            tags=args.tags, opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[attachment])))

    def _node_group(self, name: str, args: EksClusterArgs, eks: aws.eks.Cluster, instance_type: str,
                    template: aws.ec2.LaunchTemplate, *, primary: bool,
                    opts: pulumi.ResourceOptions) -> aws.eks.NodeGroup:
        """The first approved type holds the stack's nodes; the others start empty and may grow as far as the
        autoscaler's max_replicas needs (the budget has been checked against it)."""
        config = args.cluster.config
        most = serving_nodes(args.cluster, args.pods, replica_bounds(args.cluster, args.pods)[1])
        size = config.nodes if primary else 0
        suffix = resource_suffix(instance_type)
        return aws.eks.NodeGroup(
            f"{name}-{suffix}", cluster_name=eks.name, node_group_name=f"{name}-{suffix}",
            node_role_arn=args.node_role_arn, subnet_ids=args.node_subnet_ids, ami_type=AMI_TYPE,
            capacity_type=CAPACITY_TYPES[config.capacity.type],
            launch_template=aws.eks.NodeGroupLaunchTemplateArgs(id=template.id, version=template.latest_version.apply(
                str)),
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(min_size=size, desired_size=size,
                                                              max_size=max(most, size, 1)),
            update_config=aws.eks.NodeGroupUpdateConfigArgs(max_unavailable=1),
            labels=gpu_node_labels(find_instance_type(instance_type)),
            taints=[aws.eks.NodeGroupTaintArgs(key=GPU, value="true", effect="NO_SCHEDULE")],
            tags={**args.tags, "gpuinfra:instance-type": instance_type},
            # The cluster autoscaler owns the size once it runs.
            opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
                ignore_changes=["scalingConfig.desiredSize"])))
