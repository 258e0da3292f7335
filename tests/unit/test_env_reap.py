"""`gpuinfra env reap` with the STAND-IN engine and the stand-in clock: what is expired goes, what is protected
or being updated stays (and is retried), a destroy that would touch what the environment did not create is
refused, a destroy that leaves resources keeps the stack, and orphans are reported, from the stand-in cloud's
ledger and from AWS's tagging API (moto)."""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from gpuinfra.cli import main
from gpuinfra.environments.backend import Backend, FileStore
from gpuinfra.environments.cloud import AwsCloud, TaggedResource, find_orphans
from gpuinfra.environments.models import Lifecycle, StateResource
from gpuinfra.environments.reap import unowned, why_reap
from moto import mock_aws


@pytest.fixture
def env(tmp_path, monkeypatch):
    state = tmp_path / "state"
    monkeypatch.setenv("GPUINFRA_BACKEND", f"file://{state}")
    monkeypatch.setenv("GPUINFRA_ENGINE", "standin")
    monkeypatch.setenv("GPUINFRA_HOME", str(tmp_path / "home"))

    def run(*argv: str) -> tuple[int, str]:
        out = io.StringIO()
        return main(["env", *argv], out=out), out.getvalue()

    run.state = state
    run.backend = Backend(FileStore(state, f"file://{state}"))
    return run


def names(env) -> list[str]:
    return [row["name"] for row in json.loads(env("ls", "--json")[1])]


def snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_reap_removes_the_expired_and_leaves_protected_and_updating_ones(env):
    for name, extra in (("t", []), ("p", ["--protect"]), ("u", []), ("fresh", ["--ttl", "8h"])):
        assert env("up", "dev-7b", "--name", name, "--ttl", "2h", *extra)[0] == 0
    env("clock", "--advance", "3h")
    with env.backend.lock("u"):  # an `up` of u is running somewhere
        rc, out = env("reap", "--yes")
    assert rc == 0, out
    lines = out.strip().splitlines()
    assert re.match(r"reap keep fresh: expires in (5h|4h59m), \$2\.94 spent", lines[0]), lines[0]
    assert lines[1].startswith("reap skip p: expired 1h ago") and "protected" in lines[1]
    assert lines[2].startswith("reap destroy t: expired 1h ago") and "0 remain, stack removed" in lines[2]
    assert lines[3].startswith("reap skip u: expired 1h ago") and "an update is in progress (" in lines[3]
    assert lines[4].startswith("reap skip u:") and "still in progress: the next run retries" in lines[4]
    assert len(lines) == 5  # one line per decision, no orphans
    assert names(env) == ["fresh", "p", "u"]
    rc, out = env("reap", "--yes")  # the next run (the timer): u's update is over
    assert rc == 0 and "reap destroy u: expired" in out
    assert names(env) == ["fresh", "p"]


def test_reap_without_yes_is_a_dry_run_that_changes_nothing(env):
    env("up", "dev-7b", "--name", "t", "--ttl", "1h")
    env("clock", "--advance", "2h")
    before = snapshot(env.state)
    rc, out = env("reap")
    assert rc == 0 and out.startswith("reap would-destroy t: expired 1h ago") and "(dry run: --yes destroys)" in out
    assert snapshot(env.state) == before


def test_reap_json_lists_the_decisions(env):
    env("up", "dev-7b", "--name", "t", "--ttl", "1h")
    rc, out = env("reap", "--json")
    (decision,) = json.loads(out)
    assert rc == 0 and decision["environment"] == "t" and decision["action"] == "keep"
    assert set(decision) == {"environment", "action", "reason", "resources"}


def add_state_resource(env, stack: str, resource: dict) -> None:
    key = env.backend.checkpoint_key(stack)
    document = env.backend.read_json(key)
    document["checkpoint"]["latest"]["resources"].append(resource)
    env.backend.write_json(key, document)


