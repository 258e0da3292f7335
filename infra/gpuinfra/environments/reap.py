"""`gpuinfra env reap`: destroy environments that are expired, over budget, or idle past their limit.

For each environment, in this order:
  1. protected ones, and those with an update in progress (someone holds the stack's lock), are skipped;
     the locked ones are tried again at the end of the run, and else by the next run (the timer);
  2. the destroy is previewed, and refused if it would delete anything the environment did not create
     (another stack's or project's resource, one read with .get() or imported, a protected one, or one
     tagged for another stack or environment);
  3. the destroy runs, and the stack is removed only once its state holds zero resources;
  4. resources tagged `gpuinfra:stack` whose stack no longer exists are reported (orphans).
Without `--yes` nothing is destroyed: the decisions say `would-destroy`. One log line per decision.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from gpuinfra.environments.backend import PROJECT, StackLocked
from gpuinfra.environments.context import Context
from gpuinfra.environments.durations import format_duration
from gpuinfra.environments.engine import Engine, EngineError
from gpuinfra.environments.idle import Activity
from gpuinfra.environments.models import STACK_TAG, Lifecycle, ReapDecision, StackSummary, StateResource, utc_text

PHASE_TAG = "gpuinfra:phase"


def why_reap(lifecycle: Lifecycle, now: datetime, activity: Activity | None) -> str | None:
    """The reason to destroy, or None to keep."""
    if now >= lifecycle.expires_at:
        return f"expired {format_duration(now - lifecycle.expires_at)} ago (at {utc_text(lifecycle.expires_at)})"
    if lifecycle.budget_usd is not None and lifecycle.spend_usd(now) >= lifecycle.budget_usd:
        return f"over budget: ${lifecycle.spend_usd(now):.2f} spent of ${lifecycle.budget_usd:.2f}"
    if activity is not None and activity.idle:
        return f"idle: {activity.reason} (limit {format_duration(timedelta(seconds=lifecycle.idle_after_s or 0))})"
    return None


def unowned(stack: str, lifecycle: Lifecycle | None, planned: list[str], state: list[StateResource]) -> list[str]:
    """What a destroy of STACK would delete that the environment did not create, each with why."""
    by_urn = {resource.urn: resource for resource in state}
    found = []
    for urn in planned:
        resource = by_urn.get(urn)
        why = None
        if resource is None:
            why = "is not in the stack's state"
        elif not urn.startswith(f"urn:pulumi:{stack}::{PROJECT}::"):
            why = "belongs to another stack or project"
        elif resource.external:
            why = "was read with .get(), not created by the stack"
        elif resource.import_id:
            why = f"was imported ({resource.import_id}), not created by the stack"
        elif resource.protect:
            why = "is protected"
        elif resource.custom and resource.type.startswith("aws:") and resource.tags is not None:
            owner = resource.tags.get(STACK_TAG)
            environment = resource.tags.get("gpuinfra:environment-id")
            if owner != stack:
                why = f"is tagged {STACK_TAG}={owner}" if owner else f"has no {STACK_TAG} tag"
            elif lifecycle and environment and environment != lifecycle.environment_id:
                why = f"belongs to environment {environment}, not {lifecycle.environment_id}"
        if why:
            found.append(f"{urn} {why}")
    return found


def destroy_checked(engine: Engine, stack: str, lifecycle: Lifecycle | None, *, act: bool, reason: str,
                    on_progress: Callable[[str], None]) -> ReapDecision:
    """Steps 2 and 3: preview, refuse what is not ours, destroy, require an empty state, remove."""
    planned = engine.preview_destroy(stack, on_progress)
    foreign = unowned(stack, lifecycle, planned, engine.resources(stack))
    if foreign:
        return ReapDecision(environment=stack, action="refuse", resources=foreign,
                            reason=f"{reason}; the destroy would delete {len(foreign)} resource(s) the environment "
                                   f"did not create: {'; '.join(foreign[:3])}")
    if not act:
        return ReapDecision(environment=stack, action="would-destroy", resources=planned,
                            reason=f"{reason}; would delete {len(planned)} resource(s) (dry run: --yes destroys)")
    engine.destroy(stack, on_progress)
    remaining = engine.resources(stack)
    if remaining:
        return ReapDecision(environment=stack, action="failed", resources=[r.urn for r in remaining],
                            reason=f"{reason}; {len(remaining)} resource(s) remain after the destroy, so the stack "
                                   "is kept for the next run")
    engine.remove(stack)
    return ReapDecision(environment=stack, action="destroy", resources=planned,
                        reason=f"{reason}; deleted {len(planned)} resource(s), 0 remain, stack removed")


def decide(engine: Engine, summary: StackSummary, lifecycle: Lifecycle, now: datetime, activity: Activity | None,
           *, act: bool, on_progress: Callable[[str], None]) -> ReapDecision:
    """One environment, steps 1 to 3."""
    reason = why_reap(lifecycle, now, activity)
    name = summary.name
    if reason is None:
        left = format_duration(lifecycle.expires_at - now)
        budget = f" of ${lifecycle.budget_usd:.2f}" if lifecycle.budget_usd is not None else ""
        detail = f"; {activity.reason}" if activity else ""
        return ReapDecision(environment=name, action="keep",
                            reason=f"expires in {left}, ${lifecycle.spend_usd(now):.2f} spent{budget}{detail}")
    if lifecycle.protected:
        return ReapDecision(environment=name, action="skip", reason=f"{reason}; protected (`gpuinfra env protect "
                                                                    f"{name} --off` lets the reaper destroy it)")
    if summary.update_in_progress:
        return ReapDecision(environment=name, action="skip", reason=f"{reason}; an update is in progress "
                                                                    f"({summary.lock_holder}): retried later")
    try:
        return destroy_checked(engine, name, lifecycle, act=act, reason=reason, on_progress=on_progress)
    except StackLocked as exc:
        return ReapDecision(environment=name, action="skip", reason=f"{reason}; {exc}: retried later")
    except EngineError as exc:
        return ReapDecision(environment=name, action="failed", reason=f"{reason}; {exc}")


def activity_of(ctx: Context, summary: StackSummary, lifecycle: Lifecycle, now: datetime) -> Activity | None:
    """Ask Prometheus only for what could be idle-reaped: serving or ready, not expired, with an idle limit."""
    phase = summary.tags.get(PHASE_TAG)
    if lifecycle.idle_after_s is None or phase not in ("ready", "serving") or now >= lifecycle.expires_at:
        return None
    return ctx.probe(summary.tags.get("gpuinfra:prometheus-url"), timedelta(seconds=lifecycle.idle_after_s))


def environments(summaries: list[StackSummary]) -> list[tuple[StackSummary, Lifecycle]]:
    """The stacks gpuinfra created as environments; other stacks in the backend are never touched."""
    found = []
    for summary in summaries:
        try:
            found.append((summary, Lifecycle.from_tags(summary.tags)))
        except (ValueError, KeyError):
            continue
    return found


def reap(ctx: Context, *, act: bool, regions: list[str], log: Callable[[str], None]) -> list[ReapDecision]:
    """Every environment once; the locked ones once more at the end; then the orphans."""
    decisions: list[ReapDecision] = []

    def record(decision: ReapDecision) -> None:
        decisions.append(decision)
        log(decision.log_line())

    deferred = []
    for summary, lifecycle in environments(ctx.engine.list_stacks()):
        now = ctx.clock.now()
        activity = activity_of(ctx, summary, lifecycle, now)
        if act and why_reap(lifecycle, now, activity) and not lifecycle.protected:
            with ctx.stages.stage(f"destroy {summary.name}") as detail:
                decision = decide(ctx.engine, summary, lifecycle, now, activity, act=act, on_progress=detail)
        else:
            decision = decide(ctx.engine, summary, lifecycle, now, activity, act=act, on_progress=lambda _: None)
        record(decision)
        if decision.action == "skip" and "retried later" in decision.reason:
            deferred.append(summary.name)
    if deferred:
        again = {s.name: (s, lc) for s, lc in environments(ctx.engine.list_stacks()) if s.name in deferred}
        for name in deferred:
            if name not in again:
                continue
            summary, lifecycle = again[name]
            now = ctx.clock.now()
            decision = decide(ctx.engine, summary, lifecycle, now, activity_of(ctx, summary, lifecycle, now),
                              act=act, on_progress=lambda _: None)
            if decision.action == "skip":
                decision = decision.model_copy(update={"reason": decision.reason.replace(
                    "retried later", "still in progress: the next run retries")})
            record(decision)
    for orphan in orphans(ctx, regions):
        record(orphan)
    return decisions


def orphans(ctx: Context, regions: list[str]) -> list[ReapDecision]:
    from gpuinfra.environments.cloud import find_orphans

    known = {}
    for summary in ctx.engine.list_stacks():
        known[summary.name] = summary.tags.get("gpuinfra:environment-id")
    return find_orphans(ctx.cloud.tagged_resources(regions), known)
