"""`target.node_provisioning: karpenter`: one NodePool and EC2NodeClass per approved type in place of the managed
GPU node groups, checked under Pulumi's mocks against the catalog, against what the managed node groups and
their launch templates carry (the same facts, from one place), and against the CRD models."""

from __future__ import annotations

import base64
import json
from functools import cache

import kubernetes_validate
import pytest
from gpuinfra.catalog import find_instance_type
from gpuinfra.errors import InfeasibleError, InputError
from gpuinfra.kubernetes.crds import custom_resource_model
from gpuinfra.kubernetes.manifests import kubernetes_objects
from gpuinfra.kubernetes.serving_plan import node_pool_gpu_limit, pod_plan
from gpuinfra.plan import resolve_stack
from gpuinfra.preview import PreviewResult, run_offline

KARPENTER = ("target.node_provisioning=karpenter",)
RESERVED = (*KARPENTER, "capacity={type: capacity-reservation, reservation_id: cr-0123456789abcdef0}")
VARIANTS = [("eks-70b", KARPENTER), ("eks-r1", KARPENTER), ("eks-70b", (*KARPENTER, "capacity={type: spot}")),
            ("eks-r1", RESERVED)]


@cache
def preview(stack: str, *sets: str) -> PreviewResult:
    return run_offline(resolve_stack(stack, sets=list(sets)))


def objects(stack: str, *sets: str) -> list[dict]:
    return kubernetes_objects(preview(stack, *sets).resources)


def of_kind(stack: str, kind: str, *sets: str) -> list[dict]:
    return [m for m in objects(stack, *sets) if m["kind"] == kind]


def aws(stack: str, type_: str, *sets: str) -> list:
    return [r for r in preview(stack, *sets).resources if r.type == type_]


def pools(stack: str, *sets: str) -> dict[str, dict]:
    """NodePools by the one instance type each pins."""
    found = {}
    for pool in of_kind(stack, "NodePool", *sets):
        (requirement,) = [r for r in pool["spec"]["template"]["spec"]["requirements"]
                          if r["key"] == "node.kubernetes.io/instance-type"]
        (name,) = requirement["values"]
        found[name] = pool
    return found


@pytest.mark.parametrize(("stack", "sets"), VARIANTS)
def test_every_object_validates(stack, sets):
    version = resolve_stack(stack, sets=list(sets)).config.target.version
    kinds = set()
    for manifest in objects(stack, *sets):
        model = custom_resource_model(manifest)
        if model is None:
            kubernetes_validate.validate(manifest, version, strict=True)
        else:
            model.model_validate(manifest)
        kinds.add(manifest["kind"])
    assert {"NodePool", "EC2NodeClass"} <= kinds


def test_a_broken_node_pool_or_node_class_fails_the_models():
    pool = of_kind("eks-r1", "NodePool", *KARPENTER)[0]
    model = custom_resource_model(pool)
    for broken in ({"consolidationPolicy": "WhenIdle"}, {"consolidateAfter": "ten minutes"}):
        with pytest.raises(ValueError):
            model.model_validate({**pool, "spec": {**pool["spec"], "disruption": {**pool["spec"]["disruption"],
                                                                                 **broken}}})
    with pytest.raises(ValueError):
        model.model_validate({**pool, "spec": {**pool["spec"], "limits": {"nvidia.com/gpu": "lots"}}})
    node_class = of_kind("eks-r1", "EC2NodeClass", *KARPENTER)[0]
    model = custom_resource_model(node_class)
    with pytest.raises(ValueError):  # an AMI by id needs its family
        model.model_validate({**node_class, "spec": {**node_class["spec"], "amiSelectorTerms": [{"id": "ami-0abc"}]}})
    with pytest.raises(ValueError):
        model.model_validate({**node_class, "spec": {**node_class["spec"], "instanceStorePolicy": "RAID5"}})


