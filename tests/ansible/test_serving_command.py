"""The inference server's command line comes from the sizing engine's serving plan, for both engines."""

from __future__ import annotations

import functools
import importlib.util
import json
import subprocess

import pytest

from tests.rigs.ansible_run import ANSIBLE_DIR, REPO

_spec = importlib.util.spec_from_file_location(
    "serving_command", ANSIBLE_DIR / "roles/inference_server/filter_plugins/serving_command.py")
serving_command = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serving_command)
GPUINFRA = REPO / ".venv" / "bin" / "gpuinfra"


def plan_of(stack: str) -> dict:
    return dict(_plan(stack))


@functools.cache
def _plan(stack: str) -> dict:
    from gpuinfra.config import load_stack
    from gpuinfra.inventory import read_inventory_yaml

    hosts = ",".join(f"n{index + 1}" for index in range(load_stack(stack).config.nodes))
    inventory = subprocess.run([str(GPUINFRA), "inventory", stack, "--hosts", hosts], capture_output=True,
                               text=True, check=True).stdout
    group = read_inventory_yaml(inventory)["all"]["children"]["gpu_nodes"]["vars"]
    return group["gpuinfra_node_plans"][group["gpuinfra_instance_type"]]["serving"]


def flags(argv: list[str]) -> dict[str, str | bool]:
    found: dict[str, str | bool] = {}
    for index, word in enumerate(argv):
        if word.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else "--"
            found[word] = True if following.startswith("--") else following
    return found


def test_deepseek_r1_over_two_nodes_head_and_worker():
    plan = plan_of("prod-r1")
    head = serving_command.serve_argv(plan, "vllm", "/opt/v", "/mnt/nvme/models/deepseek-r1", node_rank=0,
                                      head_address="10.0.0.5")
    worker = serving_command.serve_argv(plan, "vllm", "/opt/v", "/mnt/nvme/models/deepseek-r1", node_rank=1,
                                        head_address="10.0.0.5")
    assert head[:3] == ["/opt/v/bin/vllm", "serve", "/mnt/nvme/models/deepseek-r1"]
    expected = {"--tensor-parallel-size": "8", "--pipeline-parallel-size": "2", "--enable-expert-parallel": True,
                "--max-model-len": "32768", "--kv-cache-dtype": "fp8", "--gpu-memory-utilization": "0.9",
                "--served-model-name": "deepseek-r1", "--port": "8000", "--nnodes": "2",
                "--master-addr": "10.0.0.5", "--distributed-executor-backend": "mp"}
    assert expected.items() <= flags(head).items()
    assert flags(head)["--node-rank"] == "0" and "--headless" not in head
    assert flags(worker)["--node-rank"] == "1" and worker[-1] == "--headless"
    assert "--quantization" not in head  # native FP8 checkpoint: nothing to quantize


def test_single_node_distill_has_no_multi_node_flags():
    argv = serving_command.serve_argv(plan_of("dev-7b"), "vllm", "/opt/v", "/m")
    assert not {"--nnodes", "--master-addr", "--headless", "--kv-cache-dtype", "--enable-expert-parallel"} & set(argv)
    assert flags(argv)["--max-num-seqs"] == str(plan_of("dev-7b")["max_num_seqs"])


def test_sglang_gets_its_own_flag_names():
    plan = plan_of("prod-r1")
    argv = serving_command.serve_argv(plan, "sglang", "/opt/s", "/m", node_rank=1, head_address="10.0.0.5",
                                      master_port=5000, extra_args=["--trust-remote-code"])
    assert argv[:3] == ["/opt/s/bin/python", "-m", "sglang.launch_server"]
    found = flags(argv)
    assert {"--tp-size": "8", "--pp-size": "2", "--ep-size": "8", "--context-length": "32768",
            "--kv-cache-dtype": "fp8_e4m3", "--mem-fraction-static": "0.9", "--nnodes": "2", "--node-rank": "1",
            "--dist-init-addr": "10.0.0.5:5000"}.items() <= found.items()
    assert argv[-1] == "--trust-remote-code"


@pytest.mark.parametrize(("change", "kwargs", "message"), [
    ({"max_model_len": None}, {}, "the serving plan lacks max_model_len"),
    ({"nodes": 2, "data_parallel": 2}, {"head_address": "h"}, "is one replica"),
    ({"nodes": 2}, {}, "needs the head node's address"),
    ({"nodes": 2}, {"head_address": "h", "node_rank": 2}, "outside a copy of 2 nodes"),
])
def test_impossible_plans_are_refused(change, kwargs, message):
    plan = {**plan_of("dev-7b"), **change}
    with pytest.raises(ValueError, match=message):
        serving_command.serve_argv(plan, "vllm", "/v", "/m", **kwargs)
    with pytest.raises(ValueError, match="unknown engine"):
        serving_command.serve_argv(plan_of("dev-7b"), "tgi", "/v", "/m")


def test_systemd_exec_quotes_specifiers_and_variables():
    assert serving_command.systemd_exec(["/bin/x", "a b", "50%", "$HOME", 'q"']) == \
        '"/bin/x" "a b" "50%%" "$$HOME" "q\\""'


def test_plan_round_trips_through_json():
    plan = plan_of("prod-r1")
    assert serving_command.serve_argv(json.loads(json.dumps(plan)), "vllm", "/v", "/m", node_rank=1,
                                      head_address="x") == serving_command.serve_argv(plan, "vllm", "/v", "/m",
                                                                                       node_rank=1, head_address="x")


def test_copy_placement_groups_consecutive_hosts_with_the_first_as_head():
    hosts = ["a", "b", "c", "d"]
    placed = {h: serving_command.copy_placement(hosts, h, 2) for h in hosts}
    assert placed["a"] == {"rank": 0, "copy": 0, "head": "a", "peers": ["a", "b"]}
    assert placed["d"] == {"rank": 1, "copy": 1, "head": "c", "peers": ["c", "d"]}
    assert serving_command.copy_placement(["x"], "x", 1)["rank"] == 0
    with pytest.raises(ValueError, match="do not split into copies of 2"):
        serving_command.copy_placement(["a", "b", "c"], "a", 2)
    with pytest.raises(ValueError, match="not among the serving hosts"):
        serving_command.copy_placement(["a"], "z", 1)
