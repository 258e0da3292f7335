"""`gpuinfra plan STACK`: what `pulumi up --stack STACK` would do, offline.

Stage 1 (this module today): validate the stack file and size it on every launchable instance type.
The Pulumi program under mocks (resources, policy violations) extends the same report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from gpuinfra.config import ResolvedCluster, load_stack, parse_override
from gpuinfra.errors import InputError
from gpuinfra.sizing import Evaluation


class PlanReport(BaseModel):
    stack: str
    cost_per_hour_usd: float | None
    sizing: list[Evaluation]


def build_plan(stack: str, stack_file: str | None = None, sets: list[str] | None = None) -> tuple[ResolvedCluster,
                                                                                                   PlanReport]:
    overrides: dict[str, Any] = {}
    problems = []
    for text in sets or []:
        try:
            key, value = parse_override(text)
            overrides[key] = value
        except InputError as exc:
            problems.extend(exc.problems)
    if problems:
        raise InputError(problems)
    cluster = load_stack(stack, path=Path(stack_file) if stack_file else None, overrides=overrides)
    report = PlanReport(stack=stack, cost_per_hour_usd=cluster.max_cost_per_hour_usd, sizing=cluster.evaluations)
    return cluster, report


def render_plan_report(cluster: ResolvedCluster, report: PlanReport, console) -> None:
    from rich.table import Table

    from gpuinfra.render import memory_bar

    cfg = cluster.config
    zone = f" / {cfg.availability_zone}" if cfg.availability_zone else ""
    console.print(f"[bold]stack {report.stack}[/]: {cfg.model} ({cluster.request.effective_precision.value}), "
                  f"{cfg.concurrency} x {cfg.context_tokens:,} tokens, {cfg.nodes} node(s), "
                  f"capacity {cfg.capacity.type}, {cfg.region}{zone}")
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
    cost = report.cost_per_hour_usd
    console.print(f"[bold]cost[/]: up to {'n/a' if cost is None else f'${cost:,.2f}'}/h on demand")