@pytest.mark.parametrize("stack", ["eks-70b", "eks-r1"])
def test_one_pool_and_node_class_per_approved_type_in_priority_order(stack):
    cluster = resolve_stack(stack, sets=list(KARPENTER))
    approved = [i.name for i in cluster.instance_types]
    found = pools(stack, *KARPENTER)  # (the mocks record resources in no fixed order)
    assert sorted(found) == sorted(approved) and len(found) == len(approved)
    weights = [found[name]["spec"]["weight"] for name in approved]
    assert weights == sorted(weights, reverse=True) and len(set(weights)) == len(weights)
    classes = {c["metadata"]["name"] for c in of_kind(stack, "EC2NodeClass", *KARPENTER)}
    assert {p["spec"]["template"]["spec"]["nodeClassRef"]["name"] for p in found.values()} == classes
    assert len(classes) == len(approved)


@pytest.mark.parametrize("stack", ["eks-70b", "eks-r1"])
def test_the_gpu_node_groups_give_way_to_a_system_node_group(stack):
    groups = aws(stack, "aws:eks/nodeGroup:NodeGroup", *KARPENTER)
    (system,) = groups
    assert system.inputs["instanceTypes"] == ["m7i.large"] and "taints" not in system.inputs
    (template,) = aws(stack, "aws:ec2/launchTemplate:LaunchTemplate", *KARPENTER)  # the system nodes' only
    assert template.inputs["metadataOptions"]["httpTokens"] == "required"
    assert template.inputs["blockDeviceMappings"][0]["ebs"]["encrypted"] == "true"
    # The managed mode has the same system group plus one GPU group per approved type.
    managed = aws(stack, "aws:eks/nodeGroup:NodeGroup")
    assert len(managed) == len(resolve_stack(stack).instance_types) + 1
    assert [g.inputs for g in managed if "taints" not in g.inputs] == [system.inputs]


@pytest.mark.parametrize("stack", ["eks-70b", "eks-r1"])
def test_pools_carry_the_node_groups_labels_and_taint(stack):
    managed = {g.inputs["labels"]["gpuinfra.io/instance-type"]: g.inputs
               for g in aws(stack, "aws:eks/nodeGroup:NodeGroup") if "gpuinfra.io/instance-type" in g.inputs["labels"]}
    for name, pool in pools(stack, *KARPENTER).items():
        template = pool["spec"]["template"]
        assert template["metadata"]["labels"] == managed[name]["labels"]
        (taint,) = template["spec"]["taints"]
        (group_taint,) = managed[name]["taints"]
        assert (taint["key"], taint["value"]) == (group_taint["key"], group_taint["value"]) == ("nvidia.com/gpu",
                                                                                                "true")
        assert taint["effect"] == "NoSchedule" and group_taint["effect"] == "NO_SCHEDULE"


@pytest.mark.parametrize(("sets", "capacity"), [(KARPENTER, "on-demand"), ((*KARPENTER, "capacity={type: spot}"),
                                                                          "spot")])
def test_capacity_type_follows_the_purchase_option(sets, capacity):
    for pool in pools("eks-70b", *sets).values():
        requirements = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
        assert requirements["karpenter.sh/capacity-type"] == [capacity]
        assert requirements["topology.kubernetes.io/zone"] == ["us-east-1a"]


def test_a_capacity_reservation_is_reserved_capacity_by_id():
    (pool,) = pools("eks-r1", *RESERVED).values()
    requirements = {r["key"]: r["values"] for r in pool["spec"]["template"]["spec"]["requirements"]}
    assert requirements["karpenter.sh/capacity-type"] == ["reserved"]
    (node_class,) = of_kind("eks-r1", "EC2NodeClass", *RESERVED)
    assert node_class["spec"]["capacityReservationSelectorTerms"] == [{"id": "cr-0123456789abcdef0"}]


