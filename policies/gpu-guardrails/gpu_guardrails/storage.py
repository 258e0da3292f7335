"""Storage: EBS is encrypted; the root volume holds images (and the weights when the instance store cannot)."""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, ReportViolation, ResourceValidationArgs, ResourceValidationPolicy

from gpu_guardrails.common import INSTANCE, LAUNCH_TEMPLATE, config_of, schema

VOLUME = "aws:ebs/volume:Volume"


def _true(value) -> bool:
    return value is True or str(value).lower() == "true"


def validate_ebs_encrypted(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    props = args.props
    if args.resource_type == VOLUME and not _true(props.get("encrypted")):
        report_violation("EBS volume is not encrypted", args.urn)
    if args.resource_type == LAUNCH_TEMPLATE:
        for mapping in props.get("blockDeviceMappings") or []:
            ebs = mapping.get("ebs")
            if ebs is not None and not _true(ebs.get("encrypted")):
                report_violation(f"{mapping.get('deviceName')} is not encrypted (ebs.encrypted must be true)",
                                 args.urn)
    if args.resource_type == INSTANCE:
        for device in [props.get("rootBlockDevice") or {}, *(props.get("ebsBlockDevices") or [])]:
            if device and not _true(device.get("encrypted")):
                report_violation(f"{device.get('deviceName', 'root volume')} is not encrypted", args.urn)


ebs_encrypted = ResourceValidationPolicy(
    name="ebs-encrypted",
    description="Every EBS volume, launch-template block device and instance volume is encrypted.",
    validate=validate_ebs_encrypted,
    enforcement_level=EnforcementLevel.MANDATORY,
)

ROOT_SCHEMA = schema(min_root_volume_gib={"type": "integer", "default": 100,
                                          "description": "Root volume floor: OS, driver, CUDA and container images"})


def validate_root_volume(args: ResourceValidationArgs, report_violation: ReportViolation) -> None:
    if args.resource_type != LAUNCH_TEMPLATE or not args.props.get("instanceType"):
        return
    minimum = config_of(args, ROOT_SCHEMA)["min_root_volume_gib"]
    sizes = [(m.get("ebs") or {}).get("volumeSize") for m in args.props.get("blockDeviceMappings") or []]
    size = max((s for s in sizes if s), default=None)
    if size is not None and size < minimum:
        report_violation(f"root volume {size} GiB < {minimum} GiB: GPU images and container layers do not fit",
                         args.urn)


root_volume = ResourceValidationPolicy(
    name="root-volume-size",
    description="A GPU launch template's root volume holds the OS, the NVIDIA stack and container images.",
    validate=validate_root_volume,
    enforcement_level=EnforcementLevel.ADVISORY,
    config_schema=ROOT_SCHEMA,
)

STORAGE_POLICIES = [ebs_encrypted, root_volume]
