"""Security: IMDSv2, no public IPs on GPU nodes, a least-privilege node role, no plain-text tokens, tags."""

from __future__ import annotations

import base64
import binascii
import json
import re

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from gpu_guardrails.common import (
    AUTO_SCALING_GROUP,
    INSTANCE,
    LAUNCH_TEMPLATE,
    SUBNET,
    config_of,
    schema,
    tags_of,
    walk_strings,
)


def validate_imdsv2(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type not in (LAUNCH_TEMPLATE, INSTANCE):
        return
    options = args.props.get("metadataOptions") or {}
    if options.get("httpEndpoint") == "disabled":
        return
    if options.get("httpTokens") != "required":
        report_violation(f"instance metadata allows IMDSv1 (httpTokens={options.get('httpTokens', 'optional')!r}); "
                         "set metadataOptions.httpTokens to 'required'", args.urn)


imdsv2_required = ResourceValidationPolicy(
    name="imdsv2-required",
    description="Launch templates and instances require IMDSv2 session tokens.",
    validate=validate_imdsv2,
    enforcement_level=EnforcementLevel.MANDATORY,
)


def _true(value) -> bool:
    return value is True or str(value).lower() == "true"


def validate_no_public_ip(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props = args.props
    if args.resource_type == LAUNCH_TEMPLATE:
        for interface in props.get("networkInterfaces") or []:
            if _true(interface.get("associatePublicIpAddress")):
                report_violation(f"network card {interface.get('networkCardIndex', 0)} gets a public IP", args.urn)
    if args.resource_type == INSTANCE and _true(props.get("associatePublicIpAddress")):
        report_violation("the instance gets a public IP", args.urn)
    if args.resource_type == SUBNET and tags_of(props).get("gpuinfra:role") == "nodes" \
            and _true(props.get("mapPublicIpOnLaunch")):
        report_violation("a GPU node subnet maps public IPs on launch", args.urn)


no_public_ip = ResourceValidationPolicy(
    name="no-public-ip-on-gpu-nodes",
    description="GPU nodes never get a public IP (launch templates, instances, node subnets).",
    validate=validate_no_public_ip,
    enforcement_level=EnforcementLevel.MANDATORY,
)

ROLE_POLICY_TYPES = ("aws:iam/rolePolicy:RolePolicy", "aws:iam/policy:Policy")
ATTACHMENT_TYPES = ("aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                    "aws:iam/policyAttachment:PolicyAttachment")
ROLE_SCHEMA = schema(forbidden_managed_policies={
    "type": "array", "items": {"type": "string"},
    "default": ["AdministratorAccess", "PowerUserAccess", "IAMFullAccess", "AmazonS3FullAccess",
                "AmazonEC2FullAccess"],
    "description": "AWS managed policies a node role may not carry"})


def _statements(document) -> list[dict]:
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except json.JSONDecodeError:
            return []
    statements = (document or {}).get("Statement") or []
    return [statements] if isinstance(statements, dict) else list(statements)


def validate_node_role(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    config = config_of(args, ROLE_SCHEMA)
    if args.resource_type in ROLE_POLICY_TYPES:
        for statement in _statements(args.props.get("policy")):
            if statement.get("Effect", "Allow") != "Allow":
                continue
            actions = statement.get("Action") or []
            actions = [actions] if isinstance(actions, str) else actions
            wild = [a for a in actions if a == "*" or a.endswith(":*")]
            if wild:
                report_violation(f"allows wildcard actions {', '.join(wild)}; name the actions the node needs",
                                 args.urn)
            if statement.get("NotAction"):
                report_violation("uses NotAction with Allow, which grants everything else", args.urn)
    if args.resource_type in ATTACHMENT_TYPES:
        arn = str(args.props.get("policyArn") or "")
        name = arn.rsplit("/", 1)[-1]
        if name in config["forbidden_managed_policies"]:
            report_violation(f"attaches {name}; GPU nodes get SSM core and read-only weights access only", args.urn)


node_role = ResourceValidationPolicy(
    name="node-role-least-privilege",
    description="Role policies allow no '*' or 'service:*' actions and no NotAction; no admin-class managed "
                "policies are attached.",
    validate=validate_node_role,
    enforcement_level=EnforcementLevel.MANDATORY,
    config_schema=ROLE_SCHEMA,
)

HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
SECRET_STORES = ("aws:secretsmanager/secretVersion:SecretVersion",)
SSM_PARAMETER = "aws:ssm/parameter:Parameter"


def _decoded(text: str) -> str:
    try:
        return base64.b64decode(text, validate=True).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return text


def validate_secrets(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props = args.props
    if args.resource_type in SECRET_STORES:
        return
    if args.resource_type == SSM_PARAMETER:
        if props.get("type") != "SecureString" and (HF_TOKEN.search(str(props.get("value") or ""))
                                                    or re.search(r"token|secret|password", str(props.get("name")),
                                                                 re.I)):
            report_violation("a token is stored in an SSM parameter that is not a SecureString", args.urn)
        return
    for path, text in walk_strings(props):
        candidates = [text, _decoded(text)] if path.lower().endswith("userdata") else [text]
        if any(HF_TOKEN.search(c) for c in candidates):
            report_violation(f"a Hugging Face token sits in plain text in {path}; keep it a Pulumi secret "
                             "(`pulumi config set --secret`) in Secrets Manager or a SecureString parameter, "
                             "never in user data or tags", args.urn)


secrets_protected = ResourceValidationPolicy(
    name="secrets-not-in-plain-text",
    description="Hugging Face tokens appear only in Secrets Manager or SecureString parameters (from Pulumi "
                "secrets), never in user data, tags or other inputs.",
    validate=validate_secrets,
    enforcement_level=EnforcementLevel.MANDATORY,
)

TAGS_SCHEMA = schema(required_tags={"type": "array", "items": {"type": "string"},
                                    "default": ["owner", "cost-center", "ttl"],
                                    "description": "Tags every taggable resource carries"})


def validate_required_tags(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if "tags" not in args.props and args.resource_type not in (LAUNCH_TEMPLATE, AUTO_SCALING_GROUP):
        return
    if not args.resource_type.startswith("aws:"):
        return
    missing = [t for t in config_of(args, TAGS_SCHEMA)["required_tags"] if t not in tags_of(args.props)]
    if missing:
        report_violation(f"missing tags: {', '.join(missing)}", args.urn)


required_tags = ResourceValidationPolicy(
    name="required-tags",
    description="Taggable resources carry the organisation's tags (owner, cost-center, ttl by default).",
    validate=validate_required_tags,
    enforcement_level=EnforcementLevel.ADVISORY,
    config_schema=TAGS_SCHEMA,
)

SECURITY_POLICIES = [imdsv2_required, no_public_ip, node_role, secrets_protected, required_tags]
