"""Each gpu-guardrails rule called directly (AWSGuard style): a happy resource from the real plan, then one
field broken per test, with the exact message."""

from __future__ import annotations

import copy
import json
import re
from functools import cache

import pytest
from gpu_guardrails.compute import capacity_target, host_minimums, spot_diversification, spot_pools
from gpu_guardrails.network import multi_node_cluster, multi_node_efa, no_public_ingress
from gpu_guardrails.offline import run_policies
from gpu_guardrails.security import imdsv2_required, no_public_ip, node_role, required_tags, secrets_protected
from gpu_guardrails.sizing import gpu_sizing
from gpu_guardrails.storage import ebs_encrypted, root_volume
from gpuinfra.catalog import find_instance_type
from gpuinfra.plan import resolve_stack
from gpuinfra.preview import RecordedResource, run_offline
from gpuinfra.sizing import Hardware, evaluate
from pulumi_policy import EnforcementLevel, PolicyResourceOptions, ResourceValidationArgs


@cache
def _recorded(stack: str, *sets: str) -> tuple[RecordedResource, ...]:
    return tuple(run_offline(resolve_stack(stack, sets=list(sets))).resources)


def resources(stack: str, *sets: str) -> list[RecordedResource]:
    return copy.deepcopy(list(_recorded(stack, *sets)))


def one(stack: str, type_suffix: str, *sets: str) -> RecordedResource:
    return next(r for r in resources(stack, *sets) if r.type.endswith(type_suffix))


def check(policy, resource: RecordedResource, config: dict | None = None) -> list[str]:
    messages: list[str] = []
    args = ResourceValidationArgs(resource.type, resource.inputs, resource.urn, resource.name,
                                  PolicyResourceOptions(False, [], None, [], None, []), None, config or {})
    policy.validate(args, lambda message, urn=None: messages.append(message))
    return messages


def check_stack(policy, stack_resources, config: dict | None = None) -> list[str]:
    return [v["message"] for v in run_policies(stack_resources, policies=[policy], config={policy.name: config or {}})]


def set_tag(resource: RecordedResource, key: str, value: str) -> None:
    tags = resource.inputs["tags"]
    if isinstance(tags, list):
        for tag in tags:
            if tag["key"] == key:
                tag["value"] = value
    else:
        tags[key] = value


# --- gpu-sizing -----------------------------------------------------------------------------------------

def test_gpu_sizing_passes_the_shipped_launch_template():
    assert check(gpu_sizing, one("prod-70b", "LaunchTemplate")) == []


def test_gpu_sizing_rejects_a_gpu_too_small_and_names_the_cheapest_fits():
    template = one("prod-70b", "LaunchTemplate")
    template.inputs["instanceType"] = "g6e.xlarge"
    (message,) = check(gpu_sizing, template)
    why, _, fits = message.partition("; cheapest that fit: ")
    assert why.startswith("g6e.xlarge x 1 cannot serve deepseek-r1-distill-llama-70b (bf16, 16 x 32768 tokens): "
                          "weights need 131.4 GiB per GPU plus ")
    assert why.endswith("but only 40.2 GiB is usable (44.7 GiB x 0.9)")
    # Three suggestions, cheapest first, each one really serving the request (prices come from the catalog).
    request = resolve_stack("prod-70b").request
    suggested = [re.fullmatch(r"(\S+) x (\d+) \(\$([\d.,]+)/h\)", item).groups() for item in fits.split(", ")]
    assert len(suggested) == 3
    prices = [float(price.replace(",", "")) for _, _, price in suggested]
    assert prices == sorted(prices)
    for name, nodes, price in suggested:
        evaluation = evaluate(request, Hardware.from_instance(find_instance_type(name), int(nodes)))
        assert evaluation.feasible and evaluation.cost_per_hour_usd == pytest.approx(float(price.replace(",", "")),
                                                                                    abs=0.005)


def test_gpu_sizing_rejects_fp8_on_a_gpu_without_fp8_and_too_many_tokens():
    template = one("prod-r1", "LaunchTemplate")
    template.inputs["instanceType"] = "p4d.24xlarge"
    (message,) = check(gpu_sizing, template)
    assert "p4d.24xlarge x 2 cannot serve deepseek-r1" in message and "FP8" in message


