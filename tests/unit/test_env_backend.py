"""The state backend: file:// and s3:// (moto's S3) stores, exclusive creation, Pulumi's DIY lock protocol,
backend URLs, the stand-in clock, and the lifecycle's tags."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import boto3
import pytest
from gpuinfra.environments.backend import (
    Backend,
    FileStore,
    S3Store,
    StackLocked,
    StandinClock,
    backend_url,
    open_store,
)
from gpuinfra.environments.durations import format_duration, parse_duration
from gpuinfra.environments.models import Lifecycle
from gpuinfra.errors import InputError
from moto import mock_aws


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        yield FileStore(tmp_path, f"file://{tmp_path}")
        return
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="gpuinfra-state")
        yield S3Store("gpuinfra-state", "teams/ml", "s3://gpuinfra-state/teams/ml", client=client)


def test_read_write_list_delete(store):
    assert store.read("a/b.json") is None
    store.write("a/b.json", b"1")
    store.write("a/c/d.json", b"2")
    assert store.read("a/b.json") == b"1"
    assert store.list("a/") == ["a/b.json", "a/c/d.json"]
    store.delete("a/b.json")
    store.delete("a/b.json")  # deleting what is gone is fine
    assert store.list("a/") == ["a/c/d.json"]


def test_create_is_exclusive(store):
    assert store.create("claim.yaml", b"first") is True
    assert store.create("claim.yaml", b"second") is False
    assert store.read("claim.yaml") == b"first"


def test_concurrent_creates_have_exactly_one_winner(tmp_path):
    store = FileStore(tmp_path, f"file://{tmp_path}")
    results, barrier = [], threading.Barrier(8)

    def claim(index: int) -> None:
        barrier.wait()
        results.append(store.create("claim.yaml", str(index).encode()))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_the_lock_follows_pulumis_diy_protocol(store):
    backend = Backend(store)
    with backend.lock("t"):
        (key,) = store.list(".pulumi/locks/organization/gpuinfra/t/")
        assert key.endswith(".json")
        (holder,) = backend.lock_holders("t")
        assert " (pid " in holder and "@" in holder
        with pytest.raises(StackLocked, match="stack t is locked by"), backend.lock("t"):
            pass
        assert store.list(".pulumi/locks/organization/gpuinfra/t/") == [key]  # never breaks another's lock
    assert backend.lock_holders("t") == []


def test_a_lock_written_by_someone_else_meanwhile_backs_us_off(tmp_path):
    class Racing(FileStore):
        """Another process writes its lock between our check and our write."""

        def write(self, key, data):
            super().write(key, data)
            if "/locks/" in key and not getattr(self, "raced", False):
                self.raced = True
                super().write(".pulumi/locks/organization/gpuinfra/t/other.json",
                              b'{"pid": 1, "username": "bob", "hostname": "h", "timestamp": "2026-01-01T00:00:00Z"}')

    backend = Backend(Racing(tmp_path, "file://x"))
    with pytest.raises(StackLocked, match="bob@h"), backend.lock("t"):
        pass
    assert backend.store.list(".pulumi/locks/") == [".pulumi/locks/organization/gpuinfra/t/other.json"]


def test_stack_names_and_tags_in_the_diy_layout(store):
    backend = Backend(store)
    backend.write_json(backend.checkpoint_key("a"), {"version": 3})
    backend.write_json(backend.checkpoint_key("b"), {"version": 3})
    backend.set_tags("a", {"x": "1"})
    backend.set_tags("a", {"y": "2"})
    assert backend.stack_names() == ["a", "b"]
    assert backend.tags("a") == {"x": "1", "y": "2"} and backend.tags("b") == {}
    assert backend.tags_key("a") == ".pulumi/stacks/gpuinfra/a.pulumi-tags"


def test_backend_urls(tmp_path, monkeypatch):
    monkeypatch.delenv("GPUINFRA_BACKEND", raising=False)
    assert backend_url(None) == "file://~/.gpuinfra/state"
    monkeypatch.setenv("GPUINFRA_BACKEND", "s3://b/p")
    assert backend_url(None) == "s3://b/p" and backend_url("file:///x") == "file:///x"
    home = open_store("file://~/.gpuinfra/state")
    assert str(home.root).endswith("/.gpuinfra/state") and str(home.root).startswith("/")
    assert open_store(f"file://{tmp_path}").root == tmp_path
    s3 = open_store("s3://gpuinfra-state/teams?region=eu-west-1")
    assert (s3.bucket, s3.prefix, s3.client.meta.region_name) == ("gpuinfra-state", "teams", "eu-west-1")
    for bad in ("ftp://x", "file://relative/path", "s3://", "state"):
        with pytest.raises(InputError, match="--backend"):
            open_store(bad)


def test_the_standin_clock_keeps_its_offset_in_the_backend(tmp_path):
    store = FileStore(tmp_path, "file://x")
    clock = StandinClock(store)
    before = datetime.now(UTC)
    clock.advance(timedelta(hours=3))
    assert StandinClock(store).offset() == timedelta(hours=3)
    assert clock.now() - before >= timedelta(hours=3) - timedelta(seconds=1)


def test_durations_parse_and_print():
    assert parse_duration("1d12h30m", "--ttl") == timedelta(days=1, hours=12, minutes=30)
    assert [format_duration(timedelta(seconds=s)) for s in (0, 45, 3600, 5400, 90000, -3660)] == [
        "0s", "45s", "1h", "1h30m", "1d1h", "-1h1m"]
    for bad in ("8x", "", "h", "0m", "366d", "1h 30m", "-1h"):
        with pytest.raises(InputError, match="--ttl"):
            parse_duration(bad, "--ttl")


def test_lifecycle_tags_round_trip_and_stay_within_aws_limits():
    start = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    lifecycle = Lifecycle(environment_id="0123456789ab", template="dev-7b", owner="alice@example.com",
                          created_at=start, expires_at=start + timedelta(hours=8), hourly_usd=0.98, budget_usd=50,
                          idle_after_s=1800, protected=True)
    tags = lifecycle.stack_tags()
    assert Lifecycle.from_tags(tags) == lifecycle
    assert all(len(k) <= 40 and len(v) <= 256 for k, v in tags.items())
    assert lifecycle.aws_tags()["gpuinfra:expires-at"] == "2026-01-01T20:00:00Z"
    assert "gpuinfra:protected" not in lifecycle.aws_tags()  # changes without an up: stack tags only
    assert lifecycle.spend_usd(start + timedelta(hours=2)) == 1.96
    assert lifecycle.budget_left_usd(start + timedelta(hours=2)) == 48.04
    with pytest.raises(ValueError, match="not a gpuinfra environment"):
        Lifecycle.from_tags({"pulumi:project": "gpuinfra"})
    with pytest.raises(ValueError):
        Lifecycle(**{**lifecycle.model_dump(), "owner": "bad\nowner"})


def test_the_stored_cluster_config_round_trips():
    """The settings document holds the whole validated config; re-reading it gives the same config."""
    from gpuinfra.config import load_stack, parse_cluster

    for stack in ("dev-7b", "prod-70b", "prod-r1", "spot-32b"):
        config = load_stack(stack).config
        assert parse_cluster(config.model_dump(mode="json")) == config


def test_a_team_backend_on_s3_carries_the_whole_lifecycle(tmp_path, monkeypatch):
    import io
    import json

    from gpuinfra.cli import main

    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("GPUINFRA_HOME", str(tmp_path / "home"))
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="team-gpuinfra-state")
        common = ["--engine", "standin", "--backend", "s3://team-gpuinfra-state/envs?region=us-east-1"]

        def env(*argv: str) -> tuple[int, str]:
            out = io.StringIO()
            return main(["env", *argv, *common], out=out), out.getvalue()

        assert env("up", "dev-7b", "--name", "t", "--ttl", "2h", "--budget", "50")[0] == 0
        keys = {o["Key"] for o in client.list_objects_v2(Bucket="team-gpuinfra-state")["Contents"]}
        assert {"envs/.pulumi/stacks/gpuinfra/t.json", "envs/.pulumi/stacks/gpuinfra/t.pulumi-tags",
                "envs/.gpuinfra/stacks/gpuinfra/t.yaml"} <= keys
        assert env("up", "dev-7b", "--name", "t", "--ttl", "2h")[0] == 1  # the S3 claim holds too
        (row,) = json.loads(env("ls", "--json")[1])
        assert row["name"] == "t" and row["budget_left_usd"] == 50.0
        assert env("clock", "--advance", "3h")[0] == 0
        rc, out = env("reap", "--yes")
        assert rc == 0 and "reap destroy t: expired" in out
        assert json.loads(env("ls", "--json")[1]) == []


def test_a_file_backend_that_is_a_file_or_under_one_is_refused_before_any_work(tmp_path):
    from gpuinfra.environments.backend import open_store
    from gpuinfra.errors import InputError

    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    for url in (f"file://{taken}", f"file://{taken}/state"):
        with pytest.raises(InputError, match="is not a directory"):
            open_store(url)
    assert taken.read_text() == "not a directory"
