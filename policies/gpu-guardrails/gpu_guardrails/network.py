"""Network: multi-node copies get EFA on every card, a cluster placement group, one zone and a security group
open to itself; nothing is reachable from the whole internet."""

from __future__ import annotations

import ipaddress

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
    EGRESS_RULE,
    INGRESS_RULE,
    LAUNCH_TEMPLATE,
    LEGACY_RULE,
    PLACEMENT_GROUP,
    SECURITY_GROUP,
    catalog_type,
    config_of,
    group_launch_template_ids,
    nodes_per_copy,
    schema,
    tags_of,
)


def validate_multi_node_efa(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != LAUNCH_TEMPLATE:
        return
    span = nodes_per_copy(tags_of(args.props))
    if span <= 1:
        return
    name = args.props.get("instanceType")
    instance = catalog_type(name)
    if instance is None:
        return
    if not instance.efa.supported:
        report_violation(f"{name} has no EFA; a model copy spanning {span} nodes needs it", args.urn)
        return
    interfaces = args.props.get("networkInterfaces") or []
    cards = {i.get("networkCardIndex", 0): i.get("interfaceType") for i in interfaces}
    missing = [card for card in range(instance.network.cards) if cards.get(card) not in ("efa", "efa-only")]
    if missing:
        shown = ", ".join(str(c) for c in missing[:8]) + (" ..." if len(missing) > 8 else "")
        report_violation(f"{name} has {instance.network.cards} network cards but {len(missing)} carry no EFA "
                         f"interface (cards {shown}); NCCL then runs at a fraction of the fabric's bandwidth",
                         args.urn)


multi_node_efa = ResourceValidationPolicy(
    name="multi-node-efa",
    description="A launch template for a model copy spanning nodes has an EFA interface on every network card.",
    validate=validate_multi_node_efa,
    enforcement_level=EnforcementLevel.MANDATORY,
)


def _self_open(group_id: str, resources) -> tuple[bool, bool]:
    """Whether the group allows all traffic in from and out to itself (inline or as rule resources)."""
    inbound = outbound = False
    for r in resources:
        props = r.props
        if r.resource_type == SECURITY_GROUP and props.get("id") == group_id:
            inbound |= any(_all(rule) and (rule.get("self") or group_id in (rule.get("securityGroups") or []))
                           for rule in props.get("ingress") or [])
            outbound |= any(_all(rule) and (rule.get("self") or group_id in (rule.get("securityGroups") or []))
                            for rule in props.get("egress") or [])
        if r.resource_type in (INGRESS_RULE, EGRESS_RULE) and props.get("securityGroupId") == group_id \
                and props.get("referencedSecurityGroupId") == group_id and str(props.get("ipProtocol")) == "-1":
            inbound |= r.resource_type == INGRESS_RULE
            outbound |= r.resource_type == EGRESS_RULE
        if r.resource_type == LEGACY_RULE and props.get("securityGroupId") == group_id and props.get("self") \
                and str(props.get("protocol")) in ("-1", "all"):
            inbound |= props.get("type") == "ingress"
            outbound |= props.get("type") == "egress"
    return inbound, outbound


def _all(rule) -> bool:
    return str(rule.get("protocol")) in ("-1", "all")


def validate_multi_node_cluster(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    by_id = {r.props.get("id"): r for r in args.resources if r.props.get("id")}
    by_name = {r.props.get("name"): r for r in args.resources if r.resource_type == PLACEMENT_GROUP}
    for group in (r for r in args.resources if r.resource_type == AUTO_SCALING_GROUP):
        span = nodes_per_copy(tags_of(group.props))
        if span <= 1:
            continue
        why = f"a model copy spans {span} nodes"
        placement = group.props.get("placementGroup")
        placement_group = by_name.get(placement) or by_id.get(placement)
        if not placement:
            report_violation(f"{group.name} has no placement group; {why} and needs a cluster placement group",
                             group.urn)
        elif placement_group is not None and placement_group.props.get("strategy") != "cluster":
            report_violation(f"{group.name} uses placement group strategy {placement_group.props.get('strategy')!r};"
                             f" {why} and needs 'cluster'", group.urn)
        subnets = group.props.get("vpcZoneIdentifiers") or []
        zones = {by_id[s].props.get("availabilityZone") for s in subnets if s in by_id}
        if len(zones) > 1:
            report_violation(f"{group.name} spans {len(subnets)} subnets in zones {', '.join(sorted(map(str, zones)))}"
                             f"; {why} and they must share one zone", group.urn)
        templates = [r for r in args.resources if r.resource_type == LAUNCH_TEMPLATE
                     and r.props.get("id") in group_launch_template_ids(group.props)]
        for template in templates:
            interfaces = template.props.get("networkInterfaces") or []
            group_ids = {g for i in interfaces for g in i.get("securityGroups") or []}
            group_ids |= set(template.props.get("vpcSecurityGroupIds") or [])
            if not group_ids:
                report_violation(f"{template.name} attaches no security group; {why} and EFA needs one open to "
                                 "itself", template.urn)
            for group_id in sorted(group_ids):
                inbound, outbound = _self_open(group_id, args.resources)
                if not (inbound and outbound):
                    missing = " and ".join(d for d, ok in (("inbound", inbound), ("outbound", outbound)) if not ok)
                    report_violation(f"security group {group_id} of {template.name} does not allow all {missing} "
                                     f"traffic with itself; EFA needs both ({why})", template.urn)


multi_node_cluster = StackValidationPolicy(
    name="multi-node-cluster",
    description="A group whose model copy spans nodes has a cluster placement group, subnets in one zone, and "
                "security groups that allow all traffic to and from themselves.",
    validate=validate_multi_node_cluster,
    enforcement_level=EnforcementLevel.MANDATORY,
)

PUBLIC_INGRESS_SCHEMA = schema(allowed_public_ports={
    "type": "array", "items": {"type": "integer"}, "default": [],
    "description": "Ports that may be open to 0.0.0.0/0 or ::/0 (e.g. 443 on a public load balancer)"})


def _is_world(cidr) -> bool:
    try:
        return cidr is not None and ipaddress.ip_network(str(cidr), strict=False).prefixlen == 0
    except ValueError:
        return False


def _covers(rule_from, rule_to, allowed: list[int]) -> bool:
    """Whether the open range is entirely made of allowed ports."""
    try:
        start, end = int(rule_from), int(rule_to)
    except (TypeError, ValueError):
        return False
    return start == end and start in allowed


def validate_no_public_ingress(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    allowed = config_of(args, PUBLIC_INGRESS_SCHEMA)["allowed_public_ports"]
    props = args.props
    rules = []
    if args.resource_type == SECURITY_GROUP:
        for rule in props.get("ingress") or []:
            for cidr in (rule.get("cidrBlocks") or []) + (rule.get("ipv6CidrBlocks") or []):
                rules.append((cidr, rule.get("fromPort"), rule.get("toPort"), rule.get("protocol")))
    elif args.resource_type == INGRESS_RULE:
        for cidr in (props.get("cidrIpv4"), props.get("cidrIpv6")):
            rules.append((cidr, props.get("fromPort"), props.get("toPort"), props.get("ipProtocol")))
    elif args.resource_type == LEGACY_RULE and props.get("type") == "ingress":
        for cidr in (props.get("cidrBlocks") or []) + (props.get("ipv6CidrBlocks") or []):
            rules.append((cidr, props.get("fromPort"), props.get("toPort"), props.get("protocol")))
    for cidr, start, end, protocol in rules:
        if _is_world(cidr) and not (str(protocol) not in ("-1", "all") and _covers(start, end, allowed)):
            ports = "all ports" if str(protocol) in ("-1", "all") else f"{protocol} {start}-{end}"
            report_violation(f"ingress from {cidr} on {ports}: GPU stacks take no traffic from the whole internet "
                             "(use SSM, an internal load balancer, or named CIDRs)", args.urn)


no_public_ingress = ResourceValidationPolicy(
    name="no-public-ingress",
    description="No security group or rule admits 0.0.0.0/0 or ::/0 (ports can be allowed in config).",
    validate=validate_no_public_ingress,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=PUBLIC_INGRESS_SCHEMA,
)

NETWORK_POLICIES = [multi_node_efa, multi_node_cluster, no_public_ingress]
