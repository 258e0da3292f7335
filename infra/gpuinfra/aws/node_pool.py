"""GPU node pool: placement group, one launch template per instance type (its EFA layout differs), and one
Auto Scaling group. The plan's size does not grow with the node count: the group launches the nodes.

Capacity modes: on-demand (prioritized across the types), spot (capacity-optimized-prioritized across
every sizing-approved type, capacity rebalancing on), or a capacity reservation / capacity block
targeted from the launch template.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from gpuinfra.boot import cloud_config
from gpuinfra.catalog import InstanceType, load_catalog
from gpuinfra.catalog.schema import GpuImage
from gpuinfra.config import CapacityBlock, CapacityReservation, OnDemand, Spot
from gpuinfra.efa import efa_interfaces
from gpuinfra.sizing import Evaluation

ROOT_DEVICE = "/dev/sda1"
# OS, drivers, CUDA, container images, logs. The weights never live here: the sizing engine refuses a type
# whose instance store cannot hold them (reason code `nvme`), and the RAID unit mounts that store for them.
BASE_ROOT_GIB = 200
ROOT_VOLUME_TYPE, ROOT_IOPS, ROOT_THROUGHPUT_MIBPS = "gp3", 6000, 500  # gp3 above its baseline: image pulls
IMDS_HOP_LIMIT = 2  # IMDSv2 tokens reach containers one hop from the host (the CNI, the device plugins)


@dataclass(frozen=True)
class ImageChoice:
    """Which GPU image the node pool launches: a pinned AMI id (the stack's `ami_id`, else the catalog's for
    the region), or the newest image of the catalog's family, looked up at deploy time."""

    ami_id: str | None
    pinned_by: str | None  # "stack" | "catalog" | None (looked up)
    family: GpuImage

    def describe(self) -> str:
        if self.ami_id:
            source = "the stack's ami_id" if self.pinned_by == "stack" else "the catalog's image for the region"
            return f"{self.ami_id} (pinned by {source})"
        return (f"newest '{self.family.name_pattern}' at deploy time: not pinned for this region (set ami_id, or "
                "software.yaml gpu_image.region_ids)")


def image_choice(ami_id: str | None, region: str, family: GpuImage | None = None) -> ImageChoice:
    """The stack's ami_id, else the image FAMILY (default: the catalog's) pins for REGION, else a lookup."""
    family = family or load_catalog().software.gpu_image
    if ami_id:
        return ImageChoice(ami_id, "stack", family)
    pinned = family.region_ids.get(region)
    return ImageChoice(pinned, "catalog" if pinned else None, family)


def root_volume_gib(configured: int | None) -> int:
    """The root EBS volume: the stack's root_volume_gib, else the OS's BASE_ROOT_GIB."""
    return configured or BASE_ROOT_GIB


def resource_suffix(instance_type: str) -> str:
    return instance_type.replace(".", "-")


@dataclass(frozen=True)
class GpuNodePoolArgs:
    instance_types: list[InstanceType]  # priority order
    evaluations: list[Evaluation]  # the sizing answer for each, same order
    nodes: int
    nodes_per_copy: int  # > 1: a copy spans nodes, which then share a cluster placement group
    capacity: OnDemand | Spot | CapacityReservation | CapacityBlock
    subnet_ids: list[pulumi.Input[str]]
    security_group_id: pulumi.Input[str]
    instance_profile_arn: pulumi.Input[str]
    image: ImageChoice
    root_volume_gib: int | None
    ssh_key_name: str | None
    target_group_arns: list[pulumi.Input[str]]
    tags: dict[str, str]
    drain_at: str | None = None  # an on-demand environment's expiry + grace (UTC): the group scales to zero then


@dataclass(frozen=True)
class LaunchTemplateSpec:
    """What differs between the EC2 pool's launch templates and an EKS managed node group's (EKS supplies the
    AMI from the group's AMI type and the instance profile from its node role, and refuses a shutdown
    behaviour); the EFA interfaces, IMDSv2, encrypted root, tags and user data are the same code."""

    security_group_ids: list[pulumi.Input[str]]
    tags: dict[str, str]
    capacity: OnDemand | Spot | CapacityReservation | CapacityBlock
    image_id: pulumi.Input[str] | None
    instance_profile_arn: pulumi.Input[str] | None
    user_data: str
    ssh_key_name: str | None
    root_volume_gib: int | None
    root_device: str = ROOT_DEVICE
    placement_group_name: pulumi.Input[str] | None = None  # EKS: the group cannot name one, its template does
    terminate_on_shutdown: bool = True