def test_gpu_sizing_checks_every_type_of_a_spot_group():
    group = one("spot-32b", "autoscaling/group:Group")
    group.inputs["mixedInstancesPolicy"]["launchTemplate"]["overrides"].append({"instanceType": "g6.xlarge"})
    (message,) = check(gpu_sizing, group)
    assert message.startswith("g6.xlarge x 1 cannot serve deepseek-r1-distill-qwen-32b")


def test_gpu_sizing_flags_types_outside_the_catalog_and_unreadable_tags():
    template = one("dev-7b", "LaunchTemplate")
    template.inputs["instanceType"] = "x9.large"
    assert check(gpu_sizing, template) == ["x9.large is not in the gpuinfra catalog, so its GPUs cannot be checked "
                                           "against deepseek-r1-distill-qwen-7b; use a catalog type"]
    set_tag(template, "gpuinfra:context-tokens", "lots")
    (message,) = check(gpu_sizing, template)
    assert message.startswith("the serving request in the gpuinfra:* tags cannot be read")


def test_gpu_sizing_ignores_resources_without_a_serving_request():
    template = one("dev-7b", "LaunchTemplate")
    del template.inputs["tags"]["gpuinfra:model"]
    template.inputs["instanceType"] = "g6.xlarge"
    assert check(gpu_sizing, template) == []


@pytest.mark.parametrize("launcher", ["fleet", "spot-fleet-inline", "spot-fleet-template"])
def test_every_gpu_launcher_is_sized_and_host_checked(launcher):
    """A fleet or spot fleet request launching a GPU too small must not escape gpu-sizing or host-minimums."""
    template = one("prod-70b", "LaunchTemplate")
    tags = template.inputs["tags"]
    props = {
        "fleet": ("aws:ec2/fleet:Fleet", {"tags": tags, "launchTemplateConfigs": [
            {"launchTemplateSpecification": {"launchTemplateId": "lt-1"}, "overrides": [{"instanceType": "g6e.xlarge"}]}
        ]}),
        "spot-fleet-inline": ("aws:ec2/spotFleetRequest:SpotFleetRequest", {"tags": tags, "launchSpecifications": [
            {"ami": "ami-12345678", "instanceType": "g6e.xlarge"}]}),
        "spot-fleet-template": ("aws:ec2/spotFleetRequest:SpotFleetRequest", {"tags": tags, "launchTemplateConfigs": [
            {"launchTemplateSpecification": {"id": "lt-1"}, "overrides": [{"instanceType": "g6e.xlarge"}]}]}),
    }[launcher]
    fleet = RecordedResource(type=props[0], name="escape", urn=f"urn:pulumi:t::p::{props[0]}::escape", id="x",
                             inputs=props[1], parent=None, custom=True)
    (sizing_message,) = check(gpu_sizing, fleet)
    assert sizing_message.startswith("g6e.xlarge x 1 cannot serve deepseek-r1-distill-llama-70b")
    assert check(host_minimums, fleet), "host-minimums let a too-small host through"


# --- host-minimums --------------------------------------------------------------------------------------

def test_host_minimums_pass_and_fail_on_the_organisation_floor():
    template = next(r for r in resources("prod-70b") if r.inputs.get("instanceType") == "p4de.24xlarge")
    assert check(host_minimums, template) == []
    (message,) = check(host_minimums, template, {"large_model_min_vcpus": 200})
    assert message == ("p4de.24xlarge host is short for deepseek-r1-distill-llama-70b: 96 vCPUs < the 200 required "
                       "for models >= 34B (71B)")


def test_host_minimums_small_model_on_a_small_host_is_fine_but_a_large_one_is_not():
    template = one("dev-7b", "LaunchTemplate")
    assert check(host_minimums, template) == []
    set_tag(template, "gpuinfra:model", "deepseek-r1-distill-qwen-32b")
    template.inputs["instanceType"] = "g6e.xlarge"
    messages = check(host_minimums, template)
    assert "4 vCPUs < the 16 required for models >= 34B" not in " ".join(messages)  # 32B is not large
    set_tag(template, "gpuinfra:model", "deepseek-r1-distill-llama-70b")
    set_tag(template, "gpuinfra:precision", "int4-awq")
    template.inputs["instanceType"] = "g6e.2xlarge"
    (message,) = check(host_minimums, template)
    assert "8 vCPUs < the 16 required for models >= 34B (71B)" in message


