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


ENFORCEMENT_LEVELS = tuple(level.value for level in EnforcementLevel)
ALL_POLICIES = "all"


def load_policy_config(path: str, label: str) -> dict[str, dict[str, Any]]:
    """A `--policy-pack-config` file, checked as CrossGuard would: known policy names, exact enforcement
    levels, and each policy's values against its config_schema. Every problem is reported at once."""
    from gpuinfra.documents import load_json_object

    return check_policy_config(load_json_object(path, label), label)


def check_policy_config(raw: Mapping[str, Any], label: str,
                        policies=None) -> dict[str, dict[str, Any]]:
    """RAW normalised to {policy: {enforcementLevel?, ...values}}, with `all` applied to every policy."""
    from gpuinfra.errors import InputError, Problem

    policies = {p.name: p for p in (policies or POLICIES)}
    problems: list[Problem] = []
    normalised: dict[str, dict[str, Any]] = {}
    every = _policy_entry(raw.get(ALL_POLICIES, {}), f"{label}: {ALL_POLICIES}", None, problems)
    for name, entry in raw.items():
        if name == ALL_POLICIES:
            continue
        if name not in policies:
            problems.append(Problem(f"{label}: {name}", f"unknown policy (gpu-guardrails has {', '.join(policies)})"))
            continue
        normalised[name] = _policy_entry(entry, f"{label}: {name}", policies[name], problems)
    if problems:
        raise InputError(problems)
    return {name: {**every, **normalised.get(name, {})} for name in policies if every or name in normalised}


def _policy_entry(entry: Any, where: str, policy, problems: list) -> dict[str, Any]:
    """One policy's entry: a level string, or an object of enforcementLevel plus config values."""
    import jsonschema
    from gpuinfra.errors import Problem

    values = {"enforcementLevel": entry} if isinstance(entry, str) else entry
    if not isinstance(values, dict):
        problems.append(Problem(where, f"must be an enforcement level or an object, got {type(entry).__name__}"))
        return {}
    level = values.get("enforcementLevel")
    if "enforcementLevel" in values and level not in ENFORCEMENT_LEVELS:
        problems.append(Problem(f"{where}.enforcementLevel", f"{level!r} is not one of {', '.join(ENFORCEMENT_LEVELS)}"
                                                             " (exactly, lower case)"))
    settings = {k: v for k, v in values.items() if k != "enforcementLevel"}
    if policy is None:
        if settings:
            problems.append(Problem(where, "takes only enforcementLevel"))
        return values
    schema = policy.config_schema
    document = {"type": "object", "additionalProperties": False,
                "properties": dict(schema.properties) if schema else {},
                "required": list(schema.required or []) if schema else []}
    for error in sorted(jsonschema.Draft7Validator(document).iter_errors(settings), key=lambda e: list(e.path)):
        path = ".".join(str(part) for part in error.path)
        problems.append(Problem(f"{where}{'.' + path if path else ''}", error.message))
    return values


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
