"""`gpuinfra plan STACK`: what `pulumi up --stack STACK` would do, offline.

The stack file is validated and sized on every launchable instance type, then the real Pulumi program
runs under the mock runtime (gpuinfra.preview) and every registered resource goes through the
gpu-guardrails policy rules, the same functions the CrossGuard pack runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gpuinfra.config import ResolvedCluster, load_stack, parse_override
from gpuinfra.errors import InputError, Problem
from gpuinfra.sizing import Evaluation


class PlannedResource(BaseModel):
    type: str
    name: str
    parent: str | None
    inputs: dict[str, Any]


class Violation(BaseModel):
    policy: str
    enforcement: str
    message: str
    resource: str | None


class PlanReport(BaseModel):
    stack: str
    resources: list[PlannedResource]
    violations: list[Violation]
    cost_per_hour_usd: float | None
    sizing: list[Evaluation]
    outputs: dict[str, Any]
    gpu_image: str | None = None  # EC2 target: the image the nodes launch and what pins it

    @property
    def mandatory_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.enforcement == "mandatory"]


def parse_sets(sets: list[str] | None) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    problems = []
    for text in sets or []:
        try:
            key, value = parse_override(text)
            if key in overrides:
                problems.append(Problem("--set", f"{key} is set twice; the last would silently win"))
            overrides[key] = value
        except InputError as exc:
            problems.extend(exc.problems)
    if problems:
        raise InputError(problems)
    return overrides


def resolve_stack(stack: str, stack_file: str | None = None, sets: list[str] | None = None) -> ResolvedCluster:
    overrides = parse_sets(sets)
    return load_stack(stack, path=Path(stack_file) if stack_file else None, overrides=overrides)


def build_plan(stack: str, stack_file: str | None = None, sets: list[str] | None = None,
               policy_config: dict[str, dict[str, Any]] | None = None) -> tuple[ResolvedCluster, PlanReport]:
    from gpu_guardrails.offline import run_policies

    from gpuinfra.preview import run_offline

    cluster = resolve_stack(stack, stack_file, sets)
    preview = run_offline(cluster)
    violations = run_policies(preview.resources, config=policy_config)
    report = PlanReport(
        stack=stack,
        resources=[PlannedResource(**r.as_json()) for r in preview.resources],
        violations=[Violation(**v) for v in violations],
        cost_per_hour_usd=cluster.max_cost_per_hour_usd,
        sizing=cluster.evaluations,
        outputs=preview.outputs,
        gpu_image=gpu_image_line(cluster),
    )
    return cluster, report


def gpu_image_line(cluster: ResolvedCluster) -> str | None:
    from gpuinfra.aws.node_pool import image_choice

    if cluster.config.target.kind != "ec2":
        return None  # the Kubernetes target's nodes run the EKS GPU image (docs/kubernetes.md)
    return image_choice(cluster.config.ami_id, cluster.config.region).describe()


def key_inputs(resource: PlannedResource) -> str:
    """A one-line summary of the inputs that matter when reading a plan."""
    inputs = resource.inputs
    parts = []
    for key in ("cidrBlock", "availabilityZone", "instanceType", "strategy", "serviceName", "ipProtocol",
                "cidrIpv4", "fromPort", "loadBalancingAlgorithmType", "internal", "policyArn"):
        if key in inputs and inputs[key] not in (None, "", []):
            parts.append(f"{key}={inputs[key]}")
    if "referencedSecurityGroupId" in inputs:
        parts.append("from=" + ("self" if inputs["referencedSecurityGroupId"] == inputs.get("securityGroupId")
                                else "security-group"))
    interfaces = inputs.get("networkInterfaces")
    if interfaces:
        kinds = [i.get("interfaceType") for i in interfaces]
        parts.append(f"interfaces={len(interfaces)} ({kinds.count('efa')} efa, {kinds.count('efa-only')} efa-only)")
    if "metadataOptions" in inputs:
        parts.append(f"httpTokens={inputs['metadataOptions'].get('httpTokens')}")
    for mapping in inputs.get("blockDeviceMappings") or []:
        ebs = mapping.get("ebs") or {}
        parts.append(f"root={ebs.get('volumeSize')}GiB {ebs.get('volumeType')} encrypted={ebs.get('encrypted')}")
    if "desiredCapacity" in inputs:
        policy = inputs.get("mixedInstancesPolicy") or {}
        distribution = policy.get("instancesDistribution") or {}
        overrides = (policy.get("launchTemplate") or {}).get("overrides") or []
        parts.append(f"nodes={inputs['desiredCapacity']}")
        parts.append("types=" + ",".join(o.get("instanceType", "?") for o in overrides))
        if distribution.get("spotAllocationStrategy"):
            parts.append(f"spot={distribution['spotAllocationStrategy']} rebalance={inputs.get('capacityRebalance')}")
        if inputs.get("placementGroup"):
            parts.append("placement-group")
    return " ".join(parts)


def render_plan_report(cluster: ResolvedCluster, report: PlanReport, console) -> None:
    from rich.table import Table
    from rich.tree import Tree

    from gpuinfra.render import memory_bar

    cfg = cluster.config
    zone = f" / {cfg.availability_zone}" if cfg.availability_zone else ""
    console.print(f"[bold]stack {report.stack}[/]: {cfg.model} ({cluster.request.effective_precision.value}), "
                  f"{cfg.concurrency} x {cfg.context_tokens:,} tokens, {cfg.nodes} node(s), "
                  f"capacity {cfg.capacity.type}, {cfg.region}{zone}")
    tree = Tree(f"[bold]{len(report.resources)} resources[/] (pulumi up would create)")
    branches: dict[str, Tree] = {}
    for resource in report.resources:
        label = f"{resource.type} [cyan]{resource.name}[/] {key_inputs(resource)}".rstrip()
        parent = branches.get(resource.parent or "", tree) if resource.parent else tree
        node = parent.add(label)
        if not resource.type.startswith(("aws:", "pulumi:")):
            branches[resource.name] = node
    console.print(tree)
    table = Table(title="Sizing per launchable instance type", title_justify="left")
    for column in ("instance", "layout", "KV/GPU GiB", "max seqs", "$/h"):
        table.add_column(column)
    for e in report.sizing:
        table.add_row(e.instance_type or e.gpu, f"TP {e.tensor_parallel} PP {e.pipeline_parallel} EP "
                      f"{e.expert_parallel} x{e.replicas}", f"{e.per_gpu.kv_cache_gib:.1f}",
                      str(e.max_concurrency_at_context),
                      "n/a" if e.cost_per_hour_usd is None else f"${e.cost_per_hour_usd:,.2f}")
    console.print(table)
    console.print("per GPU on", cluster.primary.instance_type, memory_bar(cluster.primary))
    if report.gpu_image:
        console.print(f"[bold]image[/]: {report.gpu_image}")
    cost = report.cost_per_hour_usd
    console.print(f"[bold]cost[/]: up to {'n/a' if cost is None else f'${cost:,.2f}'}/h on demand")
    if not report.violations:
        console.print("[green]policies[/]: gpu-guardrails, no violations")
    for v in report.violations:
        colour = "red" if v.enforcement == "mandatory" else "yellow"
        console.print(f"[{colour}]{v.enforcement}[/] {v.policy} ({v.resource or 'stack'}): {v.message}")
