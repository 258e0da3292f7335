"""Node identity: the instance role and profile. SSM core access, and read-only access to the weights
prefix only (no wildcard actions, no admin policies, nothing writable)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


def partition_of(region: str) -> str:
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def assume_role_policy() -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]})


def weights_read_policy(partition: str, bucket: str, prefix: str) -> str:
    """GetObject under the prefix, ListBucket restricted to it; nothing else."""
    objects = f"arn:{partition}:s3:::{bucket}/{prefix + '/' if prefix else ''}*"
    listing = {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": f"arn:{partition}:s3:::{bucket}"}
    if prefix:
        listing["Condition"] = {"StringLike": {"s3:prefix": [prefix, f"{prefix}/*"]}}
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": objects},
        listing,
    ]})


@dataclass(frozen=True)
class NodeIdentityArgs:
    region: str
    ssm: bool
    weights_bucket: str | None
    weights_prefix: str
    tags: dict[str, str]


class NodeIdentity(pulumi.ComponentResource):
    role_name: pulumi.Output[str]
    role_arn: pulumi.Output[str]
    instance_profile_arn: pulumi.Output[str]

    def __init__(self, name: str, args: NodeIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("gpuinfra:aws:NodeIdentity", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        partition = partition_of(args.region)
        role = aws.iam.Role(f"{name}-role", assume_role_policy=assume_role_policy(),
                            description="gpuinfra GPU node: SSM core, read-only model weights",
                            tags=args.tags, opts=child)
        if args.ssm:
            aws.iam.RolePolicyAttachment(
                f"{name}-ssm", role=role.name,
                policy_arn=f"arn:{partition}:iam::aws:policy/AmazonSSMManagedInstanceCore", opts=child)
        if args.weights_bucket:
            aws.iam.RolePolicy(f"{name}-weights", role=role.id,
                               policy=weights_read_policy(partition, args.weights_bucket, args.weights_prefix),
                               opts=child)
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=args.tags, opts=child)
        self.role_name = role.name
        self.role_arn = role.arn  # an EKS node group takes the role itself, not the profile
        self.instance_profile_arn = profile.arn
        self.register_outputs({"role_name": self.role_name, "instance_profile_arn": self.instance_profile_arn})