@pytest.mark.parametrize("stack", ["eks-70b", "eks-r1"])
def test_gpu_limit_is_the_whole_copies_the_budget_pays_for(stack):
    cluster = resolve_stack(stack, sets=list(KARPENTER))
    budget, span = cluster.config.hourly_budget_usd, cluster.nodes_per_copy
    for name, pool in pools(stack, *KARPENTER).items():
        instance = find_instance_type(name)
        limit = pool["spec"]["limits"]["nvidia.com/gpu"]
        assert isinstance(limit, int) and limit % instance.gpus == 0
        nodes = limit // instance.gpus
        price = instance.price.usd_per_hour
        assert nodes % span == 0 and nodes * price <= budget < (nodes + span) * price, (name, nodes)
        assert pool["metadata"]["annotations"]["gpuinfra.io/hourly-budget-usd"] == str(budget)
    # $400/h buys 7 p5.48xlarge at $55.04; a copy is 2 nodes, so 3 copies: 6 nodes x 8 GPUs.
    assert pools("eks-r1", *KARPENTER)["p5.48xlarge"]["spec"]["limits"]["nvidia.com/gpu"] == 48
    assert preview(stack, *KARPENTER).outputs["kubernetes"]["node_pool_gpu_limits"] == {
        name: pool["spec"]["limits"]["nvidia.com/gpu"] for name, pool in pools(stack, *KARPENTER).items()}


def test_a_budget_that_pays_for_no_copy_is_infeasible():
    cluster = resolve_stack("eks-r1", sets=list(KARPENTER))
    pods = pod_plan(cluster)
    p5 = find_instance_type("p5.48xlarge")
    short = cluster.model_copy(update={"config": cluster.config.model_copy(update={
        "hourly_budget_usd": 2 * p5.price.usd_per_hour - 1})})  # one node of a two-node copy
    with pytest.raises(InfeasibleError) as caught:
        node_pool_gpu_limit(short, pods, p5)
    assert caught.value.problems[0].path == "cluster.hourly_budget_usd" and "no whole copy" in \
        caught.value.problems[0].reason
    with pytest.raises(InfeasibleError, match="no catalog price"):
        node_pool_gpu_limit(cluster, pods, find_instance_type("p5e.48xlarge"))