# --- multi-node ---------------------------------------------------------------------------------------

def test_multi_node_efa_needs_efa_on_every_card():
    template = one("prod-r1", "LaunchTemplate")
    assert check(multi_node_efa, template) == []
    template.inputs["networkInterfaces"] = template.inputs["networkInterfaces"][:1]
    assert check(multi_node_efa, template) == [
        "p5.48xlarge has 32 network cards but 31 carry no EFA interface (cards 1, 2, 3, 4, 5, 6, 7, 8 ...); NCCL "
        "then runs at a fraction of the fabric's bandwidth"]
    template.inputs["instanceType"] = "g6e.xlarge"
    assert check(multi_node_efa, template) == ["g6e.xlarge has no EFA; a model copy spanning 2 nodes needs it"]


def test_multi_node_efa_does_not_apply_to_single_node_copies():
    template = one("prod-70b", "LaunchTemplate")
    template.inputs["networkInterfaces"] = []
    assert check(multi_node_efa, template) == []


def test_multi_node_cluster_passes_the_shipped_stack():
    assert check_stack(multi_node_cluster, resources("prod-r1")) == []


def test_multi_node_cluster_without_placement_group():
    stack = resources("prod-r1")
    group = next(r for r in stack if r.type.endswith("autoscaling/group:Group"))
    del group.inputs["placementGroup"]
    assert check_stack(multi_node_cluster, stack) == [
        "gpuinfra-prod-r1-nodes-asg has no placement group; a model copy spans 2 nodes and needs a cluster "
        "placement group"]


def test_multi_node_cluster_needs_a_self_open_security_group_and_one_zone():
    stack = [r for r in resources("prod-r1") if not r.name.endswith("nodes-self-in")]
    (message,) = check_stack(multi_node_cluster, stack)
    assert "does not allow all inbound traffic with itself; EFA needs both" in message
    stack = resources("prod-r1")
    group = next(r for r in stack if r.type.endswith("autoscaling/group:Group"))
    lb_subnet = next(r for r in stack if r.name.endswith("lb-us-east-1b"))
    group.inputs["vpcZoneIdentifiers"].append(lb_subnet.id)
    (message,) = check_stack(multi_node_cluster, stack)
    assert "zones us-east-1a, us-east-1b; a model copy spans 2 nodes and they must share one zone" in message


def test_two_nodes_without_efa_fail_both_rules():
    stack = resources("prod-r1")
    template = next(r for r in stack if r.type.endswith("LaunchTemplate"))
    template.inputs["networkInterfaces"] = [{"networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "interface",
                                             "securityGroups": template.inputs["networkInterfaces"][0][
                                                 "securityGroups"]}]
    policies = {v["policy"] for v in run_policies(stack) if v["enforcement"] == "mandatory"}
    assert policies == {"multi-node-efa"}


# --- capacity ---------------------------------------------------------------------------------------------

