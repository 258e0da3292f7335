"""The Pulumi program under Pulumi's mock runtime, for every shipped stack and for mutations of them."""

from __future__ import annotations

import base64
import json
from functools import cache

import pytest
import yaml
from gpuinfra.boot import RAID_SCRIPT_PATH, RAID_UNIT_NAME
from gpuinfra.catalog import find_instance_type
from gpuinfra.config import load_stack
from gpuinfra.errors import InputError
from gpuinfra.plan import build_plan, resolve_stack
from gpuinfra.preview import PreviewResult, run_offline

SHIPPED = ["dev-7b", "prod-70b", "prod-r1", "spot-32b"]


@cache
def preview(stack: str, *sets: str) -> PreviewResult:
    return run_offline(resolve_stack(stack, sets=list(sets)))


def of_type(result: PreviewResult, suffix: str):
    return [r for r in result.resources if r.type.endswith(suffix)]


def launch_templates(result: PreviewResult):
    return of_type(result, "launchTemplate:LaunchTemplate")


def asg(result: PreviewResult):
    (group,) = of_type(result, "autoscaling/group:Group")
    return group


@pytest.mark.parametrize("stack", SHIPPED)
def test_efa_layout_matches_the_catalog_for_every_launch_template(stack):
    for template in launch_templates(preview(stack)):
        instance = find_instance_type(template.inputs["instanceType"])
        interfaces = template.inputs["networkInterfaces"]
        if instance.efa.supported:
            assert len(interfaces) == instance.network.cards == instance.efa.max_interfaces
            assert [i["networkCardIndex"] for i in interfaces] == list(range(instance.network.cards))
            assert interfaces[0] | {"securityGroups": None} == {
                "networkCardIndex": 0, "deviceIndex": 0, "interfaceType": "efa", "securityGroups": None,
                "associatePublicIpAddress": "false", "deleteOnTermination": "true"}
            assert all(i["deviceIndex"] == 1 for i in interfaces[1:])
            expected = ["efa" if instance.family in ("p5", "p5e") and i % 4 == 0 else "efa-only"
                        for i in range(1, instance.network.cards)]
            assert [i["interfaceType"] for i in interfaces[1:]] == expected
        else:
            assert [(i["networkCardIndex"], i["deviceIndex"], i["interfaceType"]) for i in interfaces] == [
                (0, 0, "interface")]
        assert all(i["associatePublicIpAddress"] == "false" for i in interfaces)


def test_p5_has_32_interfaces_with_ena_on_every_fourth_card():
    (template,) = launch_templates(preview("prod-r1"))
    kinds = [i["interfaceType"] for i in template.inputs["networkInterfaces"]]
    assert len(kinds) == 32 and kinds.count("efa") == 8 and kinds.count("efa-only") == 24


@pytest.mark.parametrize("stack", SHIPPED)
def test_node_security_and_storage_settings(stack):
    result = preview(stack)
    for template in launch_templates(result):
        inputs = template.inputs
        assert inputs["metadataOptions"]["httpTokens"] == "required"
        (root,) = inputs["blockDeviceMappings"]
        assert root["ebs"]["encrypted"] == "true" and root["ebs"]["volumeType"] == "gp3"
        assert root["ebs"]["volumeSize"] >= 200
    for rule in of_type(result, "SecurityGroupIngressRule"):
        assert rule.inputs.get("cidrIpv4") not in ("0.0.0.0/0",) and rule.inputs.get("cidrIpv6") != "::/0"
    for subnet in of_type(result, "subnet:Subnet"):
        assert subnet.inputs["mapPublicIpOnLaunch"] is False
    assert not of_type(result, "securityGroup:SecurityGroup")[0].inputs.get("ingress")


@pytest.mark.parametrize("stack", SHIPPED)
def test_every_resource_is_parented_by_its_component(stack):
    result = preview(stack)
    components = {r.name for r in result.resources if r.type.startswith("gpuinfra:")}
    for resource in result.resources:
        if resource.type.startswith("aws:"):
            assert resource.parent in components, resource.name
        else:
            assert resource.parent is None


def test_multi_node_gets_a_cluster_placement_group_and_one_zone():
    result = preview("prod-r1")
    (group,) = of_type(result, "placementGroup:PlacementGroup")
    assert group.inputs["strategy"] == "cluster"
    assert asg(result).inputs["placementGroup"] == group.name
    assert {s.inputs["availabilityZone"] for s in of_type(result, "subnet:Subnet") if "nodes" in s.name} == {
        "us-east-1a"}
    assert asg(result).inputs["vpcZoneIdentifiers"] == [asg(result).inputs["vpcZoneIdentifiers"][0]]


def test_single_node_has_no_placement_group_and_spreads_over_zones():
    result = preview("dev-7b")
    assert not of_type(result, "placementGroup:PlacementGroup")
    assert "placementGroup" not in asg(result).inputs
    assert len(asg(result).inputs["vpcZoneIdentifiers"]) == 3


