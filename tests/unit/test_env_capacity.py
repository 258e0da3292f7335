"""Capacity checks before `env up`: EC2 instance type offerings and running instances against moto; the vCPU
quota (Service Quotas) and capacity reservations/blocks (DescribeCapacityReservations), which moto does not
implement, against STAND-IN clients: botocore's Stubber, which checks every request and answer against the
real API model. Then the CLI refusing, with nothing created."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import boto3
import pytest
import yaml
from botocore.stub import Stubber
from gpuinfra.cli import main
from gpuinfra.environments.capacity import AwsCapacityApi, check_capacity, quota_class
from gpuinfra.plan import resolve_stack
from moto import mock_aws

# moto's EC2 backend takes seconds per test: `make test` runs these, `make test-fast` does not.
pytestmark = pytest.mark.slow

NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)
RESERVATION = "cr-0123456789abcdef0"


class StandinSession:
    """STAND-IN for a boto3 session: EC2 from moto, except DescribeCapacityReservations; Service Quotas from a
    Stubber. Both stubs are validated against botocore's service models."""

    def __init__(self, moto_session: boto3.session.Session) -> None:
        self.moto = moto_session
        self.quotas = boto3.client("service-quotas", region_name="us-east-1", aws_access_key_id="x",
                                   aws_secret_access_key="x")
        self.reservations = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x",
                                         aws_secret_access_key="x")
        self.quota_stub, self.reservation_stub = Stubber(self.quotas), Stubber(self.reservations)
        self.quota_stub.activate()
        self.reservation_stub.activate()

    def quota(self, code: str, value: float) -> None:
        self.quota_stub.add_response("get_service_quota", {"Quota": {"QuotaCode": code, "Value": value}},
                                     {"ServiceCode": "ec2", "QuotaCode": code})

    def reservation(self, **item) -> None:
        self.reservation_stub.add_response("describe_capacity_reservations", {"CapacityReservations": [item]},
                                           {"CapacityReservationIds": [item["CapacityReservationId"]]})

    def client(self, service: str, region_name: str):
        if service == "service-quotas":
            return self.quotas
        real = self.moto.client(service, region_name=region_name)
        if service != "ec2":
            return real
        stubbed = self.reservations

        class Ec2:
            def __getattr__(self, name):
                return getattr(stubbed if name == "describe_capacity_reservations" else real, name)

        return Ec2()


@pytest.fixture
def aws():
    with mock_aws():
        yield StandinSession(boto3.session.Session(region_name="us-east-1"))


def findings(cluster, session, expires_at=NOW + timedelta(hours=8)):
    return {(f.check, f.ok): f.message for f in check_capacity(cluster, AwsCapacityApi(session), expires_at)}


