"""The EKS cluster's system node group, under Pulumi's mocks: one untainted, labelled managed node group with a
least-privilege role of its own in both node provisioning modes (GPU nodes are tainted, so CoreDNS and the
controllers need it), spread over the control plane's zones, sized by `target.system_nodes`; none on an
existing cluster. Expectations come from the target model's defaults and gpuinfra.kubernetes.system_nodes."""

from __future__ import annotations

import json
from functools import cache

import pytest
from gpuinfra.catalog import load_catalog
from gpuinfra.errors import InputError
from gpuinfra.kubernetes.manifests import kubernetes_objects
from gpuinfra.kubernetes.system_nodes import EKS_NODE_POLICIES, SYSTEM_AMI_TYPE, SYSTEM_LABEL, SYSTEM_SELECTOR
from gpuinfra.kubernetes.target import SystemNodes
from gpuinfra.plan import resolve_stack
from gpuinfra.preview import PreviewResult, RecordedResource, run_offline

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
COMPONENT = "gpuinfra:kubernetes:SystemNodeGroup"
KARPENTER = ("target.node_provisioning=karpenter",)
MODES = [(stack, sets) for stack in ("eks-70b", "eks-r1") for sets in ((), KARPENTER)]
EXISTING = ("target.kind=kubernetes", "target.context=prod-gpu", "capacity.type=on-demand")


@cache
def preview(stack: str, *sets: str) -> PreviewResult:
    return run_offline(resolve_stack(stack, sets=list(sets)))


def of_type(stack: str, type_: str, *sets: str) -> list[RecordedResource]:
    return [r for r in preview(stack, *sets).resources if r.type == type_]


def system_group(stack: str, *sets: str) -> RecordedResource:
    (component,) = of_type(stack, COMPONENT, *sets)
    (group,) = [g for g in of_type(stack, NODE_GROUP, *sets) if g.parent == component.name]
    return group


def gpu_groups(stack: str, *sets: str) -> list[RecordedResource]:
    system = system_group(stack, *sets)
    return [g for g in of_type(stack, NODE_GROUP, *sets) if g.name != system.name]


@pytest.mark.parametrize(("stack", "sets"), MODES)
def test_one_untainted_labelled_system_group_in_both_modes(stack, sets):
    settings = resolve_stack(stack, sets=list(sets)).config.target.system_nodes
    assert settings == SystemNodes()  # the shipped stacks take the defaults
    group = system_group(stack, *sets).inputs
    assert not group.get("taints")
    assert group["labels"] == SYSTEM_SELECTOR == {SYSTEM_LABEL: "system"}
    assert group["instanceTypes"] == [settings.instance_type] and group["amiType"] == SYSTEM_AMI_TYPE
    assert group["capacityType"] == "ON_DEMAND"
    scaling = group["scalingConfig"]
    assert scaling["minSize"] == scaling["desiredSize"] == scaling["maxSize"] == settings.count >= 2
    assert preview(stack, *sets).outputs["node_group_names"]["system"] == group["nodeGroupName"]


@pytest.mark.parametrize(("stack", "sets"), MODES)
def test_the_system_nodes_span_the_control_planes_zones(stack, sets):
    """CoreDNS's two replicas in two zones, even where a multi-node copy keeps the GPU nodes in one."""
    (cluster,) = of_type(stack, "aws:eks/cluster:Cluster", *sets)
    subnets = {r.id: r.inputs["availabilityZone"] for r in of_type(stack, "aws:ec2/subnet:Subnet", *sets)}
    system = system_group(stack, *sets).inputs["subnetIds"]
    assert system == cluster.inputs["vpcConfig"]["subnetIds"]
    assert len({subnets[s] for s in system}) >= 2


