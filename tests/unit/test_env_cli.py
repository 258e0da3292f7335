"""`gpuinfra env up/ls/extend/down/protect/clock` with the STAND-IN engine (the real program under Pulumi's
mock runtime, the DIY backend layout on disk): what the issue's "done when" asks, the refusals before
anything exists, bad input that writes nothing, and two concurrent `env up` of one name."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpuinfra.catalog import find_instance_type
from gpuinfra.cli import main
from gpuinfra.environments.backend import Backend, FileStore

# dev-7b's hourly price as environments record it (cents), from the catalog: expectations follow a price change
PRICE = round(find_instance_type("g6.2xlarge").price.usd_per_hour, 2)


REPO = Path(__file__).resolve().parents[2]
GPUINFRA = REPO / ".venv" / "bin" / "gpuinfra"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Run `gpuinfra env ...` in-process against a fresh file:// backend; returns (rc, stdout, stderr)."""
    state = tmp_path / "state"
    monkeypatch.setenv("GPUINFRA_BACKEND", f"file://{state}")
    monkeypatch.setenv("GPUINFRA_ENGINE", "standin")
    monkeypatch.setenv("GPUINFRA_HOME", str(tmp_path / "home"))

    def run(*argv: str, capsys=None) -> tuple[int, str]:
        out = io.StringIO()
        rc = main(["env", *argv], out=out)
        return rc, out.getvalue()

    run.state = state
    run.backend = Backend(FileStore(state, f"file://{state}"))
    return run


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_up_then_ls_shows_price_expiry_and_budget_left(env):
    rc, out = env("up", "dev-7b", "--name", "t", "--ttl", "2h", "--budget", "50")
    assert rc == 0, out
    assert f"environment t (dev-7b) is ready: ${PRICE:.2f}/h" in out and "budget $50.00" in out
    rc, out = env("ls", "--json")
    (row,) = json.loads(out)
    assert row["name"] == "t" and row["template"] == "dev-7b" and row["state"] == "ready"
    assert row["hourly_usd"] == round(PRICE, 2) and row["budget_usd"] == 50.0 and row["budget_left_usd"] == 50.0
    assert 1.99 < row["expires_in_hours"] <= 2.0 and row["resources"] > 20
    assert set(row) == {"name", "environment_id", "template", "owner", "state", "reason", "created_at", "age_hours",
                        "expires_at", "expires_in_hours", "hourly_usd", "spend_usd", "budget_usd", "budget_left_usd",
                        "idle_after_s", "protected", "update_in_progress", "resources", "endpoint"}
    rc, table = env("ls")
    assert rc == 0 and f"{PRICE:.2f}" in table and row["expires_at"] in table and "50.00" in table


def test_the_backend_holds_a_pulumi_diy_layout_with_tags(env):
    env("up", "dev-7b", "--name", "t", "--ttl", "2h", "--budget", "50", "--owner", "alice@example.com")
    assert {".pulumi/meta.yaml", ".pulumi/stacks/gpuinfra/t.json", ".pulumi/stacks/gpuinfra/t.pulumi-tags",
            ".gpuinfra/stacks/gpuinfra/t.yaml"} <= set(files_under(env.state))
    assert any(f.startswith(".pulumi/history/gpuinfra/t/") for f in files_under(env.state))
    checkpoint = json.loads((env.state / ".pulumi/stacks/gpuinfra/t.json").read_text())
    assert checkpoint["version"] == 3 and checkpoint["checkpoint"]["stack"] == "organization/gpuinfra/t"
    tags = json.loads((env.state / ".pulumi/stacks/gpuinfra/t.pulumi-tags").read_text())
    assert tags["version"] == 1 and tags["tags"]["gpuinfra:owner"] == "alice@example.com"
    assert tags["tags"]["gpuinfra:budget-usd"] == "50.00" and tags["tags"]["gpuinfra:hourly-usd"] == f"{PRICE:.2f}"
    assert not files_under(env.state / ".pulumi/locks")  # released after the up


