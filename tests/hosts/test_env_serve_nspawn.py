"""`gpuinfra env up --serve` end to end on real systemd hosts over SSH: two debootstrap'd Debian hosts under
systemd-nspawn (tests/rigs/nspawn.py, a set of their own so that powering one off harms no other test), the
STAND-IN engine (the real program under mocks; the hosts come from --hosts-inventory, since it launches
nothing), the stand-in vLLM (tests/rigs/standin_engine.py) installed by the project's own playbooks from the
stand-in repositories, weights from the stand-in hub. Checked: the inventory gpuinfra writes, site.yml's
bring-up and serving, the first completion and its time to first token, the endpoint answering, Prometheus
on the monitoring host, the node_expiry dead man's switch installed with the environment's expiry and moved by
`env extend`, and a node that really powers itself off at its (short) expiry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from tests.hosts.conftest import GPUINFRA, HOST_VARS, host_group_vars, software
from tests.rigs import nspawn, standin_repo
from tests.rigs.ansible_run import REPO, run_playbook

pytestmark = pytest.mark.slow

TOKEN = "hf_standin_token_env"
HUB_PORT = 8766


@pytest.fixture(scope="module")
def env_hosts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("nspawn hosts, network namespaces and overlays need root (CI runs as root)")
    missing = nspawn.missing_tools()
    assert not missing, f"scripts/bootstrap.sh should have installed {missing}"
    repos = standin_repo.build(nspawn.base_rootfs(), software())
    with nspawn.NspawnHosts(repos, count=2, prefix=nspawn.run_prefix("gpie")) as hosts:
        yield hosts


@pytest.fixture(scope="module")
def served(env_hosts, tmp_path_factory):
    hosts = env_hosts
    work = tmp_path_factory.mktemp("env-serve")
    model = work / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "standin"}')
    (model / "model.safetensors").write_bytes(os.urandom(1024 * 1024))
    hub = subprocess.Popen(hosts.netns_exec(sys.executable, "-m", "tests.rigs.standin_hub", model, "--host",
                                            "10.77.0.1", "--port", str(HUB_PORT), "--token", TOKEN),
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    group_vars = {
        **host_group_vars(hosts.repos),
        "inference_server_hosts": ["h1"],
        # STAND-IN for PyPI and the hub (the stack's own plan, sizing and weights come from `gpuinfra env up`).
        "inference_server_pip_env": {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": f"file://{nspawn.REPO_MOUNT}/wheels"},
        "inference_server_weights_source": "hf://deepseek-ai/standin-tiny",
        "inference_server_weights_revision": "0123456789abcdef",
        "inference_server_hf_endpoint": f"http://10.77.0.1:{HUB_PORT}",
        "inference_server_hf_token": TOKEN,
        "inference_server_env": {"STANDIN_STATE_DIR": "/var/lib/gpuinfra-serve/standin"},
        "inference_server_health_timeout_s": 60,
    }
    host_vars = {"h1": {**HOST_VARS["h1"], "inference_server_skip_without_gpu": False}, "h2": HOST_VARS["h2"]}
    inventory = hosts.inventory(work / "hosts.yml", group_vars, host_vars)
    document = yaml.safe_load(inventory.read_text())
    document["all"]["children"]["monitoring"] = {"hosts": {"h2": {}}}  # Prometheus runs on h2
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    # gpuinfra writes its own inventory from --hosts-inventory: the rig's private SSH ControlPath directory reaches
    # the playbook runs through Ansible's environment instead, so they never share another rig's connections.
    environ = {**os.environ, "GPUINFRA_BACKEND": f"file://{work / 'state'}", "GPUINFRA_ENGINE": "standin",
               "GPUINFRA_HOME": str(work / "home"), "ANSIBLE_SSH_CONTROL_PATH_DIR": str(hosts.control_path_dir)}

    def gpuinfra(*argv: str, timeout: float = 1800) -> subprocess.CompletedProcess:
        return subprocess.run(hosts.netns_exec(GPUINFRA, *argv), env=environ, capture_output=True, text=True,
                              timeout=timeout, cwd=REPO)

    try:
        started = time.monotonic()
        up = gpuinfra("env", "up", "dev-7b", "--name", "svc", "--ttl", "2h", "--budget", "50", "--serve",
                      "--hosts-inventory", str(inventory), "--json")
        yield {"hosts": hosts, "work": work, "up": up, "up_s": time.monotonic() - started, "gpuinfra": gpuinfra,
               "inventory": inventory}
    finally:
        hub.terminate()
        hub.wait(timeout=10)


def test_env_up_serve_brings_up_and_serves_with_a_first_completion(served):
    up = served["up"]
    assert up.returncode == 0, up.stderr[-6000:]
    status = json.loads(up.stdout)
    assert status["state"] == "serving" and status["endpoint"] == "http://10.77.0.11:8000"
    assert 0 < status["ttft_s"] < 5
    stages = [line for line in up.stderr.splitlines() if line.startswith("done ")]
    assert [line.rsplit(" (", 1)[0] for line in stages] == [
        "done plan dev-7b as svc", "done capacity checks", "done up svc (standin engine)",
        "done bring-up and serving: site.yml on hosts.yml", "done first completion"]


def test_the_inventory_is_gpuinfras_own_and_carries_the_environment(served):
    inventory = served["work"] / "home" / "environments" / "svc" / "inventory"
    plan = yaml.safe_load((inventory / "group_vars" / "gpu_nodes.yml").read_text())
    assert plan["gpuinfra_stack"] == "svc" and plan["gpuinfra_instance_type"] == "g6.2xlarge"
    assert plan["gpuinfra_node_plans"]["g6.2xlarge"]["serving"]["served_model_name"] == "deepseek-r1-distill-qwen-7b"
    environment = yaml.safe_load((inventory / "group_vars" / "all.yml").read_text())["gpuinfra_environment"]
    status = json.loads(served["up"].stdout)
    assert environment["name"] == "svc" and environment["expires_at"] == status["expires_at"]


def test_the_endpoint_answers_a_completion(served):
    hosts = served["hosts"]
    body = json.dumps({"model": "deepseek-r1-distill-qwen-7b", "prompt": "hello from env", "max_tokens": 4})
    client = ("import sys, urllib.request; r = urllib.request.Request('http://10.77.0.11:8000/v1/completions', "
              "data=sys.argv[1].encode(), headers={'Content-Type': 'application/json'}); "
              "print(urllib.request.urlopen(r, timeout=30).read().decode())")
    done = subprocess.run(hosts.netns_exec(sys.executable, "-c", client, body), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["choices"][0]["text"].startswith("hello")


def test_env_ls_shows_it_serving_with_its_endpoint_and_prometheus(served):
    done = served["gpuinfra"]("env", "ls", "--json")
    (row,) = json.loads(done.stdout)
    assert row["state"] == "serving" and row["endpoint"] == "http://10.77.0.11:8000"
    assert row["hourly_usd"] == 0.98 and row["budget_left_usd"] <= 50
    tags = json.loads((served["work"] / "state/.pulumi/stacks/gpuinfra/svc.pulumi-tags").read_text())["tags"]
    assert tags["gpuinfra:prometheus-url"] == "http://10.77.0.12:9090" and tags["gpuinfra:phase"] == "serving"


def test_the_dead_mans_switch_is_installed_with_the_environments_expiry(served):
    hosts = served["hosts"]
    expires = json.loads(served["up"].stdout)["expires_at"]
    for host in hosts.hosts:
        settings = hosts.ssh(host, "cat", "/etc/default/gpuinfra-expiry").stdout
        assert f"GPUINFRA_EXPIRES_AT={expires}" in settings and "GPUINFRA_EXPIRY_GRACE_S=1800" in settings
        assert hosts.ssh(host, "systemctl", "is-enabled", "gpuinfra-expiry.timer").stdout.strip() == "enabled"
        assert hosts.ssh(host, "systemctl", "is-active", "gpuinfra-expiry.timer").stdout.strip() == "active"
    hosts.ssh(hosts.hosts[0], "systemctl", "start", "gpuinfra-expiry.service")
    journal = hosts.ssh(hosts.hosts[0], "journalctl", "-u", "gpuinfra-expiry.service", "-o", "cat", "--no-pager").stdout
    assert f"gpuinfra-expiry: expires {expires} (file); powering off after" in journal  # no EC2 metadata here


def test_env_extend_moves_the_nodes_deadline(served):
    done = served["gpuinfra"]("env", "extend", "svc", "--ttl", "1h", "--json")
    assert done.returncode == 0, done.stderr[-4000:]
    extended = json.loads(done.stdout)
    assert extended["nodes_updated"] is True
    for host in served["hosts"].hosts:
        settings = served["hosts"].ssh(host, "cat", "/etc/default/gpuinfra-expiry").stdout
        assert f"GPUINFRA_EXPIRES_AT={extended['expires_at']}" in settings


def test_a_node_powers_itself_off_at_its_expiry(served):
    """The switch for real on h2 (the last test: the host is gone after it): an expiry ahead, no grace. The
    margin covers the playbook run on a loaded 2-core CI machine (the role refuses a deadline already past)."""
    hosts = served["hosts"]
    h2 = hosts.hosts[1]
    soon = (datetime.now(UTC) + timedelta(seconds=150)).strftime("%Y-%m-%dT%H:%M:%SZ")
    run = run_playbook("expiry.yml", served["inventory"], "--limit", "h2", "-e", json.dumps({
        "node_expiry_at": soon, "node_expiry_grace_minutes": 0, "node_expiry_check_every": "5s"}),
        prefix=hosts.netns_exec())
    assert run.returncode == 0, run.tail(60)
    assert h2.process.wait(timeout=420) is not None  # nspawn exits when the booted system powers off
    assert datetime.now(UTC) >= datetime.strptime(soon, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def test_env_down_removes_the_environment(served):
    done = served["gpuinfra"]("env", "down", "svc")
    assert done.returncode == 0 and "reap destroy svc: env down; deleted" in done.stdout, done.stderr
    assert json.loads(served["gpuinfra"]("env", "ls", "--json").stdout) == []
