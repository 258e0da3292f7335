"""`target.rollout.strategy: blue-green`: two complete serving sets and a Service on the active one, allowed only
when both sets fit the stack's nodes and the budget. Checked under Pulumi's mocks, with expectations from the
catalog (GPUs per node and per pod, prices), kubernetes-validate and the CRD models."""

from __future__ import annotations

import io
from functools import cache

import kubernetes_validate
import pytest
from gpu_guardrails import POLICIES
from gpu_guardrails.offline import run_policies
from gpuinfra.catalog import find_instance_type
from gpuinfra.cli import main
from gpuinfra.errors import InfeasibleError, InputError
from gpuinfra.kubernetes.crds import custom_resource_model
from gpuinfra.kubernetes.manifests import kubernetes_objects
from gpuinfra.plan import resolve_stack
from gpuinfra.preview import PreviewResult, run_offline

# eks-70b: TP 4 on 8-GPU nodes is 2 copies a node. 2..4 copies a colour: 2 nodes at least, 4 at most for both.
BLUE_GREEN = ("target.rollout.strategy=blue-green", "nodes=2", "target.autoscaling.max_replicas=4")
# eks-r1: one copy is 2 p5 nodes; 1 copy a colour: 4 nodes, within $400/h (7 nodes).
R1_BLUE_GREEN = ("target.rollout.strategy=blue-green", "target.autoscaling.min_replicas=1",
                 "target.autoscaling.max_replicas=1")
COLOUR = "gpuinfra.io/colour"


@cache
def preview(stack: str, *sets: str) -> PreviewResult:
    return run_offline(resolve_stack(stack, sets=list(sets)))


def objects(stack: str, *sets: str) -> list[dict]:
    return kubernetes_objects(preview(stack, *sets).resources)


def of_kind(stack: str, kind: str, *sets: str) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in objects(stack, *sets)
            if m["kind"] == kind and m["metadata"].get("namespace") == "llm"}


@pytest.mark.parametrize(("stack", "sets"), [("eks-70b", BLUE_GREEN), ("eks-r1", R1_BLUE_GREEN),
                                             ("eks-70b", (*BLUE_GREEN, "target.autoscaling.kind=keda")),
                                             ("eks-r1", (*R1_BLUE_GREEN, "target.node_provisioning=karpenter"))])
def test_every_object_validates_and_passes_the_policies(stack, sets):
    for manifest in objects(stack, *sets):
        model = custom_resource_model(manifest)
        if model is None:
            kubernetes_validate.validate(manifest, "1.33", strict=True)
        else:
            model.model_validate(manifest)
    assert run_policies(list(preview(stack, *sets).resources), policies=POLICIES) == []


def test_two_complete_sets_and_the_service_on_the_active_one():
    sets = of_kind("eks-70b", "StatefulSet", *BLUE_GREEN)
    assert sorted(sets) == ["gpuinfra-eks-70b-blue", "gpuinfra-eks-70b-green"]
    for colour in ("blue", "green"):
        spec = sets[f"gpuinfra-eks-70b-{colour}"]["spec"]
        assert spec["selector"]["matchLabels"][COLOUR] == colour
        assert spec["template"]["metadata"]["labels"][COLOUR] == colour
        assert "replicas" not in spec and spec["updateStrategy"]["rollingUpdate"]["partition"] == 0
    services = of_kind("eks-70b", "Service", *BLUE_GREEN)
    assert services["gpuinfra-eks-70b"]["spec"]["selector"][COLOUR] == "blue"  # the default active colour
    assert of_kind("eks-70b", "Service", *BLUE_GREEN, "target.rollout.active=green")["gpuinfra-eks-70b"][
        "spec"]["selector"][COLOUR] == "green"
    for colour in ("blue", "green"):
        assert services[f"gpuinfra-eks-70b-{colour}"]["spec"]["selector"][COLOUR] == colour
    assert COLOUR not in services["gpuinfra-eks-70b-pods"]["spec"]["selector"]  # names the pods of both
    outputs = preview("eks-70b", *BLUE_GREEN).outputs["kubernetes"]["rollout"]
    assert outputs["active"] == "blue" and set(outputs["sets"]) == {"blue", "green"}


def test_prometheus_scrapes_each_pod_once_through_its_colours_service():
    monitors = [m for m in objects("eks-70b", *BLUE_GREEN) if m["kind"] == "ServiceMonitor"
                and m["metadata"]["namespace"] == "llm"]
    (selector,) = [m["spec"]["selector"]["matchLabels"] for m in monitors]
    scraped = {name for name, s in of_kind("eks-70b", "Service", *BLUE_GREEN).items()
               if selector.items() <= s["metadata"]["labels"].items()}
    assert scraped == {"gpuinfra-eks-70b-blue", "gpuinfra-eks-70b-green"}


def test_an_autoscaler_and_a_disruption_budget_per_colour_never_two_on_one_set():
    hpas = of_kind("eks-70b", "HorizontalPodAutoscaler", *BLUE_GREEN)
    targets = sorted(h["spec"]["scaleTargetRef"]["name"] for h in hpas.values())
    assert targets == ["gpuinfra-eks-70b-blue", "gpuinfra-eks-70b-green"]
    assert all((h["spec"]["minReplicas"], h["spec"]["maxReplicas"]) == (2, 4) for h in hpas.values())
    workloads = [r for r in preview("eks-70b", *BLUE_GREEN).resources if r.type == "kubernetes:apps/v1:StatefulSet"]
    assert len(workloads) == 2 and all(w.ignore_changes == ("spec.replicas",) for w in workloads)
    budgets = of_kind("eks-70b", "PodDisruptionBudget", *BLUE_GREEN)
    assert sorted(b["spec"]["selector"]["matchLabels"][COLOUR] for b in budgets.values()) == ["blue", "green"]
    keda = ("target.autoscaling.kind=keda",)
    assert not of_kind("eks-70b", "HorizontalPodAutoscaler", *BLUE_GREEN, *keda)
    scaled = of_kind("eks-70b", "ScaledObject", *BLUE_GREEN, *keda)
    for name, scaler in scaled.items():
        assert scaler["spec"]["scaleTargetRef"]["name"] == name
        assert all(f'service="{name}"' in t["metadata"]["query"] for t in scaler["spec"]["triggers"])