def run_instance(session, instance_type: str, count: int = 1) -> None:
    ec2 = session.moto.client("ec2", region_name="us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ec2.run_instances(ImageId=image, MinCount=count, MaxCount=count, InstanceType=instance_type)


def test_the_type_must_be_offered_in_the_zone(aws):
    aws.quota("L-DB2E81BA", 64)
    found = findings(resolve_stack("dev-7b", sets=["availability_zone=us-east-1e"]), aws)
    assert found[("offering", False)] == ("g6.2xlarge is not offered in us-east-1e (offered in us-east-1a, "
                                          "us-east-1b, us-east-1c, us-east-1d, us-east-1f)")
    aws.quota("L-DB2E81BA", 64)
    assert findings(resolve_stack("dev-7b", sets=["availability_zone=us-east-1a"]), aws)[("offering", True)] == \
        "g6.2xlarge is offered in us-east-1a"


def test_without_a_zone_any_offering_zone_of_the_region_will_do(aws):
    aws.quota("L-DB2E81BA", 64)
    message = findings(resolve_stack("dev-7b"), aws)[("offering", True)]
    assert message.startswith("g6.2xlarge is offered in us-east-1a, us-east-1b")


def test_the_quota_must_cover_the_pool_on_top_of_what_already_runs(aws):
    cluster = resolve_stack("dev-7b")  # 1 x g6.2xlarge: 8 vCPUs of the G and VT On-Demand quota
    aws.quota("L-DB2E81BA", 16)
    assert ("quota", True) in findings(cluster, aws)
    run_instance(aws, "g6.4xlarge")  # 16 vCPUs already running in the class
    run_instance(aws, "m5.large")  # another class: does not count
    aws.quota("L-DB2E81BA", 16)
    assert findings(cluster, aws)[("quota", False)] == (
        "1 x g6.2xlarge need 8 vCPUs; 16 of the On-Demand G quota of 16 (L-DB2E81BA) already run in us-east-1: "
        "8 vCPUs short")


def test_spot_uses_the_spot_quota(aws):
    cluster = resolve_stack("spot-32b")
    largest = max(cluster.instance_types, key=lambda i: i.vcpus)
    aws.quota("L-3819A6DF", largest.vcpus * cluster.config.nodes)
    assert ("quota", True) in findings(cluster, aws)


def reserved(kind: str = "capacity-reservation"):
    return resolve_stack("dev-7b", sets=[f"capacity.type={kind}", f"capacity.reservation_id={RESERVATION}",
                                         "availability_zone=us-east-1a"])


def good_reservation(**changes):
    return {"CapacityReservationId": RESERVATION, "InstanceType": "g6.2xlarge", "AvailabilityZone": "us-east-1a",
            "State": "active", "AvailableInstanceCount": 2, "TotalInstanceCount": 2, "ReservationType": "default",
            "EndDate": NOW + timedelta(days=30)} | changes


@pytest.mark.parametrize("kind, changes, expected", [
    ("capacity-reservation", {}, None),
    ("capacity-reservation", {"State": "expired"}, "is expired, not active"),
    ("capacity-reservation", {"InstanceType": "g6.4xlarge"}, "is for g6.4xlarge, the stack launches g6.2xlarge"),
    ("capacity-reservation", {"AvailabilityZone": "us-east-1b"}, "is in us-east-1b, the stack uses us-east-1a"),
    ("capacity-reservation", {"AvailableInstanceCount": 0}, "has 0 instance(s) free, the pool needs 1"),
    ("capacity-block", {"ReservationType": "capacity-block", "EndDate": NOW + timedelta(hours=4)},
     "ends at 2026-06-01T16:00:00Z, before the environment expires (2026-06-01T20:00:00Z): shorten --ttl"),
    ("capacity-block", {}, "is an On-Demand capacity reservation; the stack's capacity.type says capacity block"),
])
def test_a_named_reservation_or_block_must_be_active_and_match(aws, kind, changes, expected):
    aws.quota("L-DB2E81BA", 64)
    aws.reservation(**good_reservation(**changes))
    found = findings(reserved(kind), aws)
    if expected is None:
        assert found[("reservation", True)].startswith(f"capacity reservation {RESERVATION} is active: 2 x g6.2xlarge")
    else:
        assert expected in found[("reservation", False)]


def test_a_capacity_block_skips_the_quota_and_a_missing_reservation_is_refused(aws):
    aws.reservation_stub.add_client_error("describe_capacity_reservations",
                                          service_error_code="InvalidCapacityReservationId.NotFound")
    found = findings(reserved("capacity-block"), aws)
    assert found[("reservation", False)] == f"capacity block {RESERVATION} does not exist in us-east-1"
    assert found[("quota", True)].startswith("capacity block: bought capacity")


def test_a_check_that_cannot_get_an_answer_refuses(aws):
    aws.quota_stub.add_client_error("get_service_quota", service_error_code="AccessDeniedException")
    found = findings(resolve_stack("dev-7b"), aws)
    assert "could not be checked (AccessDeniedException" in found[("quota", False)]


def test_quota_classes():
    assert [quota_class(t) for t in ("p5.48xlarge", "g6e.xlarge", "vt1.3xlarge", "m5.large", "inf2.xlarge",
                                     "trn1.2xlarge", "dl1.24xlarge", "x2idn.16xlarge")] == [
        "P", "G", "G", "Standard", "INF", "TRN", "DL", "X"]


def test_env_up_is_refused_by_aws_capacity_before_anything_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GPUINFRA_HOME", str(tmp_path / "home"))
    with mock_aws():
        rc = main(["env", "up", "dev-7b", "--name", "t", "--ttl", "1h", "--engine", "standin", "--cloud", "aws",
                   "--backend", f"file://{tmp_path / 'state'}", "--set", "availability_zone=us-east-1e"],
                  out=io.StringIO())
    err = capsys.readouterr().err
    assert rc == 1
    assert "error: capacity.offering: g6.2xlarge is not offered in us-east-1e" in err
    assert "error: capacity.quota: could not be checked" in err  # moto has no EC2 quotas: refused, not guessed
    assert not (tmp_path / "state").exists()


def test_env_up_is_refused_by_the_standin_clouds_quota(tmp_path, monkeypatch, capsys):
    state = tmp_path / "state"
    (state / ".gpuinfra/standin-cloud").mkdir(parents=True)
    (state / ".gpuinfra/standin-cloud/capacity.yaml").write_text(yaml.safe_dump({"quotas": {"L-DB2E81BA": 4}}))
    monkeypatch.setenv("GPUINFRA_HOME", str(tmp_path / "home"))
    rc = main(["env", "up", "dev-7b", "--name", "t", "--engine", "standin", "--backend", f"file://{state}"],
              out=io.StringIO())
    assert rc == 1 and "error: capacity.quota: 1 x g6.2xlarge need 8 vCPUs" in capsys.readouterr().err
    assert sorted(p.name for p in state.rglob("*") if p.is_file()) == ["capacity.yaml"]
    rc = main(["env", "up", "dev-7b", "--name", "t", "--engine", "standin", "--backend", f"file://{state}",
               "--skip-capacity-checks"], out=io.StringIO())
    assert rc == 0


def test_extend_retags_the_running_instances(aws):
    from gpuinfra.environments.cloud import AwsCloud

    ec2 = aws.moto.client("ec2", region_name="us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"Key": "gpuinfra:stack", "Value": "t"}, {"Key": "gpuinfra:environment-id", "Value": "0123456789ab"}]
    mine = ec2.run_instances(ImageId=image, MinCount=2, MaxCount=2, InstanceType="g6.2xlarge",
                             TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])["Instances"]
    other = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1, InstanceType="g6.2xlarge")["Instances"]
    count = AwsCloud(aws.moto).retag("us-east-1", "t", "0123456789ab", {"gpuinfra:expires-at": "2026-06-02T00:00:00Z"})
    assert count == 2
    described = ec2.describe_instances(InstanceIds=[i["InstanceId"] for i in mine + other])["Reservations"]
    expiry = {i["InstanceId"]: {t["Key"]: t["Value"] for t in i.get("Tags", [])}.get("gpuinfra:expires-at")
              for r in described for i in r["Instances"]}
    assert sorted(expiry.values(), key=str) == ["2026-06-02T00:00:00Z", "2026-06-02T00:00:00Z", None]