def test_lifecycle_tags_reach_every_launched_resource(env):
    env("up", "dev-7b", "--name", "t", "--ttl", "2h", "--budget", "50", "--owner", "alice")
    resources = env.backend.read_json(env.backend.checkpoint_key("t"))["checkpoint"]["latest"]["resources"]
    tags = json.loads((env.state / ".pulumi/stacks/gpuinfra/t.pulumi-tags").read_text())["tags"]
    expected = {key: tags[key] for key in ("gpuinfra:owner", "gpuinfra:expires-at", "gpuinfra:budget-usd",
                                           "gpuinfra:hourly-usd", "gpuinfra:environment-id")} | {"gpuinfra:stack": "t"}
    (template,) = [r for r in resources if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate"]
    # ASG-launched instances get no provider default tags: the launch template's tag specifications carry them.
    specs = {spec["resourceType"]: spec["tags"] for spec in template["inputs"]["tagSpecifications"]}
    assert set(specs) == {"instance", "volume", "network-interface"}
    for kind_tags in specs.values():
        assert expected.items() <= kind_tags.items()
    assert template["inputs"]["instanceInitiatedShutdownBehavior"] == "terminate"
    tagged = [r for r in resources if isinstance(r.get("inputs", {}).get("tags"), dict)]
    assert len(tagged) > 10 and all(expected.items() <= r["inputs"]["tags"].items() for r in tagged)


def test_the_node_pool_scales_to_zero_at_expiry_plus_the_switchs_grace(env):
    from datetime import timedelta

    from gpuinfra.environments.models import SWITCH_GRACE, parse_utc, utc_text

    env("up", "dev-7b", "--name", "t", "--ttl", "2h")
    resources = env.backend.read_json(env.backend.checkpoint_key("t"))["checkpoint"]["latest"]["resources"]
    (schedule,) = [r for r in resources if r["type"] == "aws:autoscaling/schedule:Schedule"]
    expires = env.backend.tags("t")["gpuinfra:expires-at"]
    assert schedule["inputs"]["startTime"] == utc_text(parse_utc(expires) + SWITCH_GRACE)
    assert (schedule["inputs"]["minSize"], schedule["inputs"]["maxSize"], schedule["inputs"]["desiredCapacity"]) == (
        0, 0, 0)
    assert schedule["inputs"]["autoscalingGroupName"] == "gpuinfra-t-nodes-asg"
    defaults = yaml.safe_load((REPO / "ansible/roles/node_expiry/defaults/main.yml").read_text())
    assert timedelta(minutes=defaults["node_expiry_grace_minutes"]) == SWITCH_GRACE  # one grace, both halves
    env("extend", "t", "--ttl", "1h")
    resources = env.backend.read_json(env.backend.checkpoint_key("t"))["checkpoint"]["latest"]["resources"]
    (schedule,) = [r for r in resources if r["type"] == "aws:autoscaling/schedule:Schedule"]
    assert schedule["inputs"]["startTime"] == utc_text(parse_utc(expires) + timedelta(hours=1) + SWITCH_GRACE)


def test_over_budget_is_refused_before_anything_exists(env, capsys):
    rc, out = env("up", "dev-7b", "--name", "t", "--ttl", "80h", "--budget", "50")
    assert rc == 1
    err = capsys.readouterr().err
    refusal = re.search(r"error: --budget: \$([\d.]+)/h x 3d8h = \$([\d.]+), over the \$50.00 budget "
                        r"\(at most --ttl (\d+)d(\d+)h fits\)", err)
    assert refusal, err
    hourly, total, days, hours = float(refusal[1]), float(refusal[2]), int(refusal[3]), int(refusal[4])
    assert hourly == round(PRICE, 2) and total == pytest.approx(hourly * 80, abs=0.01)
    assert (days * 24 + hours) * hourly <= 50 < (days * 24 + hours + 1) * hourly
    assert files_under(env.state) == []


def test_a_mandatory_policy_violation_is_refused_before_anything_exists(env, capsys):
    rc, _ = env("up", "spot-32b", "--name", "s", "--ttl", "1h", "--set", "instance_types=g6e.12xlarge")
    assert rc == 1
    assert "error: policy spot-diversification: gpuinfra-s-nodes-asg: spot with 1 instance" in capsys.readouterr().err
    assert files_under(env.state) == []


@pytest.mark.parametrize("argv, expected", [
    (["up", "dev-7b", "--name", "t", "--ttl", "8x"], "error: --ttl: '8x' is not a duration"),
    (["up", "dev-7b", "--name", "t", "--budget", "-5"], "error: --budget: must be 0 or more, got -5"),
    (["up", "dev-7b", "--name", "t", "--budget", "nan"], "error: --budget: must be 0 or more"),
    (["up", "dev-7b", "--name", "t", "--budget", "__import__('os')"], "error: --budget: must be a number"),
    (["up", "dev-7b", "--name", "Bad_Name"], "error: --name: 'Bad_Name' is not an environment name"),
    (["up", "dev-7b", "--name", "a" * 30], "is not an environment name"),
    (["up", "dev-7b", "--name", "t;rm -rf /"], "is not an environment name"),
    (["up", "no-such-template", "--name", "t"], "error: TEMPLATE: 'no-such-template' is not a shipped stack"),
    (["up", "dev-7b", "--name", "t", "--owner", "a\nb"], "error: --owner:"),
    (["up", "dev-7b", "--name", "t", "--idle-after", "soon"], "error: --idle-after: 'soon' is not a duration"),
    (["up", "dev-7b", "--name", "t", "--set", "nodes=0"], "error: cluster.nodes"),
    (["up", "dev-7b", "--name", "t", "--hosts-inventory", "x.yml"], "error: --hosts-inventory: is for --serve"),
    (["up", "--name", "t"], "error: TEMPLATE: give a shipped template or --stack-file"),
    (["up", "dev-7b", "--name", "t", "--backend", "ftp://x"], "error: --backend: 'ftp://x' is not a file:// or s3://"),
    (["extend", "t", "--ttl", "0h"], "error: --ttl: must be longer than 0"),
    (["extend", "nobody", "--ttl", "1h"], "error: NAME: no environment 'nobody'"),
    (["down", "nobody"], "error: NAME: no environment 'nobody'"),
    (["clock", "--advance", "1h", "--engine", "standin", "--cloud", "nope"], "error: argument --cloud: invalid choice"),
])
def test_bad_input_exits_2_with_one_line_per_problem_and_writes_nothing(env, capsys, argv, expected):
    rc, out = env(*argv)
    err = capsys.readouterr().err
    assert rc == 2, (out, err)
    assert expected in err and "Traceback" not in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines()), err
    assert files_under(env.state) == []


