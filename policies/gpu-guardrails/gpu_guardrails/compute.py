"""Compute: host minimums for the model, and capacity (spot diversification, reservation targeting)."""

from __future__ import annotations

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from gpu_guardrails.common import (
    AUTO_SCALING_GROUP,
    GPU_LAUNCHERS,
    LAUNCH_TEMPLATE,
    SUBNET,
    catalog_type,
    config_of,
    group_launch_template_ids,
    launchable_types,
    request_from_tags,
    schema,
    tags_of,
)
from gpu_guardrails.sizing import sized

HOST_REASONS = {"host-ram", "nvme", "vcpus"}

HOST_MINIMUMS_SCHEMA = schema(
    large_model_params_b={"type": "number", "default": 34,
                          "description": "Models with at least this many parameters (billions) are 'large'"},
    large_model_min_vcpus={"type": "integer", "default": 16, "description": "Organisation minimum for large models"},
    large_model_min_ram_gib={"type": "number", "default": 128, "description": "Organisation minimum for large models"},
)


def validate_host_minimums(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in GPU_LAUNCHERS:
        return
    config = config_of(args, HOST_MINIMUMS_SCHEMA)
    request, _ = request_from_tags(tags_of(args.props))
    for name, evaluation in sized(args):
        if evaluation is None:
            continue  # gpu-sizing reports types outside the catalog
        instance = catalog_type(name)
        problems = [r for r, code in zip(evaluation.reasons, evaluation.reason_codes, strict=True)
                    if code in HOST_REASONS]
        params_b = request.model.architecture.total_params / 1e9
        if params_b >= config["large_model_params_b"]:
            if instance.vcpus < config["large_model_min_vcpus"]:
                problems.append(f"{instance.vcpus} vCPUs < the {config['large_model_min_vcpus']} required for "
                                f"models >= {config['large_model_params_b']:g}B ({params_b:.0f}B)")
            if instance.ram_gib < config["large_model_min_ram_gib"]:
                problems.append(f"{instance.ram_gib:g} GiB RAM < the {config['large_model_min_ram_gib']:g} GiB "
                                f"required for models >= {config['large_model_params_b']:g}B ({params_b:.0f}B)")
        if problems:
            report_violation(f"{name} host is short for {request.model.name}: {'; '.join(problems)}", args.urn)


host_minimums = ResourceValidationPolicy(
    name="host-minimums",
    description="System RAM to load the model, local NVMe for the weights and vCPUs for the server, from the "
                "sizing engine, plus organisation minimums for large models.",
    validate=validate_host_minimums,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=HOST_MINIMUMS_SCHEMA,
)

SPOT_SCHEMA = schema(min_instance_types={"type": "integer", "default": 2, "minimum": 1,
                                         "description": "Fewest instance types a spot group may use"})
SPOT_ADVISORY_SCHEMA = schema(recommended_instance_types={"type": "integer", "default": 3, "minimum": 1,
                                                          "description": "Spot pools recommended for resilience"})


def is_spot(props) -> bool:
    distribution = (props.get("mixedInstancesPolicy") or {}).get("instancesDistribution") or {}
    return bool(distribution.get("spotAllocationStrategy")) or distribution.get(
        "onDemandPercentageAboveBaseCapacity") == 0


def _spot_types(args: ResourceValidationArgs) -> list[str] | None:
    if args.resource_type != AUTO_SCALING_GROUP or not is_spot(args.props):
        return None
    return launchable_types(args.resource_type, args.props)


def validate_spot_diversification(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    types = _spot_types(args)
    minimum = config_of(args, SPOT_SCHEMA)["min_instance_types"]
    if types is not None and len(set(types)) < minimum:
        report_violation(f"spot with {len(set(types))} instance type(s) ({', '.join(types) or 'none'}); use at "
                         f"least {minimum} so one reclaimed pool cannot take every node", args.urn)
    distribution = (args.props.get("mixedInstancesPolicy") or {}).get("instancesDistribution") or {}
    if types is not None and distribution.get("spotAllocationStrategy") not in (
            "capacity-optimized", "capacity-optimized-prioritized", "price-capacity-optimized"):
        report_violation(f"spot allocation strategy {distribution.get('spotAllocationStrategy')!r} picks pools "
                         "by price alone; use capacity-optimized-prioritized", args.urn)


def validate_spot_pools_advisory(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    types = _spot_types(args)
    recommended = config_of(args, SPOT_ADVISORY_SCHEMA)["recommended_instance_types"]
    if types is not None and len(set(types)) < recommended:
        report_violation(f"spot with {len(set(types))} instance types; {recommended} or more pools make "
                         "interruptions rarer", args.urn)
    if types is not None and args.props.get("capacityRebalance") is not True:
        report_violation("capacityRebalance is off: nodes are replaced only after they are reclaimed", args.urn)


spot_diversification = ResourceValidationPolicy(
    name="spot-diversification",
    description=f"A spot group uses at least {SPOT_SCHEMA.properties['min_instance_types']['default']} instance "
                "types (min_instance_types) and a capacity-optimized allocation strategy.",
    validate=validate_spot_diversification,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=SPOT_SCHEMA,
)
spot_pools = ResourceValidationPolicy(
    name="spot-pools-recommended",
    description=f"A spot group uses {SPOT_ADVISORY_SCHEMA.properties['recommended_instance_types']['default']} or "
                "more instance types (recommended_instance_types) and capacity rebalancing.",
    validate=validate_spot_pools_advisory,
    enforcement_level=EnforcementLevel.ADVISORY,
    config_schema=SPOT_ADVISORY_SCHEMA,
)

RESERVATION_SCHEMA = schema(reservations={
    "type": "object", "default": {},
    "additionalProperties": {"type": "object", "additionalProperties": False,
                             "properties": {"instance_type": {"type": "string"},
                                            "availability_zone": {"type": "string"}}},
    "description": "Known reservations: {cr-id: {instance_type, availability_zone}} (checked when listed)"})


def _reservation(props) -> tuple[str | None, str | None]:
    target = ((props.get("capacityReservationSpecification") or {}).get("capacityReservationTarget") or {})
    market = (props.get("instanceMarketOptions") or {}).get("marketType")
    return target.get("capacityReservationId"), market


def validate_capacity_target(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    """A launch template that targets a reservation: the group using it launches that one type, in one zone,
    the reservation's zone when it is known; a capacity block needs the capacity-block market type."""
    config = config_of(args, RESERVATION_SCHEMA)
    by_id = {r.props.get("id"): r for r in args.resources if r.props.get("id")}
    for template in (r for r in args.resources if r.resource_type == LAUNCH_TEMPLATE):
        reservation_id, market = _reservation(template.props)
        if not reservation_id:
            continue
        known = (config.get("reservations") or {}).get(reservation_id)
        instance_type = template.props.get("instanceType")
        if known and known.get("instance_type") not in (None, instance_type):
            report_violation(f"{reservation_id} is for {known['instance_type']}, but the launch template launches "
                             f"{instance_type}", template.urn)
        if market == "capacity-block" and known and known.get("kind") == "reservation":
            report_violation(f"{reservation_id} is an On-Demand Capacity Reservation, not a capacity block",
                             template.urn)
        for group in (r for r in args.resources if r.resource_type == AUTO_SCALING_GROUP):
            template_ids = group_launch_template_ids(group.props)
            if template.props.get("id") not in template_ids:
                continue
            types = set(launchable_types(AUTO_SCALING_GROUP, group.props))
            if types - {instance_type}:
                report_violation(f"{group.name} launches {', '.join(sorted(types))} with a launch template that "
                                 f"targets {reservation_id} for {instance_type} only", group.urn)
            if is_spot(group.props):
                report_violation(f"{group.name} is spot but targets reservation {reservation_id}", group.urn)
            zones = {by_id[s].props.get("availabilityZone") for s in group.props.get("vpcZoneIdentifiers") or []
                     if s in by_id and by_id[s].resource_type == SUBNET}
            if len(zones) > 1:
                report_violation(f"{group.name} spans zones {', '.join(sorted(zones))}; reservation "
                                 f"{reservation_id} is in one zone", group.urn)
            if known and known.get("availability_zone") and zones and zones != {known["availability_zone"]}:
                report_violation(f"{group.name} launches in {', '.join(sorted(zones))} but {reservation_id} is in "
                                 f"{known['availability_zone']}", group.urn)


capacity_target = StackValidationPolicy(
    name="capacity-reservation-match",
    description="A capacity reservation or block is used by a group of exactly its instance type, in one zone "
                "(its zone, when the reservation is listed in config), never on spot.",
    validate=validate_capacity_target,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=RESERVATION_SCHEMA,
)

COMPUTE_POLICIES = [host_minimums, spot_diversification, spot_pools, capacity_target]