@pytest.mark.parametrize("resource, why", [
    ({"urn": "urn:pulumi:t::gpuinfra::aws:ec2/vpc:Vpc::shared", "type": "aws:ec2/vpc:Vpc", "custom": True,
      "id": "vpc-1", "inputs": {"tags": {"gpuinfra:stack": "other"}}}, "is tagged gpuinfra:stack=other"),
    ({"urn": "urn:pulumi:t::gpuinfra::aws:s3/bucket:Bucket::weights", "type": "aws:s3/bucket:Bucket", "custom": True,
      "id": "weights", "importID": "weights", "inputs": {}}, "was imported (weights)"),
    ({"urn": "urn:pulumi:t::gpuinfra::aws:ec2/vpc:Vpc::existing", "type": "aws:ec2/vpc:Vpc", "custom": True,
      "id": "vpc-2", "external": True, "inputs": {}}, "was read with .get()"),
    ({"urn": "urn:pulumi:t::gpuinfra::aws:ec2/eip:Eip::kept", "type": "aws:ec2/eip:Eip", "custom": True,
      "id": "eip-1", "protect": True, "inputs": {}}, "is protected"),
    ({"urn": "urn:pulumi:t::gpuinfra::aws:ec2/subnet:Subnet::bare", "type": "aws:ec2/subnet:Subnet",
      "custom": True, "id": "subnet-1", "inputs": {"tags": {}}}, "has no gpuinfra:stack tag"),
])
def test_a_destroy_that_would_delete_what_the_environment_did_not_create_is_refused(env, resource, why):
    env("up", "dev-7b", "--name", "t", "--ttl", "1h")
    add_state_resource(env, "t", resource)
    env("clock", "--advance", "2h")
    rc, out = env("reap", "--yes")
    assert rc == 1
    assert out.startswith("reap refuse t: expired 1h ago (at ")
    assert f"; the destroy would delete 1 resource(s) the environment did not create: {resource['urn']} {why}" in out
    assert names(env) == ["t"] and len(env.backend.read_json(env.backend.checkpoint_key("t"))["checkpoint"]["latest"][
        "resources"]) > 20  # nothing was destroyed


def test_a_destroy_that_leaves_resources_keeps_the_stack(env, monkeypatch):
    from gpuinfra.environments.standin import StandinEngine

    real_destroy = StandinEngine.destroy

    def destroy_leaving_one(self, stack, on_progress):  # a delete the cloud refused (e.g. an ENI still in use)
        survivor = self.resources(stack)[-1].model_dump(by_alias=True)
        real_destroy(self, stack, on_progress)
        self._write_checkpoint(stack, [survivor])

    env("up", "dev-7b", "--name", "t", "--ttl", "1h")
    env("clock", "--advance", "2h")
    with monkeypatch.context() as patch:
        patch.setattr(StandinEngine, "destroy", destroy_leaving_one)
        rc, out = env("reap", "--yes")
    assert rc == 1 and out.startswith("reap failed t: expired 1h ago (at ")
    assert "; 1 resource(s) remain after the destroy, so the stack is kept for the next run" in out
    assert names(env) == ["t"]
    rc, out = env("reap", "--yes")
    assert rc == 0 and "reap destroy t" in out and names(env) == []


def test_orphans_of_a_stack_removed_by_hand_are_reported(env):
    env("up", "dev-7b", "--name", "gone", "--ttl", "1h")
    env("up", "dev-7b", "--name", "kept", "--ttl", "1h")
    for key in (env.backend.checkpoint_key("gone"), env.backend.tags_key("gone"), env.backend.settings_key("gone")):
        env.backend.store.delete(key)  # `pulumi stack rm --force`: the state is gone, the resources are not
    rc, out = env("reap")
    orphans = [line for line in out.splitlines() if line.startswith("reap orphan -:")]
    assert rc == 0 and len(orphans) > 10
    assert all("tagged gpuinfra:stack=gone, and there is no such stack in the backend" in line for line in orphans)
    assert "reap keep kept" in out and "stack=kept" not in out