def gpu_launch_template(name: str, instance: InstanceType, evaluation: Evaluation, spec: LaunchTemplateSpec,
                        opts: pulumi.ResourceOptions) -> aws.ec2.LaunchTemplate:
    """One GPU node type's launch template: an EFA interface per network card, IMDSv2 only, an encrypted gp3
    root sized for the weights when the instance store is too small, the RAID unit in the user data."""
    suffix = resource_suffix(instance.name)
    interfaces = [aws.ec2.LaunchTemplateNetworkInterfaceArgs(**interface.launch_template_args(spec.security_group_ids))
                  for interface in efa_interfaces(instance)]
    capacity_reservation = market_options = None
    if isinstance(spec.capacity, CapacityReservation | CapacityBlock):
        capacity_reservation = aws.ec2.LaunchTemplateCapacityReservationSpecificationArgs(
            capacity_reservation_target=aws.ec2.LaunchTemplateCapacityReservationSpecificationCapacityReservationTargetArgs(
                capacity_reservation_id=spec.capacity.reservation_id))
    if isinstance(spec.capacity, CapacityBlock):
        market_options = aws.ec2.LaunchTemplateInstanceMarketOptionsArgs(market_type="capacity-block")
    instance_tags = {**spec.tags, "Name": f"{name}-{suffix}", "gpuinfra:instance-type": instance.name}
    return aws.ec2.LaunchTemplate(
        f"{name}-{suffix}",
        description=f"gpuinfra GPU node {instance.name}: TP {evaluation.tensor_parallel} PP "
                    f"{evaluation.pipeline_parallel} EP {evaluation.expert_parallel}",
        image_id=spec.image_id,
        instance_type=instance.name,
        iam_instance_profile=aws.ec2.LaunchTemplateIamInstanceProfileArgs(arn=spec.instance_profile_arn)
        if spec.instance_profile_arn is not None else None,
        key_name=spec.ssh_key_name,
        metadata_options=aws.ec2.LaunchTemplateMetadataOptionsArgs(
            http_endpoint="enabled", http_tokens="required", http_put_response_hop_limit=IMDS_HOP_LIMIT,
            instance_metadata_tags="enabled"),
        block_device_mappings=[aws.ec2.LaunchTemplateBlockDeviceMappingArgs(
            device_name=spec.root_device,
            ebs=aws.ec2.LaunchTemplateBlockDeviceMappingEbsArgs(
                volume_size=root_volume_gib(spec.root_volume_gib), volume_type=ROOT_VOLUME_TYPE,
                iops=ROOT_IOPS, throughput=ROOT_THROUGHPUT_MIBPS, encrypted="true", delete_on_termination="true"))],
        network_interfaces=interfaces,
        placement=aws.ec2.LaunchTemplatePlacementArgs(group_name=spec.placement_group_name)
        if spec.placement_group_name is not None else None,
        capacity_reservation_specification=capacity_reservation,
        instance_market_options=market_options,
        monitoring=aws.ec2.LaunchTemplateMonitoringArgs(enabled=True),
        # A node that powers itself off (the node_expiry role's dead man's switch at expiry + grace) is
        # terminated, not kept stopped with its volumes billing.
        instance_initiated_shutdown_behavior="terminate" if spec.terminate_on_shutdown else None,
        user_data=spec.user_data,
        update_default_version=True,
        tag_specifications=[aws.ec2.LaunchTemplateTagSpecificationArgs(resource_type=kind, tags=instance_tags)
                            for kind in ("instance", "volume", "network-interface")],
        tags={**spec.tags, "gpuinfra:instance-type": instance.name},
        opts=opts)


