"""Run the real Pulumi program offline, under Pulumi's mock runtime: no CLI, no credentials, no cloud.

The mock monitor records every registered resource (type, name, parent, inputs as the engine would
receive them, camelCase). A stand-in for the cloud (`FakeCloud`) answers the few invokes the program makes
and gives each resource the outputs its dependents read. Nothing here talks to AWS.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as pulumi_mocks
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

from gpuinfra.config import ResolvedCluster

PROJECT = "gpuinfra"
STACK_TYPE = "pulumi:pulumi:Stack"


@dataclass(frozen=True)
class RecordedResource:
    type: str
    name: str
    parent: str | None  # the parent's name; None under the stack
    inputs: dict[str, Any]
    urn: str
    custom: bool
    id: str | None = None
    ignore_changes: tuple[str, ...] = ()  # the resource option, e.g. spec.replicas under an autoscaler

    def as_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "parent": self.parent, "inputs": self.inputs}


@dataclass
class PreviewResult:
    resources: list[RecordedResource]
    outputs: dict[str, Any]
    invokes: list[str] = field(default_factory=list)


def _fake_id(kind: str, name: str) -> str:
    return f"{kind}-{hashlib.sha256(name.encode()).hexdigest()[:17]}"


class FakeCloud(pulumi_mocks.Mocks):
    """A stand-in for AWS: deterministic ids and the outputs the program reads back."""

    ID_PREFIX = {
        "aws:ec2/vpc:Vpc": "vpc", "aws:ec2/subnet:Subnet": "subnet", "aws:ec2/securityGroup:SecurityGroup": "sg",
        "aws:ec2/launchTemplate:LaunchTemplate": "lt", "aws:ec2/routeTable:RouteTable": "rtb",
        "aws:ec2/internetGateway:InternetGateway": "igw", "aws:ec2/natGateway:NatGateway": "nat",
        "aws:ec2/eip:Eip": "eipalloc", "aws:ec2/vpcEndpoint:VpcEndpoint": "vpce",
        "aws:ec2/placementGroup:PlacementGroup": "pg",
    }

    def __init__(self, region: str) -> None:
        self.region = region
        self.invokes: list[str] = []

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict]:
        outputs = dict(args.inputs)
        resource_id = _fake_id(self.ID_PREFIX.get(args.typ, "id"), args.name)
        arn = f"arn:aws:{args.typ.split(':')[1].split('/')[0]}:{self.region}:123456789012:{args.name}"
        outputs.setdefault("arn", arn)
        outputs.setdefault("name", args.name)
        if args.typ == "aws:lb/loadBalancer:LoadBalancer":
            outputs["dnsName"] = f"internal-{args.name}.{self.region}.elb.amazonaws.com"
        if args.typ == "aws:ec2/launchTemplate:LaunchTemplate":
            outputs["latestVersion"] = 1
        if args.typ == "aws:eks/cluster:Cluster":  # what the provider's kubeconfig and node templates read
            outputs["endpoint"] = f"https://{resource_id}.gr7.{self.region}.eks.amazonaws.com"
            outputs["certificateAuthority"] = {"data": "c3RhbmQtaW4tY2VydGlmaWNhdGU="}
            outputs["vpcConfig"] = {**(outputs.get("vpcConfig") or {}),
                                    "clusterSecurityGroupId": _fake_id("sg", f"{args.name}-cluster")}
        return resource_id, outputs

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict, list]:
        self.invokes.append(args.token)
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            names = [f"{self.region}{letter}" for letter in "abcdef"]
            return {"names": names, "zoneIds": [f"use1-az{i}" for i in range(1, 7)], "id": self.region}, []
        if args.token == "aws:ec2/getAmi:getAmi":
            return {"id": "ami-0fakedlami000000", "imageId": "ami-0fakedlami000000", "architecture": "x86_64",
                    "name": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) (stand-in)"}, []
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": args.args.get("id"), "cidrBlock": "10.0.0.0/16"}, []
        return {}, []


class RecordingMonitor(pulumi_mocks.MockMonitor):
    """The mock monitor, also keeping each registration's parent (mocks alone do not see it)."""

    def __init__(self, mocks: FakeCloud) -> None:
        super().__init__(mocks)
        self.recorded: list[RecordedResource] = []

    def RegisterResource(self, request):  # noqa: N802 (the gRPC method name)
        response = super().RegisterResource(request)
        if request.type != STACK_TYPE:
            from pulumi.runtime import rpc

            parent = None
            if request.parent and request.parent.split("::")[2].split("$")[-1] != STACK_TYPE:
                parent = request.parent.rsplit("::", 1)[-1]
            inputs = _sync_await(_plain(rpc.deserialize_properties(request.object)))
            self.recorded.append(RecordedResource(type=request.type, name=request.name, parent=parent,
                                                  inputs=inputs, urn=response.urn, custom=bool(request.custom),
                                                  id=response.id or None,
                                                  ignore_changes=tuple(request.ignoreChanges)))
        return response


async def _plain(value: Any) -> Any:
    return _whole_numbers(value)


def _whole_numbers(value: Any) -> Any:
    """The engine's wire format (protobuf Struct) carries every number as a double; counts read better as ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(item) for item in value]
    return value


def run_offline(cluster: ResolvedCluster) -> PreviewResult:
    """Declare the stack under mocks and return what was registered and the resolved stack outputs."""
    from gpuinfra.aws.program import declare

    return run_program(lambda: declare(cluster), stack=cluster.stack, region=cluster.config.region)


def run_program(program: Callable[[], dict[str, Any] | None], *, stack: str, region: str) -> PreviewResult:
    """Run any Pulumi program function under the mock runtime; its returned dict is resolved as outputs."""
    cloud = FakeCloud(region)
    monitor = RecordingMonitor(cloud)
    pulumi.runtime.set_mocks(cloud, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    outputs: dict[str, Any] = {}

    def run() -> None:
        outputs.update(_sync_await(pulumi.Output.from_input(program() or {}).future()) or {})

    _sync_await(run_pulumi_func(run))
    return PreviewResult(resources=monitor.recorded, outputs=outputs, invokes=cloud.invokes)
