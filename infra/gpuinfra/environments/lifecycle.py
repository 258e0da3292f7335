"""`env up`, `env ls`, `env extend`, `env down`, `env protect`: the lifecycle of one environment.

`env up` refuses before anything exists: the template is planned offline (plan.build_plan: the real
program under mocks, the policy pack), priced (ResolvedCluster.max_cost_per_hour_usd), the price times
the TTL is held against the budget, and the capacity checks run. Only then is the stack claimed
(exactly one of two concurrent `env up` of one name wins) and `up` run.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import Field

from gpuinfra.config import CONFIG_KEY, ClusterConfig, ResolvedCluster, stack_file
from gpuinfra.environments.backend import StackLocked
from gpuinfra.environments.capacity import check_capacity
from gpuinfra.environments.context import Context
from gpuinfra.environments.durations import format_duration
from gpuinfra.environments.engine import EngineError, StackExists
from gpuinfra.environments.idle import Activity
from gpuinfra.environments.models import (
    ENVIRONMENT_CONFIG_KEY,
    TAG_VALUE,
    EnvironmentStatus,
    Lifecycle,
    Model,
    ReapDecision,
    StackSummary,
    utc_text,
)
from gpuinfra.environments.reap import PHASE_TAG, activity_of, destroy_checked, environments
from gpuinfra.errors import InfeasibleError, InputError, Problem

# Refused by budget, capacity, policy or the environment's state: exit 1, nothing (more) changed.
Refused = InfeasibleError

FAILURE_TAG = "gpuinfra:failure"


class UpRequest(Model):
    """`env up`'s validated flags."""

    template: str | None = Field(description="A shipped stack's name (stacks/Pulumi.<template>.yaml)")
    stack_file: str | None = Field(description="Or a stack file outside stacks/")
    name: str
    ttl: timedelta
    budget_usd: float | None = Field(ge=0)
    owner: str
    sets: list[str]
    idle_after: timedelta | None
    protected: bool
    skip_capacity_checks: bool
    prometheus_url: str | None = Field(None, description="A Prometheus scraping the server, for idle detection "
                                                         "(--serve finds the monitoring role's own)")


def template_source(request: UpRequest) -> tuple[str, Path]:
    """(label for the tags, stack file); an unknown template is bad input."""
    if request.stack_file:
        path = Path(request.stack_file)
        if not path.is_file():
            raise InputError([Problem("--stack-file", f"{path} does not exist")])
        label = path.name.removeprefix("Pulumi.").removesuffix(".yaml")
        return (label if TAG_VALUE.fullmatch(label) else "stack-file"), path
    path = stack_file(request.template or "")
    if not path.is_file():
        shipped = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml")
                         for p in path.parent.glob("Pulumi.*.yaml"))
        raise InputError([Problem("TEMPLATE", f"{request.template!r} is not a shipped stack ({', '.join(shipped)}); "
                                              "or give --stack-file")])
    return request.template or "", path


def planned_cluster(request: UpRequest, path: Path) -> ResolvedCluster:
    """The real program under mocks and the policy pack, as `gpuinfra plan` runs them."""
    from gpuinfra.plan import build_plan

    cluster, report = build_plan(request.name, str(path), request.sets)
    if report.mandatory_violations:
        raise Refused([Problem(f"policy {v.policy}", f"{v.resource or 'stack'}: {v.message}")
                       for v in report.mandatory_violations])
    return cluster


def budget_problems(hourly_usd: float | None, ttl: timedelta, budget_usd: float | None) -> list[Problem]:
    """The plan's $/h times the TTL must fit the budget; without a price there is nothing to hold it to."""
    if budget_usd is None:
        return []
    if hourly_usd is None:
        return [Problem("--budget", "the catalog has no on-demand price for the stack's instance types, so the "
                                    "budget cannot be checked")]
    hours = ttl.total_seconds() / 3600
    cost = hourly_usd * hours
    if cost <= budget_usd:
        return []
    affordable = timedelta(hours=budget_usd / hourly_usd) if hourly_usd else ttl
    return [Problem("--budget", f"${hourly_usd:.2f}/h x {format_duration(ttl)} = ${cost:.2f}, over the "
                                f"${budget_usd:.2f} budget (at most --ttl {format_duration(affordable)} fits)")]