class GpuNodePool(pulumi.ComponentResource):
    auto_scaling_group_name: pulumi.Output[str]
    placement_group_name: pulumi.Output[str] | None
    launch_template_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: GpuNodePoolArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:aws:GpuNodePool", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        placement_group = None
        if args.nodes_per_copy > 1:
            placement_group = aws.ec2.PlacementGroup(f"{name}-cluster", strategy="cluster", tags=args.tags,
                                                     opts=child)
        self.placement_group_name = placement_group.name if placement_group else None
        family = args.image.family
        image_id = args.image.ami_id or aws.ec2.get_ami_output(
            most_recent=True, owners=[family.owner],
            filters=[aws.ec2.GetAmiFilterArgs(name="name", values=[family.name_pattern]),
                     aws.ec2.GetAmiFilterArgs(name="architecture", values=[family.architecture])],
            opts=pulumi.InvokeOutputOptions(parent=self)).id
        user_data = base64.b64encode(cloud_config().encode()).decode()
        self.launch_template_ids = {}
        templates = []
        for instance, evaluation in zip(args.instance_types, args.evaluations, strict=True):
            template = self._launch_template(name, args, instance, evaluation, image_id, user_data, child)
            self.launch_template_ids[instance.name] = template.id
            templates.append((instance, template))
        group = self._auto_scaling_group(name, args, templates, placement_group, child)
        self.auto_scaling_group_name = group.name
        if args.drain_at:
            # The AWS half of the dead man's switch: nodes that powered themselves off are not replaced, and
            # any node the switch missed is terminated, even when no reaper ever runs.
            aws.autoscaling.Schedule(f"{name}-expiry", autoscaling_group_name=group.name,
                                     scheduled_action_name=f"{name}-expiry", start_time=args.drain_at,
                                     min_size=0, max_size=0, desired_capacity=0, opts=child)
        self.register_outputs({
            "auto_scaling_group_name": self.auto_scaling_group_name,
            "launch_template_ids": self.launch_template_ids,
        })

    def _launch_template(self, name: str, args: GpuNodePoolArgs, instance: InstanceType, evaluation: Evaluation,
                         image_id: pulumi.Input[str], user_data: str,
                         child: pulumi.ResourceOptions) -> aws.ec2.LaunchTemplate:
        return gpu_launch_template(name, instance, evaluation, LaunchTemplateSpec(
            security_group_ids=[args.security_group_id], tags=args.tags, capacity=args.capacity, image_id=image_id,
            instance_profile_arn=args.instance_profile_arn, user_data=user_data, ssh_key_name=args.ssh_key_name,
            root_volume_gib=args.root_volume_gib), child)

    def _auto_scaling_group(self, name: str, args: GpuNodePoolArgs,
                            templates: list[tuple[InstanceType, aws.ec2.LaunchTemplate]],
                            placement_group: aws.ec2.PlacementGroup | None,
                            child: pulumi.ResourceOptions) -> aws.autoscaling.Group:
        overrides = [aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideArgs(
            instance_type=instance.name,
            launch_template_specification=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateOverrideLaunchTemplateSpecificationArgs(
                launch_template_id=template.id, version="$Latest"))
            for instance, template in templates]
        spot = isinstance(args.capacity, Spot)
        distribution = aws.autoscaling.GroupMixedInstancesPolicyInstancesDistributionArgs(
            on_demand_allocation_strategy="prioritized",
            on_demand_base_capacity=0 if spot else args.nodes,
            on_demand_percentage_above_base_capacity=0 if spot else 100,
            spot_allocation_strategy="capacity-optimized-prioritized" if spot else None,
            spot_max_price=str(args.capacity.max_price_usd_per_hour) if spot and args.capacity.max_price_usd_per_hour
            else None)
        first = templates[0][1]
        mixed = aws.autoscaling.GroupMixedInstancesPolicyArgs(
            instances_distribution=distribution,
            launch_template=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateArgs(
                launch_template_specification=aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgs(
                    launch_template_id=first.id, version="$Latest"),
                overrides=overrides))
        group_tags = {**args.tags, "Name": f"{name}-node"}
        return aws.autoscaling.Group(
            f"{name}-asg",
            min_size=args.nodes, max_size=args.nodes, desired_capacity=args.nodes,
            vpc_zone_identifiers=args.subnet_ids,
            placement_group=placement_group.name if placement_group else None,
            mixed_instances_policy=mixed,
            capacity_rebalance=spot,
            health_check_type="EC2",
            health_check_grace_period=900,
            # GPU nodes take minutes to boot and load weights; waiting for capacity would make `pulumi up`
            # hang on an insufficient-capacity error instead of reporting it.
            wait_for_capacity_timeout="0",
            target_group_arns=args.target_group_arns or None,
            tags=[aws.autoscaling.GroupTagArgs(key=key, value=value, propagate_at_launch=False)
                  for key, value in sorted(group_tags.items())],
            opts=child)
