"""What the rules share: reading tags, the serving request carried on a resource, the instance types a
resource can launch, and rule config with its schema defaults."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpuinfra.catalog import InstanceType, load_catalog
from gpuinfra.errors import InputError
from gpuinfra.request import TAG_PREFIX, ServingRequest
from gpuinfra.sizing import SizingRequest
from pulumi_policy import PolicyConfigSchema

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
AUTO_SCALING_GROUP = "aws:autoscaling/group:Group"
INSTANCE = "aws:ec2/instance:Instance"
FLEET = "aws:ec2/fleet:Fleet"
SPOT_FLEET = "aws:ec2/spotFleetRequest:SpotFleetRequest"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
LEGACY_RULE = "aws:ec2/securityGroupRule:SecurityGroupRule"
SUBNET = "aws:ec2/subnet:Subnet"
PLACEMENT_GROUP = "aws:ec2/placementGroup:PlacementGroup"
# Every AWS resource that can start a GPU instance: each one's instance types go through the sizing and host
# rules (a type left out here would be a way around them).
GPU_LAUNCHERS = (LAUNCH_TEMPLATE, AUTO_SCALING_GROUP, INSTANCE, FLEET, SPOT_FLEET)



def schema(**properties: dict[str, Any]) -> PolicyConfigSchema:
    return PolicyConfigSchema(properties=properties)


def config_of(args: Any, policy_schema: PolicyConfigSchema | None) -> dict[str, Any]:
    """The policy's config with the schema's defaults filled in (CrossGuard passes only what was set)."""
    values = {key: spec["default"] for key, spec in (policy_schema.properties if policy_schema else {}).items()
              if "default" in spec}
    values.update({k: v for k, v in (args.get_config() or {}).items() if k != "enforcementLevel"})
    return values


def tags_of(props: Mapping[str, Any]) -> dict[str, str]:
    """Tags as a dict, from a `tags` map or an Auto Scaling group's list of {key, value}."""
    tags = props.get("tags") or {}
    if isinstance(tags, list):
        return {t.get("key"): t.get("value") for t in tags if isinstance(t, Mapping)}
    return dict(tags)


def catalog_type(name: str | None) -> InstanceType | None:
    if not name:
        return None
    return next((i for i in load_catalog().instances if i.name == name), None)


def launchable_types(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Instance types a launch template, group, fleet or instance can start (as far as its own inputs say)."""
    if resource_type in (LAUNCH_TEMPLATE, INSTANCE):
        return [props["instanceType"]] if props.get("instanceType") else []
    if resource_type == AUTO_SCALING_GROUP:
        policy = props.get("mixedInstancesPolicy") or {}
        overrides = (policy.get("launchTemplate") or {}).get("overrides") or []
        return [o["instanceType"] for o in overrides if o.get("instanceType")]
    if resource_type in (FLEET, SPOT_FLEET):
        names = []
        for config in props.get("launchTemplateConfigs") or []:
            names += [o["instanceType"] for o in config.get("overrides") or [] if o.get("instanceType")]
        # A spot fleet may also launch from inline launch specifications.
        names += [spec["instanceType"] for spec in props.get("launchSpecifications") or [] if spec.get("instanceType")]
        return list(dict.fromkeys(names))
    return []


def nodes_per_copy(tags: Mapping[str, str]) -> int:
    try:
        return max(1, int(tags.get("gpuinfra:nodes-per-copy", "1")))
    except ValueError:
        return 1


def request_from_tags(tags: Mapping[str, str]) -> tuple[SizingRequest | None, str | None]:
    """The request carried in `gpuinfra:*` tags, or why it cannot be read. (None, None): no request here."""
    try:
        request = ServingRequest.from_labels(dict(tags), TAG_PREFIX)
        return (request.sizing_request() if request else None), None
    except InputError as exc:
        return None, "; ".join(str(p) for p in exc.problems)


def walk_strings(value: Any, path: str = "") -> Iterable[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from walk_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from walk_strings(item, f"{path}[{index}]")


def group_launch_template_ids(props: Mapping[str, Any]) -> set[str]:
    """Launch template ids an Auto Scaling group can launch from."""
    launch_template = (props.get("mixedInstancesPolicy") or {}).get("launchTemplate") or {}
    specs = [launch_template.get("launchTemplateSpecification") or {}]
    specs += [o.get("launchTemplateSpecification") or {} for o in launch_template.get("overrides") or []]
    specs.append(props.get("launchTemplate") or {})
    return {s.get("launchTemplateId") or s.get("id") for s in specs if s}