def capacity_problems(cluster: ResolvedCluster, ctx: Context, expires_at: datetime) -> list[Problem]:
    findings = check_capacity(cluster, ctx.cloud.capacity, expires_at)
    return [Problem(f"capacity.{f.check}", f.message) for f in findings if not f.ok]


def settings_document(cluster: ResolvedCluster, lifecycle: Lifecycle) -> dict[str, Any]:
    """The stack's config, as a Pulumi stack settings file holds it: the program reads both keys."""
    return {"config": {CONFIG_KEY: cluster.config.model_dump(mode="json"),
                       ENVIRONMENT_CONFIG_KEY: lifecycle.model_dump(mode="json")}}


def up_environment(request: UpRequest, ctx: Context) -> tuple[Lifecycle, dict[str, Any]]:
    """Refuse, or create and `up` the environment; returns its lifecycle and the stack outputs."""
    label, path = template_source(request)
    if any(summary.name == request.name for summary in ctx.engine.list_stacks()):  # the claim below decides races
        raise Refused([Problem("--name", f"stack {request.name} already exists in {ctx.backend.store.url}; pick "
                                         f"another name or `gpuinfra env down {request.name}`")])
    with ctx.stages.stage(f"plan {label} as {request.name}"):
        cluster = planned_cluster(request, path)
    now = ctx.clock.now()
    problems = budget_problems(cluster.max_cost_per_hour_usd, request.ttl, request.budget_usd)
    if not problems and not request.skip_capacity_checks:
        with ctx.stages.stage("capacity checks"):
            problems = capacity_problems(cluster, ctx, now + request.ttl)
    if problems:
        raise Refused(problems)
    lifecycle = Lifecycle(environment_id=uuid.uuid4().hex[:12], template=label, owner=request.owner, created_at=now,
                          expires_at=now + request.ttl, hourly_usd=cluster.max_cost_per_hour_usd or 0.0,
                          budget_usd=request.budget_usd, protected=request.protected,
                          idle_after_s=int(request.idle_after.total_seconds()) if request.idle_after else None)
    try:
        prometheus = {"gpuinfra:prometheus-url": request.prometheus_url} if request.prometheus_url else {}
        ctx.engine.create(request.name, settings_document(cluster, lifecycle),
                          {**lifecycle.stack_tags(), PHASE_TAG: "creating", **prometheus})
    except StackExists as exc:
        raise Refused([Problem("--name", f"{exc}; pick another name or `gpuinfra env down {request.name}`")]) from None
    return lifecycle, run_up(ctx, request.name)


def run_up(ctx: Context, name: str) -> dict[str, Any]:
    """`up`, with the phase tag telling `env ls` how it went."""
    try:
        with ctx.stages.stage(f"up {name} ({ctx.engine.kind} engine)") as detail:
            outputs = ctx.engine.up(name, detail)
    except (EngineError, StackLocked) as exc:
        ctx.engine.set_tags(name, {PHASE_TAG: "failed", FAILURE_TAG: str(exc)[:250]})
        raise Refused([Problem("up", f"{exc}; `gpuinfra env down {name}` removes what was created")]) from None
    phase = ctx.engine.list_stacks()
    current = next((s.tags.get(PHASE_TAG) for s in phase if s.name == name), None)
    if current in (None, "creating", "failed"):
        ctx.engine.set_tags(name, {PHASE_TAG: "ready", FAILURE_TAG: ""})
    return outputs


def find_environment(ctx: Context, name: str) -> tuple[StackSummary, Lifecycle]:
    for summary, lifecycle in environments(ctx.engine.list_stacks()):
        if summary.name == name:
            return summary, lifecycle
    raise InputError([Problem("NAME", f"no environment {name!r} in {ctx.backend.store.url} (see `gpuinfra env ls`)")])