def test_spot_is_diversified_capacity_optimized_prioritized_with_rebalancing():
    group = asg(preview("spot-32b")).inputs
    policy = group["mixedInstancesPolicy"]
    overrides = [o["instanceType"] for o in policy["launchTemplate"]["overrides"]]
    assert overrides == load_stack("spot-32b").config.instance_types
    assert policy["instancesDistribution"]["spotAllocationStrategy"] == "capacity-optimized-prioritized"
    assert policy["instancesDistribution"]["onDemandPercentageAboveBaseCapacity"] == 0
    assert group["capacityRebalance"] is True
    # each override launches with its own template (its own EFA layout)
    templates = {t.name for t in launch_templates(preview("spot-32b"))}
    assert len(templates) == len(overrides)


def test_spot_without_instance_types_uses_every_type_that_fits():
    result = preview("spot-32b", "instance_types=null")
    overrides = asg(result).inputs["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    assert len(overrides) >= 3


def test_capacity_block_targets_the_reservation():
    result = preview("prod-r1", "capacity={type: capacity-block, reservation_id: cr-0123456789abcdef0}")
    (template,) = launch_templates(result)
    assert template.inputs["instanceMarketOptions"] == {"marketType": "capacity-block"}
    target = template.inputs["capacityReservationSpecification"]["capacityReservationTarget"]
    assert target == {"capacityReservationId": "cr-0123456789abcdef0"}


@pytest.mark.parametrize("stack", SHIPPED)
def test_user_data_installs_the_raid_unit_for_every_boot(stack):
    for template in launch_templates(preview(stack)):
        text = base64.b64decode(template.inputs["userData"]).decode()
        assert text.startswith("#cloud-config\n")
        document = yaml.safe_load(text)
        paths = {f["path"]: f for f in document["write_files"]}
        assert paths[RAID_SCRIPT_PATH]["permissions"] == "0755"
        assert "refusing to touch disks holding data" in paths[RAID_SCRIPT_PATH]["content"]
        unit = paths[f"/etc/systemd/system/{RAID_UNIT_NAME}"]["content"]
        assert "WantedBy=multi-user.target" in unit and "Type=oneshot" in unit
        assert ["systemctl", "enable", "--now", RAID_UNIT_NAME] in document["runcmd"]


@pytest.mark.parametrize("stack", SHIPPED)
def test_serving_request_is_tagged_where_gpus_are_launched(stack):
    result = preview(stack)
    cluster = load_stack(stack)
    tags = {t["key"]: t["value"] for t in asg(result).inputs["tags"]}
    assert tags["gpuinfra:model"] == cluster.config.model
    assert tags["gpuinfra:context-tokens"] == str(cluster.config.context_tokens)
    assert tags["gpuinfra:concurrency"] == str(cluster.config.concurrency)
    assert tags["gpuinfra:precision"] == cluster.request.effective_precision.value
    for template in launch_templates(result):
        assert template.inputs["tags"]["gpuinfra:model"] == cluster.config.model
        assert template.inputs["tags"]["owner"] == "platform-team"


def test_node_role_reads_only_the_weights_prefix():
    result = preview("prod-70b")
    (policy,) = of_type(result, "rolePolicy:RolePolicy")
    statements = json.loads(policy.inputs["policy"])["Statement"]
    actions = {a for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert actions == {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"}
    assert statements[0]["Resource"] == "arn:aws:s3:::acme-ml-models/deepseek-ai/DeepSeek-R1-Distill-Llama-70B/*"
    attachments = [a.inputs["policyArn"] for a in of_type(result, "rolePolicyAttachment:RolePolicyAttachment")]
    assert attachments == ["arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore"]


def test_hf_weights_get_no_s3_access():
    assert not of_type(preview("dev-7b"), "rolePolicy:RolePolicy")


def test_endpoint_balances_by_least_outstanding_requests():
    result = preview("prod-70b")
    (target_group,) = of_type(result, "targetGroup:TargetGroup")
    assert target_group.inputs["loadBalancingAlgorithmType"] == "least_outstanding_requests"
    assert target_group.inputs["healthCheck"]["path"] == "/health"
    (balancer,) = of_type(result, "loadBalancer:LoadBalancer")
    assert balancer.inputs["internal"] is True and len(balancer.inputs["subnets"]) == 2
    assert asg(result).inputs["targetGroupArns"]


def test_endpoints_egress_has_no_nat_and_the_needed_endpoints():
    result = preview("prod-r1")
    assert not of_type(result, "natGateway:NatGateway")
    services = {e.inputs["serviceName"].rsplit(".", 1)[-1] if "ecr" not in e.inputs["serviceName"]
                else e.inputs["serviceName"].split("us-east-1.")[1] for e in of_type(result, "VpcEndpoint")}
    assert {"s3", "ssm", "ssmmessages", "ec2messages", "ecr.api", "ecr.dkr"} <= services


def test_existing_subnets_create_no_vpc():
    result = preview("dev-7b", "network={mode: existing, vpc_id: vpc-0123456789abcdef0, "
                               "subnet_ids: [subnet-0123456789abcdef0]}")
    assert not of_type(result, "vpc:Vpc") and not of_type(result, "subnet:Subnet")
    assert asg(result).inputs["vpcZoneIdentifiers"] == ["subnet-0123456789abcdef0"]


def test_plan_size_does_not_grow_with_node_count():
    two = preview("prod-r1", "nodes=2")
    many = preview("prod-r1", "nodes=64", "hourly_budget_usd=null")
    assert len(two.resources) == len(many.resources)
    assert asg(many).inputs["desiredCapacity"] == 64


@pytest.mark.parametrize("stack", SHIPPED)
def test_outputs_carry_the_contract_for_ansible(stack):
    outputs = preview(stack).outputs
    cluster = load_stack(stack)
    assert outputs["stack"] == stack and outputs["auto_scaling_group_name"].endswith("-nodes-asg")
    assert outputs["node_tag"] == {"gpuinfra:stack": stack}
    assert list(outputs["node_plans"]) == [e.instance_type for e in cluster.evaluations]
    for evaluation in cluster.evaluations:
        plan = outputs["node_plans"][evaluation.instance_type]
        assert plan["hardware"]["gpu_count"] == evaluation.gpus_per_node
        assert plan["serving"]["tensor_parallel"] == evaluation.tensor_parallel
        assert plan["serving"]["pipeline_parallel"] == evaluation.pipeline_parallel
        assert plan["serving"]["max_model_len"] == cluster.config.context_tokens
        assert plan["requirements"]["host_ram_gib"] == evaluation.host_ram_gib_required


@pytest.mark.parametrize("override, path, words", [
    ("bogus_key=1", "cluster.bogus_key", "unknown field"),
    ("nodes=-1", "cluster.nodes", "greater than or equal to 1"),
    ("concurrency=-4", "cluster.concurrency", "greater than 0"),
])
def test_bad_overrides_are_reported_with_their_path(override, path, words):
    with pytest.raises(InputError) as caught:
        resolve_stack("prod-r1", sets=[override])
    assert any(p.path == path and words in p.reason.lower() for p in caught.value.problems), caught.value.problems


def test_a_bad_stack_file_reports_everything_at_once_and_declares_nothing(tmp_path, monkeypatch):
    import gpuinfra.preview

    def must_not_run(cluster):
        raise AssertionError("the program ran on an invalid stack")

    monkeypatch.setattr(gpuinfra.preview, "run_offline", must_not_run)
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump({"config": {"gpuinfra:cluster": {
        "model": "deepseek-r1-distill-llama-70b", "instance_typos": ["g6.xlarge"], "instance_types": ["g6.xlarge"],
        "nodes": 2, "nodes_per_copy": 2, "capacity": {"type": "spot", "reservation_id": "cr-0123456789abcdef0"},
        "concurrency": -1, "weights": {"source": "s3://bucket/prefix"},
    }}}))
    with pytest.raises(InputError) as caught:
        build_plan("bad", stack_file=str(bad))
    paths = {p.path for p in caught.value.problems}
    assert {"cluster.instance_typos", "cluster.capacity.spot.reservation_id", "cluster.concurrency",
            "cluster.instance_types.0", "cluster.availability_zone"} <= paths, caught.value.problems


def test_a_model_that_cannot_fit_names_the_instance_and_why():
    with pytest.raises(InputError) as caught:
        resolve_stack("prod-70b", sets=["instance_types=g6e.xlarge"])
    assert {p.path for p in caught.value.problems} == {"cluster.instance_types.0"}
    assert any("g6e.xlarge x 1 node(s): weights need" in p.reason and "GiB per GPU" in p.reason
               for p in caught.value.problems)


def _run_entry_point(stack: str, raw: dict) -> PreviewResult:
    """`pulumi up`'s path: infra/__main__.py -> program.main(), reading the stack's gpuinfra:cluster config."""
    import pulumi
    from gpuinfra.aws.program import main
    from gpuinfra.preview import run_program

    pulumi.runtime.set_all_config({"gpuinfra:cluster": json.dumps(raw)})
    try:
        return run_program(main, stack=stack, region=raw.get("region", "us-east-1"))
    finally:
        pulumi.runtime.set_all_config({})


def test_the_entry_point_declares_the_same_resources_as_the_offline_plan():
    from gpuinfra.config import STACKS_DIR

    raw = yaml.safe_load((STACKS_DIR / "Pulumi.prod-70b.yaml").read_text())["config"]["gpuinfra:cluster"]
    result = _run_entry_point("prod-70b", raw)
    assert sorted((r.type, r.name) for r in result.resources) == sorted(
        (r.type, r.name) for r in preview("prod-70b").resources)


def test_the_entry_point_refuses_a_bad_config_with_every_reason_and_no_traceback():
    import pulumi

    with pytest.raises(pulumi.RunError) as caught:
        _run_entry_point("bad", {"model": "deepseek-r1-distill-llama-70b", "nodes": 0, "instance_typo": 1,
                                 "weights": {"source": "s3://bucket/x"}})
    message = str(caught.value)
    assert "cluster.nodes" in message and "cluster.instance_typo" in message


def test_infra_main_is_thin():
    from gpuinfra.config import STACKS_DIR

    source = (STACKS_DIR.parent / "infra" / "__main__.py").read_text()
    assert "from gpuinfra.aws.program import main" in source and source.count("\n") < 10