def test_find_orphans_also_catches_a_name_reused_by_another_environment():
    tagged = [TaggedResource(arn="arn:aws:ec2:us-east-1:1:instance/i-old", region="us-east-1",
                             tags={"gpuinfra:stack": "t", "gpuinfra:environment-id": "aaaaaaaaaaaa"}),
              TaggedResource(arn="arn:aws:ec2:us-east-1:1:instance/i-new", region="us-east-1",
                             tags={"gpuinfra:stack": "t", "gpuinfra:environment-id": "bbbbbbbbbbbb"}),
              TaggedResource(arn="arn:aws:ec2:us-east-1:1:vpc/vpc-plain", region="us-east-1",
                             tags={"gpuinfra:stack": "prod-70b"})]
    found = find_orphans(tagged, {"t": "bbbbbbbbbbbb", "prod-70b": None})
    assert [d.resources for d in found] == [["arn:aws:ec2:us-east-1:1:instance/i-old"]]
    assert "of environment aaaaaaaaaaaa, but the stack t is environment bbbbbbbbbbbb" in found[0].reason


def test_aws_orphans_come_from_the_tagging_api():
    with mock_aws():
        ec2 = boto3.client("ec2", region_name="us-east-1")
        tag = [{"ResourceType": "vpc", "Tags": [{"Key": "gpuinfra:stack", "Value": "gone"}]}]
        ec2.create_vpc(CidrBlock="10.0.0.0/16", TagSpecifications=tag)
        ec2.create_vpc(CidrBlock="10.1.0.0/16", TagSpecifications=[{"ResourceType": "vpc", "Tags": [
            {"Key": "gpuinfra:stack", "Value": "live"}]}])
        ec2.create_vpc(CidrBlock="10.2.0.0/16")  # not ours
        found = AwsCloud(boto3.session.Session(region_name="us-east-1")).tagged_resources(["us-east-1"])
    assert sorted(r.tags["gpuinfra:stack"] for r in found) == ["gone", "live"]
    (orphan,) = find_orphans(found, {"live": None})
    assert ":vpc/vpc-" in orphan.resources[0] and "gpuinfra:stack=gone" in orphan.reason


def lifecycle(**changes) -> Lifecycle:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    values = {"environment_id": "0123456789ab", "template": "dev-7b", "owner": "ops", "created_at": start,
              "expires_at": start + timedelta(hours=8), "hourly_usd": 10.0, "budget_usd": 50.0} | changes
    return Lifecycle(**values)


def test_why_reap_order_expired_then_over_budget_then_idle():
    from gpuinfra.environments.idle import Activity

    start = datetime(2026, 1, 1, tzinfo=UTC)
    idle = Activity(idle=True, reason="no request served or running for 30m")
    assert why_reap(lifecycle(), start + timedelta(hours=9), idle).startswith("expired 1h ago")
    # a price raised after creation (tags edited): the budget still stops it before the expiry
    assert why_reap(lifecycle(), start + timedelta(hours=5), idle) == "over budget: $50.00 spent of $50.00"
    assert why_reap(lifecycle(idle_after_s=1800), start + timedelta(hours=1), idle).startswith("idle: no request")
    assert why_reap(lifecycle(), start + timedelta(hours=1), Activity(idle=False, reason="busy")) is None


def test_unowned_checks_the_environment_id_too():
    state = [StateResource(urn="urn:pulumi:t::gpuinfra::aws:ec2/vpc:Vpc::v", type="aws:ec2/vpc:Vpc", custom=True,
                           inputs={"tags": {"gpuinfra:stack": "t", "gpuinfra:environment-id": "ffffffffffff"}})]
    (found,) = unowned("t", lifecycle(), [state[0].urn], state)
    assert "belongs to environment ffffffffffff, not 0123456789ab" in found
    assert unowned("t", lifecycle(), ["urn:pulumi:t::gpuinfra::x::missing"], state) == [
        "urn:pulumi:t::gpuinfra::x::missing is not in the stack's state"]