def test_spot_needs_two_types_and_recommends_three():
    group = one("spot-32b", "autoscaling/group:Group")
    assert check(spot_diversification, group) == [] and check(spot_pools, group) == []
    overrides = group.inputs["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    del overrides[1:]
    assert check(spot_diversification, group) == [
        "spot with 1 instance type(s) (g6e.12xlarge); use at least 2 so one reclaimed pool cannot take every node"]
    assert check(spot_pools, group) == ["spot with 1 instance types; 3 or more pools make interruptions rarer"]
    assert spot_pools.enforcement_level == EnforcementLevel.ADVISORY


def test_spot_strategy_and_rebalancing():
    group = one("spot-32b", "autoscaling/group:Group")
    group.inputs["mixedInstancesPolicy"]["instancesDistribution"]["spotAllocationStrategy"] = "lowest-price"
    group.inputs["capacityRebalance"] = False
    assert check(spot_diversification, group) == [
        "spot allocation strategy 'lowest-price' picks pools by price alone; use capacity-optimized-prioritized"]
    assert check(spot_pools, group) == ["capacityRebalance is off: nodes are replaced only after they are reclaimed"]


def test_on_demand_groups_are_not_spot():
    assert check(spot_diversification, one("prod-70b", "autoscaling/group:Group")) == []


BLOCK = "capacity={type: capacity-block, reservation_id: cr-0123456789abcdef0}"


def test_capacity_block_matches_type_and_zone():
    stack = resources("prod-r1", BLOCK)
    assert check_stack(capacity_target, stack) == []
    config = {"reservations": {"cr-0123456789abcdef0": {"instance_type": "p5en.48xlarge",
                                                        "availability_zone": "us-east-1b"}}}
    messages = check_stack(capacity_target, stack, config)
    assert messages == [
        "cr-0123456789abcdef0 is for p5en.48xlarge, but the launch template launches p5.48xlarge",
        "gpuinfra-prod-r1-nodes-asg launches in us-east-1a but cr-0123456789abcdef0 is in us-east-1b"]


def test_capacity_block_with_extra_types_or_spot():
    stack = resources("prod-r1", BLOCK)
    group = next(r for r in stack if r.type.endswith("autoscaling/group:Group"))
    group.inputs["mixedInstancesPolicy"]["launchTemplate"]["overrides"].append({"instanceType": "p4d.24xlarge"})
    group.inputs["mixedInstancesPolicy"]["instancesDistribution"]["spotAllocationStrategy"] = "capacity-optimized"
    assert check_stack(capacity_target, stack) == [
        "gpuinfra-prod-r1-nodes-asg launches p4d.24xlarge, p5.48xlarge with a launch template that targets "
        "cr-0123456789abcdef0 for p5.48xlarge only",
        "gpuinfra-prod-r1-nodes-asg is spot but targets reservation cr-0123456789abcdef0"]


# --- network / security / storage ------------------------------------------------------------------------

def test_no_public_ingress_rule_and_inline():
    rule = one("prod-r1", "SecurityGroupIngressRule")
    assert check(no_public_ingress, rule) == []
    rule.inputs.update({"cidrIpv4": "0.0.0.0/0", "ipProtocol": "tcp", "fromPort": 22, "toPort": 22})
    rule.inputs.pop("referencedSecurityGroupId", None)
    assert check(no_public_ingress, rule) == [
        "ingress from 0.0.0.0/0 on tcp 22-22: GPU stacks take no traffic from the whole internet (use SSM, an "
        "internal load balancer, or named CIDRs)"]
    assert check(no_public_ingress, rule, {"allowed_public_ports": [22]}) == []
    group = one("prod-r1", "securityGroup:SecurityGroup")
    group.inputs["ingress"] = [{"protocol": "-1", "fromPort": 0, "toPort": 0, "ipv6CidrBlocks": ["::/0"]}]
    assert check(no_public_ingress, group) == [
        "ingress from ::/0 on all ports: GPU stacks take no traffic from the whole internet (use SSM, an internal "
        "load balancer, or named CIDRs)"]


def test_imdsv1_is_refused():
    template = one("dev-7b", "LaunchTemplate")
    assert check(imdsv2_required, template) == []
    template.inputs["metadataOptions"]["httpTokens"] = "optional"
    assert check(imdsv2_required, template) == [
        "instance metadata allows IMDSv1 (httpTokens='optional'); set metadataOptions.httpTokens to 'required'"]


def test_unencrypted_root_is_refused_and_small_root_advised():
    template = one("dev-7b", "LaunchTemplate")
    assert check(ebs_encrypted, template) == [] and check(root_volume, template) == []
    template.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] = "false"
    template.inputs["blockDeviceMappings"][0]["ebs"]["volumeSize"] = 30
    assert check(ebs_encrypted, template) == ["/dev/sda1 is not encrypted (ebs.encrypted must be true)"]
    assert check(root_volume, template) == [
        "root volume 30 GiB < 100 GiB: GPU images and container layers do not fit"]


