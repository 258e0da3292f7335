"""serve.yml over real SSH on the nspawn hosts: a two-node copy (h1 head, h2 worker) of a stand-in vLLM
(tests/rigs/standin_engine.py, installed by pip from a local find-links directory in place of PyPI) with
weights staged from a stand-in hub (tests/rigs/standin_hub.py) that demands a token; h3 has no GPU and is
skipped with a message. Then: a second run changes nothing, --check changes nothing, and a server that
cannot start fails the play with its log tail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from tests.hosts.conftest import host_group_vars
from tests.rigs import nspawn
from tests.rigs.ansible_run import REPO, run_playbook

pytestmark = pytest.mark.slow

TOKEN = "hf_standin_token_never_logged"
HUB = "http://10.77.0.1:8765"
PLAN = {"engine": "vllm", "hf_repo": "deepseek-ai/standin-tiny", "served_model_name": "standin-tiny",
        "tensor_parallel": 1, "pipeline_parallel": 2, "data_parallel": 1, "expert_parallel": 1,
        "enable_expert_parallel": False, "replicas_per_node": 1, "nodes": 2, "max_model_len": 4096,
        "max_num_seqs": 8, "gpu_memory_utilization": 0.9, "max_num_batched_tokens": 2048, "quantization": None,
        "kv_cache_dtype": "fp8", "port": 8000}


@pytest.fixture(scope="module")
def serving(nspawn_hosts, tmp_path_factory):
    hosts, _ = nspawn_hosts
    work = tmp_path_factory.mktemp("serving")
    model = work / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "standin"}')
    (model / "model.safetensors").write_bytes(os.urandom(3 * 1024 * 1024))
    (model / "tokenizer.json").write_bytes(os.urandom(4096))
    hub = subprocess.Popen(hosts.netns_exec(sys.executable, "-m", "tests.rigs.standin_hub", model, "--host",
                                            "10.77.0.1", "--port", "8765", "--token", TOKEN),
                           cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    group_vars = {
        **host_group_vars(hosts.repos),
        "inference_server_hosts": ["h1", "h2"],
        "inference_server_plan": PLAN,
        # STAND-IN for PyPI: the find-links directory of the stand-in repositories.
        "inference_server_pip_env": {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": f"file://{nspawn.REPO_MOUNT}/wheels"},
        "inference_server_weights_source": "hf://deepseek-ai/standin-tiny",
        "inference_server_weights_revision": "0123456789abcdef",
        "inference_server_hf_endpoint": HUB,
        "inference_server_hf_token": TOKEN,
        "inference_server_env": {"STANDIN_STATE_DIR": "/var/lib/gpuinfra-serve/standin"},
        "inference_server_report_dir": str(work / "reports"),
        "inference_server_health_timeout_s": 60,
        "node_validation_report_dir": str(work / "reports"),
        "monitoring_output_dir": str(work / "reports" / "monitoring"),
        "gpuinfra_sla": {"ttft_p99_s": 2.0, "e2e_p99_s": 60.0, "error_rate": 0.01, "min_output_tokens_per_s": None},
    }
    host_vars = {"h1": {"inference_server_skip_without_gpu": False},
                 "h2": {"inference_server_skip_without_gpu": False}}
    inventory = hosts.inventory(work / "hosts.yml", group_vars, host_vars)
    document = yaml.safe_load(inventory.read_text())
    document["all"]["children"]["monitoring"] = {"hosts": {"h3": {}}}  # Prometheus runs on h3
    inventory.write_text(yaml.safe_dump(document, sort_keys=False))
    try:
        # h3 as a one-node copy of its own, in check mode, before anything is installed on it.
        alone = {"inference_server_hosts": ["h3"], "inference_server_skip_without_gpu": False,
                 "inference_server_plan": {**PLAN, "nodes": 1, "pipeline_parallel": 1}}
        before = nspawn.written_files(hosts.hosts[2])
        fresh_check = run(hosts, inventory, "serve.yml", "--check", "--limit", "h3", "-e", json.dumps(alone))
        fresh_delta = nspawn.written_files(hosts.hosts[2]) - before
        runs = {"fresh_check": fresh_check, "first": run(hosts, inventory, "serve.yml"),
                "second": run(hosts, inventory, "serve.yml"),
                "check": run(hosts, inventory, "serve.yml", "--check"),
                "load": run(hosts, inventory, "serve.yml", "-e", "node_validation_load_test=true", "-e",
                            "node_validation_load_requests=12", "-e", "node_validation_load_max_tokens=8"),
                "monitoring": run(hosts, inventory, "monitoring.yml"),
                "monitoring_again": run(hosts, inventory, "monitoring.yml")}
        yield hosts, inventory, work, runs | {"fresh_delta": fresh_delta}
    finally:
        hub.terminate()
        hub.wait(timeout=10)


def run(hosts, inventory, playbook, *extra):
    return run_playbook(playbook, inventory, *extra, prefix=hosts.netns_exec())


def test_two_node_copy_converges_and_the_gpu_less_host_is_skipped_with_a_message(serving):
    _, _, _, runs = serving
    first = runs["first"]
    assert first.returncode == 0, first.tail(120)
    assert first.changed()["h1"] > 0 and first.changed()["h2"] > 0 and first.changed()["h3"] == 0
    assert "h3: no NVIDIA GPU (nvidia-smi shows none), so no inference server is installed or started here" \
        in " ".join(first.output.split())


def test_check_mode_on_a_fresh_host_runs_and_writes_nothing(serving):
    _, _, _, runs = serving
    assert runs["fresh_check"].returncode == 0, runs["fresh_check"].tail(80)
    assert runs["fresh_delta"] == set(), sorted(runs["fresh_delta"])


def test_second_run_and_check_mode_change_nothing(serving):
    _, _, _, runs = serving
    for name in ("second", "check"):
        assert runs[name].returncode == 0, runs[name].tail(120)
        assert runs[name].changed() == {"h1": 0, "h2": 0, "h3": 0}, (name, runs[name].changed_tasks())


def test_the_token_never_appears_in_the_output(serving):
    _, _, _, runs = serving
    assert all(TOKEN not in r.output for name, r in runs.items() if name != "fresh_delta")


def test_weights_staged_verified_on_both_nodes(serving):
    hosts, _, work, _ = serving
    expected = {p.name: p.read_bytes() for p in (work / "model").iterdir()}
    import hashlib

    for host in hosts.hosts[:2]:
        listing = hosts.ssh(host, "sha256sum /mnt/nvme/models/standin-tiny/*").stdout
        found = {line.split()[1].rsplit("/", 1)[1]: line.split()[0] for line in listing.splitlines()}
        assert found == {name: hashlib.sha256(data).hexdigest() for name, data in expected.items()}
    assert hosts.ssh(hosts.hosts[2], "test", "-e", "/mnt/nvme/models/standin-tiny", check=False).returncode != 0


def test_head_and_worker_run_the_plan_with_their_ranks(serving):
    hosts, _, _, _ = serving
    h1, h2 = hosts.hosts[:2]
    head = json.loads(hosts.ssh(h1, "cat /var/lib/gpuinfra-serve/standin/args-rank0.json").stdout)
    worker = json.loads(hosts.ssh(h2, "cat /var/lib/gpuinfra-serve/standin/args-rank1.json").stdout)
    for recorded in (head, worker):
        argv = recorded["argv"]
        assert argv[:2] == ["serve", "/mnt/nvme/models/standin-tiny"]
        assert argv[argv.index("--pipeline-parallel-size") + 1] == "2"
        assert argv[argv.index("--kv-cache-dtype") + 1] == "fp8"
        assert argv[argv.index("--master-addr") + 1] == "10.77.0.11"
        assert recorded["env"]["HF_HUB_OFFLINE"] == "1" and "HF_TOKEN" not in recorded["env"]
    assert "--headless" in worker["argv"] and "--headless" not in head["argv"]
    unit = hosts.ssh(h1, "systemctl show gpuinfra-inference -p User,LimitMEMLOCK,ActiveState").stdout
    assert "User=gpuinfra-serve" in unit and "LimitMEMLOCK=infinity" in unit and "ActiveState=active" in unit


def test_time_to_first_token_recorded_by_the_head_only(serving):
    _, _, work, runs = serving
    record = json.loads((work / "reports" / "h1-serving.json").read_text())
    assert record["nodes"] == 2 and record["first_completion"]["ok"]
    assert 0 < record["first_completion"]["ttft_s"] < record["first_completion"]["e2e_s"]
    assert not (work / "reports" / "h2-serving.json").exists()
    assert "h1 serves standin-tiny: first token after" in " ".join(runs["first"].output.split())


def test_load_test_reports_percentiles_against_the_sla(serving):
    _, _, work, runs = serving
    assert runs["load"].returncode == 0, runs["load"].tail(80)
    report = json.loads((work / "reports" / "h1-load.json").read_text())["load_test"]
    assert report["requests"] == 12 and report["passed"] and report["latency_p99_s"] > 0
    assert report["sla"] == {"ttft_p99_s": 2.0, "e2e_p99_s": 60.0, "error_rate": 0.01,
                             "min_output_tokens_per_s": None}


def test_prometheus_scrapes_exporters_and_the_head_with_the_rules_loaded(serving):
    hosts, _, work, runs = serving
    assert runs["monitoring"].returncode == 0, runs["monitoring"].tail(80)
    assert runs["monitoring_again"].changed() == {"h1": 0, "h2": 0, "h3": 0}, runs["monitoring_again"].changed_tasks()
    assert "h1: no NVIDIA GPU, so no DCGM exporter" in " ".join(runs["monitoring"].output.split())
    query = ("import json, urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9090/api/v1/{}')"
             ".read().decode())")
    deadline = time.monotonic() + 90
    while True:
        targets = json.loads(hosts.ssh(hosts.hosts[2], "python3", "-c",
                                       f'"{query.format("targets")}"').stdout)["data"]["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        if all(value == "up" for value in health.values()) or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert health == {("node", f"10.77.0.1{i}:9100"): "up" for i in (1, 2, 3)} | {
        ("inference", "10.77.0.11:8000"): "up"}
    rules = json.loads(hosts.ssh(hosts.hosts[2], "python3", "-c", f'"{query.format("rules")}"').stdout)
    names = {r["name"] for g in rules["data"]["groups"] for r in g["rules"]}
    assert {"GpuMemoryHigh", "InferenceP99LatencyOverSla", "InferenceErrorRateOverSla"} <= names
    assert (work / "reports" / "monitoring" / "gpuinfra-dashboard.json").exists()


def test_a_server_that_cannot_start_fails_the_play_with_its_log_tail(serving):
    hosts, inventory, _, _ = serving
    started = time.monotonic()
    broken = run(hosts, inventory, "serve.yml", "-e", '{"inference_server_extra_args": ["--no-such-flag"]}')
    assert broken.returncode != 0
    text = " ".join(broken.output.split())
    assert "gpuinfra-inference does not serve standin-tiny" in text
    assert "unrecognized arguments: --no-such-flag" in text
    assert time.monotonic() - started < 120  # a crash loop is not waited out for the 60 s timeout per node
    healed = run(hosts, inventory, "serve.yml")
    assert healed.returncode == 0, healed.tail(80)