def test_each_colour_may_run_its_own_image():
    image = "vllm/vllm-openai:v0.27.0"
    sets = of_kind("eks-70b", "StatefulSet", *BLUE_GREEN, f"target.rollout.images.green={image}")
    green = sets["gpuinfra-eks-70b-green"]["spec"]["template"]["spec"]
    blue = sets["gpuinfra-eks-70b-blue"]["spec"]["template"]["spec"]
    assert {c["image"] for c in green["containers"] + green["initContainers"]} == {image}
    assert image not in {c["image"] for c in blue["containers"] + blue["initContainers"]}


def test_multi_node_blue_green_is_two_leader_worker_sets():
    sets = of_kind("eks-r1", "LeaderWorkerSet", *R1_BLUE_GREEN, "target.rollout.active=green")
    assert sorted(sets) == ["gpuinfra-eks-r1-blue", "gpuinfra-eks-r1-green"]
    for name, lws in sets.items():
        group = lws["spec"]["leaderWorkerTemplate"]
        colour = name.rsplit("-", 1)[1]
        assert group["leaderTemplate"]["metadata"]["labels"][COLOUR] == colour
        assert group["workerTemplate"]["metadata"]["labels"][COLOUR] == colour
    api = of_kind("eks-r1", "Service", *R1_BLUE_GREEN, "target.rollout.active=green")["gpuinfra-eks-r1"]
    assert api["spec"]["selector"] == {**api["spec"]["selector"], COLOUR: "green", "gpuinfra.io/role": "leader"}


def test_node_groups_may_grow_to_both_colours_at_max_replicas():
    per_node = find_instance_type("p4de.24xlarge").gpus // 4  # TP 4
    copies = 4
    (primary,) = [r for r in preview("eks-70b", *BLUE_GREEN).resources if r.type == "aws:eks/nodeGroup:NodeGroup"
                  and r.inputs["labels"].get("gpuinfra.io/instance-type") == "p4de.24xlarge"]  # the first approved
    assert primary.inputs["scalingConfig"]["maxSize"] == 2 * copies // per_node


def test_without_an_autoscaler_each_colour_takes_half_the_nodes():
    sets = of_kind("eks-70b", "StatefulSet", "target.rollout.strategy=blue-green", "nodes=2",
                   "target.autoscaling.kind=none")
    assert [s["spec"]["replicas"] for s in sets.values()] == [2, 2]  # 1 node (2 copies of TP 4) a colour


def run(*argv: str) -> int:
    return main(list(argv), out=io.StringIO())


def test_over_the_budget_is_infeasible_exit_1(capsys):
    # Both colours at 10 copies are 10 nodes; at the dearest type (p5.48xlarge, $55.04/h) $300/h pays for 5.
    assert 10 * find_instance_type("p5.48xlarge").price.usd_per_hour > 300
    assert run("plan", "eks-70b", "--set", "target.rollout.strategy=blue-green", "--set", "nodes=2") == 1
    err = capsys.readouterr().err
    assert "error: cluster.target.rollout.strategy: blue-green may run both colours at max_replicas 10" in err
    assert "p5.48xlarge" in err and "Traceback" not in err


@pytest.mark.parametrize(("sets", "path", "reason", "error"), [
    (["target.rollout.strategy=blue-green"], "target.rollout.strategy", "need 2 nodes", InputError),
    ([*BLUE_GREEN, "hourly_budget_usd=null"], "hourly_budget_usd", "twice the GPUs", InputError),
    (["target.rollout.active=green"], "target.rollout.active", "blue-green only", InputError),
    (["target.rollout.images.green=vllm/vllm-openai:v0.27.0"], "target.rollout.images", "blue-green only",
     InputError),
    ([*BLUE_GREEN, "target.rollout.images.blue=vllm/vllm-openai:latest"], "target.rollout.images.blue", ":latest",
     InputError),
    ([*BLUE_GREEN, "target.rollout.active=red"], "target.eks.rollout.active", "'blue' or 'green'", InputError),
    (["target.rollout.strategy=blue-green", "target.autoscaling.kind=none"], "target.rollout.strategy",
     "no whole copy", InputError),
    # 6 copies a colour are 3 nodes, within $300/h alone (3 x $55.04), not twice (6 x $55.04).
    (["target.rollout.strategy=blue-green", "nodes=2", "target.autoscaling.max_replicas=6"],
     "target.rollout.strategy", "budget", InfeasibleError),
])
def test_bad_blue_green_stacks_are_refused_with_the_field(sets, path, reason, error):
    with pytest.raises(error) as caught:
        resolve_stack("eks-70b", sets=sets)
    assert any(p.path.removeprefix("cluster.") == path and reason in p.reason for p in caught.value.problems), \
        caught.value.problems


def test_multi_node_blue_green_over_the_nodes_is_refused():
    with pytest.raises(InputError) as caught:  # 2 colours x 2 copies x 2 nodes = 8 > nodes: 4
        resolve_stack("eks-r1", sets=["target.rollout.strategy=blue-green"])
    assert caught.value.problems[0].path == "cluster.target.rollout.strategy"
    assert "need 8 nodes" in caught.value.problems[0].reason