@pytest.mark.parametrize(("stack", "sets"), MODES)
def test_the_system_role_is_its_own_and_least_privilege(stack, sets):
    group = system_group(stack, *sets)
    (component,) = of_type(stack, COMPONENT, *sets)
    (role,) = [r for r in of_type(stack, "aws:iam/role:Role", *sets) if r.parent == component.name]
    assert json.loads(role.inputs["assumeRolePolicy"])["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert group.inputs["nodeRoleArn"].endswith(f":{role.name}")  # the mocks' arn ends in the resource name
    attachments = [a for a in of_type(stack, "aws:iam/rolePolicyAttachment:RolePolicyAttachment", *sets)
                   if a.parent == component.name]
    assert {a.inputs["role"] for a in attachments} == {role.name}
    attached = [a.inputs["policyArn"].rsplit("/", 1)[1] for a in attachments]
    assert sorted(attached) == sorted(EKS_NODE_POLICIES)
    assert "AmazonEC2ContainerRegistryReadOnly" in attached and not [a for a in attached if "FullAccess" in a]
    assert not [p for p in of_type(stack, "aws:iam/rolePolicy:RolePolicy", *sets) if p.parent == component.name]
    gpu_roles = {g.inputs["nodeRoleArn"] for g in gpu_groups(stack, *sets)}
    gpu_roles |= {e.inputs["principalArn"] for e in of_type(stack, "aws:eks/accessEntry:AccessEntry", *sets)}
    assert group.inputs["nodeRoleArn"] not in gpu_roles  # the GPU role may read the weights; this one may not
    (template,) = [t for t in of_type(stack, "aws:ec2/launchTemplate:LaunchTemplate", *sets)
                   if t.parent == component.name]
    assert group.inputs["launchTemplate"]["id"] == template.id
    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    assert template.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"


@pytest.mark.parametrize("stack", ["eks-70b", "eks-r1"])
def test_gpu_groups_keep_their_taint_and_nothing_gpu_selects_the_system_nodes(stack):
    approved = [i.name for i in resolve_stack(stack).instance_types]
    groups = gpu_groups(stack)
    assert sorted(g.inputs["labels"]["gpuinfra.io/instance-type"] for g in groups) == sorted(approved)
    for group in groups:
        assert group.inputs["taints"] == [{"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}]
        assert SYSTEM_LABEL not in group.inputs["labels"]
    system_type = SystemNodes().instance_type
    for manifest in kubernetes_objects(preview(stack).resources):
        spec = (manifest.get("spec") or {}).get("template", {}).get("spec", {})
        terms = spec.get("affinity", {}).get("nodeAffinity", {}).get(
            "requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
        if manifest["kind"] in ("DaemonSet", "StatefulSet"):  # device plugins, DCGM, the engine: GPU types only
            (term,) = terms
            assert term["matchExpressions"][0]["values"] == approved and system_type not in approved


def test_the_karpenter_controller_selects_the_system_nodes():
    (controller,) = [r for r in of_type("eks-r1", "kubernetes:helm.sh/v3:Release", *KARPENTER)
                     if r.inputs["chart"].endswith("/karpenter")]
    values = controller.inputs["values"]
    assert values["nodeSelector"] == system_group("eks-r1", *KARPENTER).inputs["labels"]
    assert values["replicas"] <= SystemNodes().count  # one controller per node (the chart's anti-affinity)


def test_the_size_and_count_come_from_the_stack():
    sets = ("target.system_nodes={instance_type: c7i.xlarge, count: 3}",)
    group = system_group("eks-70b", *sets).inputs
    assert group["instanceTypes"] == ["c7i.xlarge"] and group["scalingConfig"]["desiredSize"] == 3
    recorded = preview("eks-70b", *sets).outputs["kubernetes"]["system_nodes"]
    assert recorded == {"instance_type": "c7i.xlarge", "count": 3, "label": SYSTEM_SELECTOR,
                        "in_hourly_budget": False}


def test_the_budget_prices_gpu_nodes_only():
    """The catalog prices GPU types alone, so the system nodes cannot be in hourly_budget_usd; the plan says so.
    (If the catalog ever prices the default type, count it and change this.)"""
    default = SystemNodes().instance_type
    assert default not in {i.name for i in load_catalog().instances}
    assert preview("eks-70b").outputs["kubernetes"]["system_nodes"]["in_hourly_budget"] is False


def test_an_existing_cluster_gets_no_system_nodes():
    assert not of_type("eks-70b", COMPONENT, *EXISTING) and not of_type("eks-70b", NODE_GROUP, *EXISTING)
    assert "system_nodes" not in preview("eks-70b", *EXISTING).outputs["kubernetes"]


@pytest.mark.parametrize(("sets", "path", "reason"), [
    (["target.system_nodes.count=1"], "target.eks.system_nodes.count", "greater than or equal to 2"),
    (["target.system_nodes.instance_type=m7g.large"], "target.system_nodes.instance_type", "Graviton"),
    (["target.system_nodes.instance_type=p5.48xlarge"], "target.system_nodes.instance_type", "GPU type"),
    (["target.system_nodes.instance_type=large"], "target.eks.system_nodes.instance_type", "pattern"),
    (["target.system_nodes.size=3"], "target.eks.system_nodes.size", "unknown field"),
    ([*EXISTING, "target.system_nodes.count=3"], "target.kubernetes.system_nodes", "unknown field"),
])
def test_bad_system_nodes_are_refused_with_the_field(sets, path, reason):
    with pytest.raises(InputError) as caught:
        resolve_stack("eks-70b", sets=sets)
    assert any(p.path.removeprefix("cluster.") == path and reason in p.reason for p in caught.value.problems), \
        caught.value.problems
