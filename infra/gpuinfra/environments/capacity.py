"""Capacity checks before `env up` creates anything: is the instance type offered where the pool goes, does
the account's vCPU quota for its family cover the pool (on top of what already runs), and is a named
capacity reservation or block active, of the right type and zone, large enough and long enough.

The checks are pure functions over `CapacityApi`; `AwsCapacityApi` answers them with boto3 (EC2
DescribeInstanceTypeOfferings / DescribeInstances / DescribeInstanceTypes / DescribeCapacityReservations and
Service Quotas GetServiceQuota); cloud.StandinCloud answers them from a document for the stand-in engine.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, Protocol

from gpuinfra.catalog import find_instance_type
from gpuinfra.config import CapacityBlock, CapacityReservation, ResolvedCluster, Spot
from gpuinfra.environments.models import Model, utc_text

# Service Quotas codes of the EC2 vCPU quotas, by instance class (EC2 User Guide, "On-Demand Instance
# quotas" / "Spot Instance quotas"). Classes the catalog does not launch are not listed: their check says so.
QUOTA_CODES: dict[tuple[str, bool], str] = {
    ("P", False): "L-417A185B",  # Running On-Demand P instances
    ("G", False): "L-DB2E81BA",  # Running On-Demand G and VT instances
    ("Standard", False): "L-1216C47A",  # Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances
    ("P", True): "L-7212CCBC",  # All P Spot Instance Requests
    ("G", True): "L-3819A6DF",  # All G and VT Spot Instance Requests
    ("Standard", True): "L-34B43A08",  # All Standard (A, C, D, H, I, M, R, T, Z) Spot Instance Requests
}
STANDARD_LETTERS = set("acdhimrtz")


class CapacityFinding(Model):
    """One capacity check's answer."""

    check: Literal["offering", "quota", "reservation"]
    ok: bool
    message: str


class CapacityApi(Protocol):
    def offered_zones(self, region: str, instance_type: str) -> list[str]: ...
    def vcpu_quota(self, region: str, quota_code: str) -> float: ...
    def running_vcpus(self, region: str, quota_class: str, spot: bool) -> int: ...
    def capacity_reservation(self, region: str, reservation_id: str) -> dict[str, Any] | None: ...


def quota_class(instance_type: str) -> str:
    """The vCPU quota class of a type: P, G (G and VT), Standard (A C D H I M R T Z), or its own (INF, DL...)."""
    family = instance_type.split(".")[0].lower()
    for prefix in ("inf", "trn", "dl", "vt"):
        if family.startswith(prefix):
            return "G" if prefix == "vt" else prefix.upper()
    if family[0] in "pg":
        return family[0].upper()
    return "Standard" if family[0] in STANDARD_LETTERS else family[0].upper()


def check_offering(cluster: ResolvedCluster, api: CapacityApi) -> list[CapacityFinding]:
    config = cluster.config
    findings = []
    for instance in cluster.instance_types:
        zones = sorted(api.offered_zones(config.region, instance.name))
        where = config.availability_zone
        if where:
            ok = where in zones
            text = f"{instance.name} is {'' if ok else 'not '}offered in {where}"
        else:
            ok = bool(zones)
            text = f"{instance.name} is offered in {', '.join(zones) if zones else 'no zone of ' + config.region}"
        findings.append(CapacityFinding(check="offering", ok=ok, message=text + (
            "" if ok or not zones else f" (offered in {', '.join(zones)})")))
    return findings


def check_quota(cluster: ResolvedCluster, api: CapacityApi) -> list[CapacityFinding]:
    """The pool at its largest launchable type, plus what already runs in the class, within the quota."""
    config = cluster.config
    if isinstance(config.capacity, CapacityBlock):
        return [CapacityFinding(check="quota", ok=True, message="capacity block: bought capacity, the vCPU quota "
                                                                "is not checked")]
    spot = isinstance(config.capacity, Spot)
    largest = max(cluster.instance_types, key=lambda i: i.vcpus)
    klass = quota_class(largest.name)
    code = QUOTA_CODES.get((klass, spot))
    if code is None:
        return [CapacityFinding(check="quota", ok=False, message=f"no known vCPU quota for class {klass} "
                                                                 f"({largest.name}); use --skip-capacity-checks")]
    needed = largest.vcpus * config.nodes
    quota = api.vcpu_quota(config.region, code)
    running = api.running_vcpus(config.region, klass, spot)
    kind = "Spot" if spot else "On-Demand"
    ok = running + needed <= quota
    return [CapacityFinding(check="quota", ok=ok, message=(
        f"{config.nodes} x {largest.name} need {needed} vCPUs; {running} of the {kind} {klass} quota of "
        f"{quota:g} ({code}) already run in {config.region}" + ("" if ok else f": {running + needed - quota:g} "
                                                                              "vCPUs short")))]