def test_every_problem_of_up_is_reported_at_once(env, capsys):
    rc, _ = env("up", "dev-7b", "--name", "X", "--ttl", "8x", "--budget", "-1", "--idle-after", "never")
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and [line.split(":")[1].strip() for line in err] == ["--name", "--ttl", "--idle-after", "--budget"]


def test_a_second_up_of_the_same_name_is_refused_and_the_first_stays(env, capsys):
    assert env("up", "dev-7b", "--name", "t", "--ttl", "2h")[0] == 0
    first = env.backend.tags("t")["gpuinfra:environment-id"]
    rc, _ = env("up", "dev-7b", "--name", "t", "--ttl", "4h")
    assert rc == 1 and "error: --name: stack t already exists" in capsys.readouterr().err
    assert env.backend.tags("t")["gpuinfra:environment-id"] == first


@pytest.mark.slow  # two real gpuinfra processes
def test_two_concurrent_ups_of_one_name_leave_one_environment_and_one_error(tmp_path):
    environ = {**os.environ, "GPUINFRA_BACKEND": f"file://{tmp_path / 'state'}", "GPUINFRA_ENGINE": "standin",
               "GPUINFRA_HOME": str(tmp_path / "home")}
    argv = [str(GPUINFRA), "env", "up", "dev-7b", "--name", "race", "--ttl", "1h"]
    racers = [subprocess.Popen(argv, env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in racers]
    assert sorted(rc for rc, _ in results) == [0, 1], results
    loser = next(err for rc, err in results if rc == 1)
    assert "error: --name: stack race already exists" in loser
    listing = subprocess.run([str(GPUINFRA), "env", "ls", "--json"], env=environ, capture_output=True, text=True)
    assert [row["name"] for row in json.loads(listing.stdout)] == ["race"]


def test_extend_moves_the_expiry_everywhere_and_never_past_the_budget(env, capsys):
    env("up", "dev-7b", "--name", "t", "--ttl", "2h", "--budget", "5")
    before = json.loads(env("ls", "--json")[1])[0]
    rc, out = env("extend", "t", "--ttl", "2h")
    assert rc == 0 and "TTL 4h from creation" in out
    after = json.loads(env("ls", "--json")[1])[0]
    assert round(after["expires_in_hours"] - before["expires_in_hours"]) == 2
    settings = yaml.safe_load((env.state / ".gpuinfra/stacks/gpuinfra/t.yaml").read_text())
    assert settings["config"]["gpuinfra:environment"]["expires_at"] == after["expires_at"]
    resources = env.backend.read_json(env.backend.checkpoint_key("t"))["checkpoint"]["latest"]["resources"]
    (template,) = [r for r in resources if r["type"] == "aws:ec2/launchTemplate:LaunchTemplate"]
    assert template["inputs"]["tagSpecifications"][0]["tags"]["gpuinfra:expires-at"] == after["expires_at"]
    rc, _ = env("extend", "t", "--ttl", "2h")  # 6h at dev-7b's price is over $5
    refusal = f"error: --ttl: extending by 2h: ${PRICE:.2f}/h x 6h = ${PRICE * 6:.2f}, over the $5.00 budget"
    assert rc == 1 and refusal in capsys.readouterr().err
    assert json.loads(env("ls", "--json")[1])[0]["expires_at"] == after["expires_at"]


def test_the_ttl_counts_from_creation_on_the_simulated_clock(env):
    env("up", "dev-7b", "--name", "t", "--ttl", "2h", "--budget", "50")
    assert env("clock", "--advance", "90m")[0] == 0
    row = json.loads(env("ls", "--json")[1])[0]
    assert row["state"] == "ready" and 0.49 < row["expires_in_hours"] <= 0.5
    assert row["spend_usd"] == pytest.approx(1.47, abs=0.02)
    assert row["budget_left_usd"] == pytest.approx(48.53, abs=0.02)
    env("clock", "--advance", "31m")
    row = json.loads(env("ls", "--json")[1])[0]
    assert row["state"] == "expired" and row["expires_in_hours"] < 0


def test_down_destroys_checks_and_removes_the_stack(env):
    env("up", "dev-7b", "--name", "t", "--ttl", "2h")
    rc, out = env("down", "t")
    assert rc == 0 and "reap destroy t: env down; deleted" in out and "0 remain, stack removed" in out
    assert json.loads(env("ls", "--json")[1]) == []
    assert not [f for f in files_under(env.state) if f.startswith((".pulumi/stacks/", ".gpuinfra/stacks/"))]


def test_a_protected_environment_is_not_taken_down_until_unprotected(env, capsys):
    env("up", "dev-7b", "--name", "t", "--ttl", "2h", "--protect")
    rc, _ = env("down", "t")
    assert rc == 1 and "t is protected" in capsys.readouterr().err
    assert env("protect", "t", "--off")[0] == 0
    assert env("down", "t")[0] == 0


def test_a_failed_up_leaves_a_failed_environment_that_down_removes(env, capsys, monkeypatch):
    from gpuinfra.environments.engine import EngineError
    from gpuinfra.environments.standin import StandinEngine

    def cloud_error(*args, **kwargs):  # a provider error: the one thing the stand-in cannot produce by itself
        raise EngineError("creating aws:autoscaling/group:Group: the cloud said no")

    with monkeypatch.context() as patch:
        patch.setattr(StandinEngine, "_run_program", staticmethod(cloud_error))
        rc, _ = env("up", "dev-7b", "--name", "t", "--ttl", "2h")
    assert rc == 1 and "error: up: creating aws:autoscaling/group:Group: the cloud said no" in capsys.readouterr().err
    (row,) = json.loads(env("ls", "--json")[1])
    assert row["state"] == "failed" and "the cloud said no" in row["reason"]
    assert env("down", "t")[0] == 0 and json.loads(env("ls", "--json")[1]) == []


def test_the_program_reads_the_environment_config_when_pulumi_runs_it():
    """`pulumi up` runs program.main(): the `gpuinfra:environment` config becomes tags there too."""
    from gpuinfra.aws import program
    from gpuinfra.preview import run_program
    from pulumi.runtime import config as runtime_config

    environment = {"environment_id": "0123456789ab", "template": "dev-7b", "owner": "bob",
                   "created_at": "2026-01-01T00:00:00Z", "expires_at": "2026-01-01T08:00:00Z", "hourly_usd": 0.98}
    cluster = yaml.safe_load((REPO / "stacks/Pulumi.dev-7b.yaml").read_text())["config"]["gpuinfra:cluster"]
    runtime_config.set_all_config({"gpuinfra:cluster": json.dumps(cluster),
                                   "gpuinfra:environment": json.dumps(environment)})
    try:
        result = run_program(lambda: program.main(), stack="m", region="us-east-1")
    finally:
        runtime_config.set_all_config({})
    (template,) = [r for r in result.resources if r.type == "aws:ec2/launchTemplate:LaunchTemplate"]
    tags = template.inputs["tagSpecifications"][0]["tags"]
    assert tags["gpuinfra:owner"] == "bob" and tags["gpuinfra:expires-at"] == "2026-01-01T08:00:00Z"


@pytest.mark.skipif(shutil.which("pulumi") is not None, reason="a pulumi CLI is on PATH here")
def test_the_real_engine_without_a_pulumi_cli_is_a_clear_error(env, capsys):
    rc, _ = env("ls", "--engine", "pulumi")
    err = capsys.readouterr().err
    assert rc == 2 and "error: --engine: the pulumi engine needs the `pulumi` CLI on PATH" in err
    rc, _ = env("clock", "--engine", "pulumi")
    assert rc == 2


def test_clock_is_for_the_standin_engine_only_and_moves_forward(env):
    rc, out = env("clock", "--advance", "3h")
    assert rc == 0 and "(3h ahead)" in out
    assert "(3h ahead)" in env("clock")[1]


def test_the_cli_wires_env_with_help(capsys):
    with pytest.raises(SystemExit):
        main(["env", "--help"])
    assert "reap" in capsys.readouterr().out


def test_python_running_the_cli_module_also_works(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gpuinfra.cli", "env", "ls", "--engine", "standin", "--backend",
                           f"file://{tmp_path}/s"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "no environments" in done.stdout


@pytest.mark.parametrize("corrupt", [b"{not json", b"[1, 2]", b'{"version": 1, "tags": {"a": 1}}'])
def test_corrupt_backend_state_is_refused_by_name_and_left_as_it_is(env, capsys, corrupt):
    """A hand-edited or torn stack tags file: exit 2 naming the file, no traceback, nothing written over it."""
    assert env("up", "dev-7b", "--name", "t", "--ttl", "2h")[0] == 0
    capsys.readouterr()
    tags_file = env.state / env.backend.tags_key("t")
    tags_file.write_bytes(corrupt)
    for argv in (["ls"], ["extend", "t", "--ttl", "1h"], ["down", "t"]):
        rc, _ = env(*argv)
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert err.startswith("error: --backend: ") and "t.pulumi-tags" in err and "Traceback" not in err
    assert tags_file.read_bytes() == corrupt
