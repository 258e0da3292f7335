"""Run the pack's policies on resources recorded by `gpuinfra plan` (no Pulumi engine, no analyzer).

Resource policies get each resource's inputs, as CrossGuard does at preview; stack policies get every
resource with its inputs plus the id the mock runtime gave it, so cross-resource references resolve.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from gpu_guardrails import POLICIES


class Recorded(Protocol):
    type: str
    name: str
    urn: str
    id: str | None
    inputs: dict[str, Any]


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                 custom_timeouts=None, additional_secret_outputs=[])


def enforcement_of(policy, config: Mapping[str, Any]) -> str:
    level = config.get("enforcementLevel") or policy.enforcement_level or EnforcementLevel.ADVISORY
    return level.value if isinstance(level, EnforcementLevel) else str(level)


def run_policies(resources: Iterable[Recorded], *, config: Mapping[str, Mapping[str, Any]] | None = None,
                 policies=None) -> list[dict[str, Any]]:
    """Violations as {policy, enforcement, message, resource} (resource: the name, None for the stack)."""
    resources = list(resources)
    config = config or {}
    name_of = {r.urn: r.name for r in resources}
    violations: list[dict[str, Any]] = []
    for policy in policies or POLICIES:
        policy_config = dict(config.get(policy.name) or {})
        level = enforcement_of(policy, policy_config)
        if level == "disabled":
            continue

        def report(message: str, urn: str | None = None, _policy=policy, _level=level) -> None:
            violations.append({"policy": _policy.name, "enforcement": _level, "message": message,
                               "resource": name_of.get(urn) if urn else None})

        if isinstance(policy, ResourceValidationPolicy):
            for r in resources:
                args = ResourceValidationArgs(r.type, r.inputs, r.urn, r.name, _options(), None, policy_config)
                policy.validate(args, report)
        elif isinstance(policy, StackValidationPolicy):
            stack_resources = [PolicyResource(r.type, {**r.inputs, "id": r.id}, r.urn, r.name, _options(), None,
                                              None, [], {}) for r in resources]
            policy.validate(StackValidationArgs(stack_resources, policy_config), report)
    return violations