def test_disruption_suits_long_lived_serving():
    hpa = of_kind("eks-70b", "HorizontalPodAutoscaler", *KARPENTER)[0]
    scale_down = hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
    for pool in pools("eks-70b", *KARPENTER).values():
        disruption = pool["spec"]["disruption"]
        assert disruption["consolidationPolicy"] == "WhenEmpty"
        assert disruption["consolidateAfter"] == f"{scale_down}s" and scale_down >= 600
        assert disruption["budgets"] == [{"nodes": "1"}]
        assert pool["spec"]["template"]["spec"]["expireAfter"] == "Never"
    template = of_kind("eks-70b", "StatefulSet", *KARPENTER)[0]["spec"]["template"]
    assert template["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"


@pytest.mark.parametrize("stack", ["eks-70b", "eks-r1"])
def test_node_class_carries_the_launch_templates_settings(stack):
    templates = {t.inputs["instanceType"]: t.inputs for t in aws(stack, "aws:ec2/launchTemplate:LaunchTemplate")
                 if "instanceType" in t.inputs}  # the GPU templates (the system nodes' names no type)
    by_name = {c["metadata"]["name"]: c["spec"] for c in of_kind(stack, "EC2NodeClass", *KARPENTER)}
    for name, pool in pools(stack, *KARPENTER).items():
        spec = by_name[pool["spec"]["template"]["spec"]["nodeClassRef"]["name"]]
        template = templates[name]
        metadata = template["metadataOptions"]
        assert spec["metadataOptions"]["httpTokens"] == metadata["httpTokens"] == "required"
        assert spec["metadataOptions"]["httpPutResponseHopLimit"] == metadata["httpPutResponseHopLimit"]
        (root,) = spec["blockDeviceMappings"]
        ebs = template["blockDeviceMappings"][0]["ebs"]
        assert root["rootVolume"] is True and root["deviceName"] == template["blockDeviceMappings"][0]["deviceName"]
        assert root["ebs"]["volumeSize"] == f"{ebs['volumeSize']}Gi"
        assert (root["ebs"]["volumeType"], root["ebs"]["iops"], root["ebs"]["throughput"]) == (
            ebs["volumeType"], ebs["iops"], ebs["throughput"])
        assert root["ebs"]["encrypted"] is True and ebs["encrypted"] == "true"
        assert spec["userData"] == base64.b64decode(template["userData"]).decode()
        assert "gpuinfra-instance-store-raid" in spec["userData"] and "instanceStorePolicy" not in spec
        assert spec["amiSelectorTerms"] == [{"alias": "al2023@latest"}]
        assert {term["id"] for term in spec["securityGroupSelectorTerms"]} == set(
            template["networkInterfaces"][0]["securityGroups"])
        assert spec["tags"]["gpuinfra:model"] == template["tags"]["gpuinfra:model"]
        (node_role,) = [r for r in aws(stack, "aws:iam/role:Role", *KARPENTER) if r.name.endswith("-identity-role")]
        assert spec["role"] == node_role.name  # the GPU node role, whose name the mocks give back


@pytest.mark.parametrize("stack", ["eks-70b", "eks-r1"])
def test_node_class_selects_exactly_the_node_subnets(stack):
    subnets = aws(stack, "aws:ec2/subnet:Subnet", *KARPENTER)
    for node_class in of_kind(stack, "EC2NodeClass", *KARPENTER):
        (term,) = node_class["spec"]["subnetSelectorTerms"]
        chosen = [s for s in subnets if term["tags"].items() <= (s.inputs.get("tags") or {}).items()]
        assert chosen and all(s.inputs["tags"]["gpuinfra:role"] == "nodes" for s in chosen)
        assert len(chosen) == len([s for s in subnets if s.inputs["tags"].get("gpuinfra:role") == "nodes"])


def test_a_multi_node_copy_keeps_its_placement_group_and_zone():
    (placement,) = aws("eks-r1", "aws:ec2/placementGroup:PlacementGroup", *KARPENTER)
    assert placement.inputs["strategy"] == "cluster"
    (node_class,) = of_kind("eks-r1", "EC2NodeClass", *KARPENTER)
    assert node_class["spec"]["placementGroupSelector"] == {"name": placement.name}
    assert "placementGroupSelector" not in of_kind("eks-70b", "EC2NodeClass", *KARPENTER)[0]["spec"]
    # Karpenter attaches an EFA interface per network card when a pod requests vpc.amazonaws.com/efa: as many
    # devices as the pods ask for.
    lws = of_kind("eks-r1", "LeaderWorkerSet", *KARPENTER)[0]["spec"]["leaderWorkerTemplate"]
    efa = lws["workerTemplate"]["spec"]["containers"][0]["resources"]["limits"]["vpc.amazonaws.com/efa"]
    assert efa == find_instance_type("p5.48xlarge").efa.max_interfaces


def test_karpenter_is_installed_pinned_with_a_scoped_controller_role():
    releases = aws("eks-r1", "kubernetes:helm.sh/v3:Release", *KARPENTER)
    assert {r.inputs["chart"] for r in releases} == {"oci://public.ecr.aws/karpenter/karpenter",
                                                      "oci://public.ecr.aws/karpenter/karpenter-crd"}
    assert {r.inputs["version"] for r in releases} == {"1.14.1"}
    (controller,) = [r for r in releases if r.inputs["chart"].endswith("/karpenter")]
    (eks,) = aws("eks-r1", "aws:eks/cluster:Cluster", *KARPENTER)
    (queue,) = aws("eks-r1", "aws:sqs/queue:Queue", *KARPENTER)
    settings = controller.inputs["values"]["settings"]
    assert settings["clusterName"] == eks.inputs["name"] and settings["interruptionQueue"] == queue.name
    assert len(aws("eks-r1", "aws:cloudwatch/eventTarget:EventTarget", *KARPENTER)) == 4
    (association,) = aws("eks-r1", "aws:eks/podIdentityAssociation:PodIdentityAssociation", *KARPENTER)
    assert (association.inputs["namespace"], association.inputs["serviceAccount"]) == ("kube-system", "karpenter")
    (entry,) = aws("eks-r1", "aws:eks/accessEntry:AccessEntry", *KARPENTER)
    assert entry.inputs["type"] == "EC2_LINUX"
    (system,) = aws("eks-r1", "aws:eks/nodeGroup:NodeGroup", *KARPENTER)  # its own role: no second entry
    assert system.inputs["nodeRoleArn"] != entry.inputs["principalArn"]
    policies = [json.loads(p.inputs["policy"]) for p in aws("eks-r1", "aws:iam/rolePolicy:RolePolicy", *KARPENTER)
                if "karpenter" in p.name]
    (policy,) = policies
    actions = [a for s in policy["Statement"] for a in s["Action"]]
    assert not [a for a in actions if a == "*" or a.endswith(":*")]
    (passing,) = [s for s in policy["Statement"] if "iam:PassRole" in s["Action"]]
    assert passing["Resource"] == entry.inputs["principalArn"]
    deleting = [s for s in policy["Statement"] if "ec2:TerminateInstances" in s["Action"]]
    assert all("aws:ResourceTag/kubernetes.io/cluster/" + eks.inputs["name"] in str(s["Condition"])
               for s in deleting)


def test_plan_lists_and_writes_the_new_objects(tmp_path):
    import io

    import yaml
    from gpuinfra.cli import main

    out = io.StringIO()
    assert main(["plan", "eks-r1", "--set", "target.node_provisioning=karpenter", "--json"], out=out) == 0
    report = json.loads(out.getvalue())
    types = {r["type"] for r in report["resources"]}
    assert {"kubernetes:karpenter.sh/v1:NodePool", "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass",
            "kubernetes:helm.sh/v3:Release"} <= types and report["violations"] == []
    target = tmp_path / "m"
    assert main(["plan", "eks-r1", "--set", "target.node_provisioning=karpenter", "--manifests", str(target)],
                out=io.StringIO()) == 0
    documents = [yaml.safe_load(f.read_text()) for f in sorted(target.iterdir())]
    (pool,) = [d for d in documents if d["kind"] == "NodePool"]
    assert isinstance(pool["spec"]["limits"]["nvidia.com/gpu"], int) and pool["spec"]["weight"] == 100
    assert [d["kind"] for d in documents].count("EC2NodeClass") == 1
    assert all("apiVersion" in d for d in documents)  # no file for the Helm releases


@pytest.mark.parametrize(("sets", "path", "reason", "error"), [
    (["target.node_provisioning=karpenter", "hourly_budget_usd=null"], "hourly_budget_usd", "required",
     InputError),
    (["target.node_provisioning=fargate"], "target.eks.node_provisioning", "karpenter", InputError),
    (["target.node_provisioning=karpenter", "capacity={type: spot, max_price_usd_per_hour: 30.0}"],
     "capacity.max_price_usd_per_hour", "market price", InputError),
    (["target.kind=kubernetes", "target.context=prod", "target.node_provisioning=karpenter"],
     "target.kubernetes.node_provisioning", "unknown field", InputError),
    (["target.node_provisioning=karpenter", "target.autoscaling.max_replicas=20"],
     "target.autoscaling.max_replicas", "budget", InfeasibleError),
])
def test_bad_karpenter_stacks_are_refused_with_the_field(sets, path, reason, error):
    with pytest.raises(error) as caught:
        resolve_stack("eks-70b", sets=sets)
    assert any(p.path.removeprefix("cluster.") == path and reason in p.reason for p in caught.value.problems), \
        caught.value.problems


def test_managed_node_groups_stay_the_default():
    assert resolve_stack("eks-70b").config.target.node_provisioning == "managed-node-groups"
    assert not of_kind("eks-70b", "NodePool") and not aws("eks-70b", "kubernetes:helm.sh/v3:Release")
    groups = aws("eks-70b", "aws:eks/nodeGroup:NodeGroup")  # the two approved types and the system group
    assert len(groups) == len(resolve_stack("eks-70b").instance_types) + 1 == 3