def check_reservation(cluster: ResolvedCluster, api: CapacityApi, expires_at: datetime) -> list[CapacityFinding]:
    capacity = cluster.config.capacity
    if not isinstance(capacity, CapacityReservation | CapacityBlock):
        return []
    config = cluster.config
    what = "capacity block" if isinstance(capacity, CapacityBlock) else "capacity reservation"
    found = api.capacity_reservation(config.region, capacity.reservation_id)
    if found is None:
        return [CapacityFinding(check="reservation", ok=False,
                                message=f"{what} {capacity.reservation_id} does not exist in {config.region}")]
    problems = reservation_problems(found, what, cluster, expires_at)
    message = "; ".join(problems) if problems else (
        f"{what} {capacity.reservation_id} is active: {found.get('AvailableInstanceCount')} x "
        f"{found.get('InstanceType')} free in {found.get('AvailabilityZone')}")
    return [CapacityFinding(check="reservation", ok=not problems, message=message)]


def reservation_problems(found: dict[str, Any], what: str, cluster: ResolvedCluster,
                         expires_at: datetime) -> list[str]:
    config = cluster.config
    name = f"{what} {found.get('CapacityReservationId')}"
    wanted_type = cluster.instance_types[0].name
    problems = []
    if found.get("State") != "active":
        problems.append(f"{name} is {found.get('State')}, not active")
    if found.get("InstanceType") != wanted_type:
        problems.append(f"{name} is for {found.get('InstanceType')}, the stack launches {wanted_type}")
    if found.get("AvailabilityZone") != config.availability_zone:
        problems.append(f"{name} is in {found.get('AvailabilityZone')}, the stack uses {config.availability_zone}")
    if int(found.get("AvailableInstanceCount") or 0) < config.nodes:
        problems.append(f"{name} has {found.get('AvailableInstanceCount')} instance(s) free, the pool needs "
                        f"{config.nodes}")
    is_block = found.get("ReservationType") == "capacity-block"
    if is_block != (what == "capacity block"):
        problems.append(f"{name} is {'a capacity block' if is_block else 'an On-Demand capacity reservation'}; "
                        f"the stack's capacity.type says {what}")
    end = found.get("EndDate")
    if isinstance(end, datetime) and end < expires_at:
        problems.append(f"{name} ends at {utc_text(end)}, before the environment expires ({utc_text(expires_at)}): "
                        "shorten --ttl")
    return problems


def check_capacity(cluster: ResolvedCluster, api: CapacityApi, expires_at: datetime) -> list[CapacityFinding]:
    """Every check; one that cannot get an answer (no access, API error) is a failed finding, not a pass."""
    checks = (("offering", lambda: check_offering(cluster, api)), ("quota", lambda: check_quota(cluster, api)),
              ("reservation", lambda: check_reservation(cluster, api, expires_at)))
    findings: list[CapacityFinding] = []
    for name, check in checks:
        try:
            findings.extend(check())
        except Exception as exc:  # botocore's errors and the network's: refuse rather than launch blind
            why = f"{type(exc).__name__}: {str(exc)[:200]}"
            findings.append(CapacityFinding(check=name, ok=False, message=f"could not be checked ({why}); fix access "
                                                                          "or use --skip-capacity-checks"))
    return findings


class AwsCapacityApi:
    """The checks' questions, asked of AWS with boto3 (credentials from the usual chain)."""

    def __init__(self, session=None) -> None:
        import boto3

        self.session = session or boto3.session.Session()

    def _client(self, service: str, region: str):
        return self.session.client(service, region_name=region)

    def offered_zones(self, region: str, instance_type: str) -> list[str]:
        pages = self._client("ec2", region).get_paginator("describe_instance_type_offerings").paginate(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [instance_type]}])
        return sorted({o["Location"] for page in pages for o in page["InstanceTypeOfferings"]})

    def vcpu_quota(self, region: str, quota_code: str) -> float:
        quota = self._client("service-quotas", region).get_service_quota(ServiceCode="ec2", QuotaCode=quota_code)
        return float(quota["Quota"]["Value"])

    def running_vcpus(self, region: str, quota_class_name: str, spot: bool) -> int:
        ec2 = self._client("ec2", region)
        pages = ec2.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-state-name", "Values": ["pending", "running"]}])
        counts: dict[str, int] = {}
        for page in pages:
            for reservation in page["Reservations"]:
                for instance in reservation["Instances"]:
                    is_spot = instance.get("InstanceLifecycle") == "spot"
                    if quota_class(instance["InstanceType"]) == quota_class_name and is_spot == spot:
                        counts[instance["InstanceType"]] = counts.get(instance["InstanceType"], 0) + 1
        return sum(self._vcpus(ec2, name) * count for name, count in counts.items())

    @staticmethod
    def _vcpus(ec2, instance_type: str) -> int:
        try:
            return find_instance_type(instance_type).vcpus
        except Exception:  # a type outside the catalog: ask EC2
            info = ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"][0]
            return int(info["VCpuInfo"]["DefaultVCpus"])

    def capacity_reservation(self, region: str, reservation_id: str) -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        try:
            found = self._client("ec2", region).describe_capacity_reservations(
                CapacityReservationIds=[reservation_id])["CapacityReservations"]
        except ClientError as exc:
            if "NotFound" in exc.response["Error"]["Code"]:
                return None
            raise
        return found[0] if found else None