def status_of(summary: StackSummary, lifecycle: Lifecycle, now: datetime,
              activity: Activity | None) -> EnvironmentStatus:
    """One `env ls` row: the state is the first that applies of expired, failed, creating, idle, the phase."""
    phase = summary.tags.get(PHASE_TAG, "creating")
    spend, left = lifecycle.spend_usd(now), lifecycle.budget_left_usd(now)
    if now >= lifecycle.expires_at:
        state, reason = "expired", f"expired at {utc_text(lifecycle.expires_at)}"
    elif lifecycle.budget_usd is not None and spend >= lifecycle.budget_usd:
        state, reason = "expired", f"budget spent (${spend:.2f} of ${lifecycle.budget_usd:.2f})"
    elif phase == "failed":
        state, reason = "failed", summary.tags.get(FAILURE_TAG) or "up failed"
    elif phase == "creating":
        state, reason = "creating", "up in progress" if summary.update_in_progress else "created, up not finished"
    elif activity is not None and activity.idle:
        state, reason = "idle", activity.reason
    else:
        state = phase
        reason = activity.reason if activity else ("idle detection off" if lifecycle.idle_after_s is None
                                                   else "not serving yet")
    hours = 3600
    return EnvironmentStatus(
        name=summary.name, environment_id=lifecycle.environment_id, template=lifecycle.template, owner=lifecycle.owner,
        state=state, reason=reason, created_at=utc_text(lifecycle.created_at),
        age_hours=round((now - lifecycle.created_at).total_seconds() / hours, 3),
        expires_at=utc_text(lifecycle.expires_at),
        expires_in_hours=round((lifecycle.expires_at - now).total_seconds() / hours, 3),
        hourly_usd=lifecycle.hourly_usd,
        spend_usd=spend, budget_usd=lifecycle.budget_usd, budget_left_usd=left, idle_after_s=lifecycle.idle_after_s,
        protected=lifecycle.protected, update_in_progress=summary.update_in_progress,
        resources=summary.resource_count, endpoint=summary.tags.get("gpuinfra:endpoint") or None)


def statuses(ctx: Context) -> list[EnvironmentStatus]:
    rows = []
    for summary, lifecycle in environments(ctx.engine.list_stacks()):
        now = ctx.clock.now()
        rows.append(status_of(summary, lifecycle, now, activity_of(ctx, summary, lifecycle, now)))
    return rows


def extend_environment(ctx: Context, name: str, by: timedelta) -> Lifecycle:
    """Later expiry, never past the budget; the stack config, tags and AWS tags all move (an `up`)."""
    summary, lifecycle = find_environment(ctx, name)
    expires_at = lifecycle.expires_at + by
    problems = budget_problems(lifecycle.hourly_usd, expires_at - lifecycle.created_at, lifecycle.budget_usd)
    if problems:
        raise Refused([Problem("--ttl", f"extending by {format_duration(by)}: {p.reason}") for p in problems])
    if summary.update_in_progress:
        raise Refused([Problem("NAME", f"an update of {name} is in progress ({summary.lock_holder}); try again later")])
    extended = lifecycle.model_copy(update={"expires_at": expires_at})
    settings = ctx.engine.settings(name)
    settings["config"][ENVIRONMENT_CONFIG_KEY] = extended.model_dump(mode="json")
    ctx.engine.save_settings(name, settings)
    ctx.engine.set_tags(name, extended.stack_tags())
    run_up(ctx, name)  # the AWS tags (launch templates, instances launched from now on) move with it
    region = settings["config"][CONFIG_KEY].get("region", ClusterConfig.model_fields["region"].default)
    ctx.cloud.retag(region, name, extended.environment_id, extended.aws_tags())  # and the running instances'
    return extended


def down_environment(ctx: Context, name: str) -> ReapDecision:
    summary, lifecycle = find_environment(ctx, name)
    if lifecycle.protected:
        raise Refused([Problem("NAME", f"{name} is protected; `gpuinfra env protect {name} --off` first")])
    if summary.update_in_progress:
        raise Refused([Problem("NAME", f"an update of {name} is in progress ({summary.lock_holder}); try again later")])
    try:
        with ctx.stages.stage(f"destroy {name}") as detail:
            decision = destroy_checked(ctx.engine, name, lifecycle, act=True, reason="env down", on_progress=detail)
    except (EngineError, StackLocked) as exc:
        raise Refused([Problem("NAME", str(exc))]) from None
    if decision.action != "destroy":
        raise Refused([Problem("NAME", decision.reason)])
    return decision


def protect_environment(ctx: Context, name: str, protected: bool) -> Lifecycle:
    _, lifecycle = find_environment(ctx, name)
    changed = lifecycle.model_copy(update={"protected": protected})
    settings = ctx.engine.settings(name)
    settings["config"][ENVIRONMENT_CONFIG_KEY] = changed.model_dump(mode="json")
    ctx.engine.save_settings(name, settings)
    ctx.engine.set_tags(name, changed.stack_tags())
    return changed
