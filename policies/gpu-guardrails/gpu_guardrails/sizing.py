"""Sizing (mandatory): every instance type a resource can launch serves the request carried in its tags."""

from __future__ import annotations

from gpuinfra.sizing import Evaluation, Hardware, SizingRequest, evaluate, survey
from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from gpu_guardrails.common import (
    GPU_LAUNCHERS,
    catalog_type,
    config_of,
    launchable_types,
    nodes_per_copy,
    request_from_tags,
    schema,
    tags_of,
)

# The reason codes this rule owns; host resources (RAM, NVMe, vCPUs, RDMA) belong to host-minimums.
GPU_REASONS = {"gpu-memory", "kv-capacity", "fp8-hardware", "layout"}


_SUGGESTIONS: dict[tuple, tuple[str, ...]] = {}


def cheapest_fits(request: SizingRequest, max_nodes: int, count: int) -> tuple[str, ...]:
    key = (request.model.name, request.effective_precision, request.kv_cache_dtype, request.context_tokens,
           request.concurrency, request.gpu_memory_utilization, request.attention_parallel, max_nodes, count)
    if key not in _SUGGESTIONS:
        options = survey(request, max_nodes=max_nodes).options
        _SUGGESTIONS[key] = tuple(f"{o.instance_type} x {o.nodes}" + (
            f" (${o.cost_per_hour_usd:.2f}/h)" if o.cost_per_hour_usd else "") for o in options[:count])
    return _SUGGESTIONS[key]


def sized(args: ResourceValidationArgs) -> list[tuple[str, Evaluation | None]]:
    """(instance type, evaluation) for every launchable type; evaluation None when it is not in the catalog."""
    tags = tags_of(args.props)
    request, _ = request_from_tags(tags)
    if request is None:
        return []
    span = nodes_per_copy(tags)
    results = []
    for name in launchable_types(args.resource_type, args.props):
        instance = catalog_type(name)
        results.append((name, evaluate(request, Hardware.from_instance(instance, span)) if instance else None))
    return results


GPU_SIZING_SCHEMA = schema(suggestions={"type": "integer", "default": 3, "minimum": 0,
                                        "description": "How many cheapest fitting types to suggest"})


def validate_gpu_sizing(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in GPU_LAUNCHERS:
        return
    config = config_of(args, GPU_SIZING_SCHEMA)
    tags = tags_of(args.props)
    request, unreadable = request_from_tags(tags)
    if unreadable:
        report_violation(f"the serving request in the gpuinfra:* tags cannot be read: {unreadable}", args.urn)
        return
    if request is None:
        return
    for name, evaluation in sized(args):
        if evaluation is None:
            report_violation(f"{name} is not in the gpuinfra catalog, so its GPUs cannot be checked against "
                             f"{request.model.name}; use a catalog type", args.urn)
            continue
        reasons = [r for r, code in zip(evaluation.reasons, evaluation.reason_codes, strict=True)
                   if code in GPU_REASONS]
        if not reasons:
            continue
        suggestions = cheapest_fits(request, max(4, evaluation.nodes), config["suggestions"])
        fits = f"; cheapest that fit: {', '.join(suggestions)}" if suggestions else "; no catalog type fits"
        report_violation(f"{name} x {evaluation.nodes} cannot serve {request.model.name} "
                         f"({request.effective_precision.value}, {request.concurrency} x {request.context_tokens} "
                         f"tokens): {'; '.join(reasons)}{fits}", args.urn)


gpu_sizing = ResourceValidationPolicy(
    name="gpu-sizing",
    description="Every instance type a launch template, group, fleet or instance can launch has the GPU memory, "
                "GPU count, FP8 support and a valid TP/PP layout for the serving request in its gpuinfra:* tags.",
    validate=validate_gpu_sizing,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=GPU_SIZING_SCHEMA,
)

SIZING_POLICIES = [gpu_sizing]