def test_public_ip_on_a_gpu_node_is_refused():
    template = one("prod-r1", "LaunchTemplate")
    assert check(no_public_ip, template) == []
    template.inputs["networkInterfaces"][0]["associatePublicIpAddress"] = "true"
    assert check(no_public_ip, template) == ["network card 0 gets a public IP"]
    subnet = next(r for r in resources("dev-7b") if r.name.endswith("nodes-us-east-1a"))
    subnet.inputs["mapPublicIpOnLaunch"] = True
    assert check(no_public_ip, subnet) == ["a GPU node subnet maps public IPs on launch"]


def test_node_role_wildcards_and_admin_policies():
    policy = one("prod-70b", "rolePolicy:RolePolicy")
    assert check(node_role, policy) == []
    document = json.loads(policy.inputs["policy"])
    document["Statement"][0]["Action"] = ["s3:*", "ec2:DescribeInstances"]
    policy.inputs["policy"] = json.dumps(document)
    assert check(node_role, policy) == ["allows wildcard actions s3:*; name the actions the node needs"]
    attachment = one("prod-70b", "rolePolicyAttachment:RolePolicyAttachment")
    assert check(node_role, attachment) == []
    attachment.inputs["policyArn"] = "arn:aws:iam::aws:policy/AdministratorAccess"
    assert check(node_role, attachment) == [
        "attaches AdministratorAccess; GPU nodes get SSM core and read-only weights access only"]


def test_hf_token_in_user_data_or_tags_is_refused():
    import base64

    template = one("dev-7b", "LaunchTemplate")
    assert check(secrets_protected, template) == []
    token = "hf_" + "a1B2c3D4e5" * 4
    user_data = base64.b64decode(template.inputs["userData"]).decode() + f"\nexport HF_TOKEN={token}\n"
    template.inputs["userData"] = base64.b64encode(user_data.encode()).decode()
    (message,) = check(secrets_protected, template)
    assert message.startswith("a Hugging Face token sits in plain text in userData")
    parameter = RecordedResource("aws:ssm/parameter:Parameter", "hf", None, {"name": "/gpuinfra/hf-token",
                                 "type": "String", "value": token}, "urn:x", True)
    assert check(secrets_protected, parameter) == [
        "a token is stored in an SSM parameter that is not a SecureString"]
    parameter.inputs["type"] = "SecureString"
    assert check(secrets_protected, parameter) == []


def test_required_tags_are_advisory_and_configurable():
    template = one("dev-7b", "LaunchTemplate")
    assert check(required_tags, template) == []
    del template.inputs["tags"]["ttl"]
    assert check(required_tags, template) == ["missing tags: ttl"]
    assert check(required_tags, template, {"required_tags": ["owner"]}) == []
    assert required_tags.enforcement_level == EnforcementLevel.ADVISORY


# --- the pack as a whole --------------------------------------------------------------------------------

@pytest.mark.parametrize("stack", ["dev-7b", "prod-70b", "prod-r1", "spot-32b"])
def test_every_shipped_stack_passes_with_no_violation(stack):
    assert run_policies(resources(stack)) == []


def test_enforcement_can_be_raised_or_disabled_in_config():
    stack = resources("spot-32b", "instance_types=g6e.12xlarge,g6e.24xlarge")
    (advisory,) = run_policies(stack)
    assert advisory["policy"] == "spot-pools-recommended" and advisory["enforcement"] == "advisory"
    (raised,) = run_policies(stack, config={"spot-pools-recommended": {"enforcementLevel": "mandatory"}})
    assert raised["enforcement"] == "mandatory"
    assert run_policies(stack, config={"spot-pools-recommended": {"enforcementLevel": "disabled"}}) == []


def test_every_rule_is_named_described_and_has_a_level():
    from gpu_guardrails import POLICIES

    names = [p.name for p in POLICIES]
    assert len(names) == len(set(names))
    for policy in POLICIES:
        assert policy.name == policy.name.lower() and " " not in policy.name
        assert policy.description and policy.enforcement_level in (EnforcementLevel.MANDATORY,
                                                                   EnforcementLevel.ADVISORY)
