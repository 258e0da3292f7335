"""The preflight and node_validation roles run for real with ansible-playbook (local connection) on this
GPU-less machine: CPU-only mode skips cleanly; with a stand-in `nvidia-smi` (a shell script printing a
real H100's recorded output, named as a stand-in here) the sizing and acceptance paths run end to end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from gpuinfra.contract import host_constants

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
RECORDED_CSV = (ROOT / "docs" / "validation" / "h100-x1" / "nvidia-smi-query-gpu.csv").read_text().strip()
BIN = Path(sys.executable).parent


def playbook(tmp_path: Path, group_vars: dict, *extra: str, stand_in_gpu: bool = False,
             book: Path = ANSIBLE / "playbooks" / "validate.yml") -> subprocess.CompletedProcess:
    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    inventory.write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {"hosts": {"node1": host},
                                                                              "vars": group_vars}}}}))
    path = [str(BIN)]
    if stand_in_gpu:
        fake = tmp_path / "bin"
        fake.mkdir(exist_ok=True)
        script = fake / "nvidia-smi"
        script.write_text("#!/bin/sh\n# stand-in for nvidia-smi: prints a real H100's recorded answer\n"
                          f"case \"$*\" in *query-gpu*) echo '{RECORDED_CSV}' ;; esac\n")
        script.chmod(0o755)
        path.insert(0, str(fake))
    env = {**os.environ, "PATH": ":".join([*path, os.environ["PATH"]]), "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_NOCOLOR": "1"}
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory), str(book),
            "-e", f"node_validation_report_dir={tmp_path / 'reports'}", "-e",
            f"node_validation_work_dir={tmp_path / 'work'}", *extra]
    (tmp_path / "reports").mkdir(exist_ok=True)
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=ANSIBLE)


pytestmark = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has a real GPU")
EXPECTED_H100 = {"gpu": "H100-SXM-80GB", "gpu_aliases": ["H100-SXM-80GB", "nvidia h100 80gb hbm3"], "gpu_count": 1,
                 "gpu_memory_gib": 80, "memory_bandwidth_gbs": 3350, "bf16_dense_tflops": 989}


def test_cpu_only_host_skips_with_a_clear_message(tmp_path):
    result = playbook(tmp_path, {"preflight_cpu_only": True, "gpuinfra_request": {"model": "deepseek-r1"}})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "node1 is CPU-only (preflight_cpu_only): GPU and sizing checks skipped" in result.stdout
    assert "no GPU and node_validation_cpu_only is set; node acceptance skipped" in result.stdout
    assert "changed=0" in result.stdout


def test_a_host_without_gpus_is_refused_unless_declared_cpu_only(tmp_path):
    result = playbook(tmp_path, {"gpuinfra_request": {"model": "deepseek-r1"}})
    assert result.returncode == 2
    assert "node1 shows no NVIDIA GPU on PCI and nvidia-smi is missing or failed" in " ".join(result.stdout.split())


def test_preflight_refuses_what_the_sizing_engine_refuses(tmp_path):
    result = playbook(tmp_path, {"gpuinfra_request": {"model": "deepseek-r1"}, "gpuinfra_expected_hardware":
                                 EXPECTED_H100}, stand_in_gpu=True)
    assert result.returncode == 2
    assert "node1 (1 x NVIDIA H100 80GB HBM3) cannot serve deepseek-r1: weights need 626.9 GiB per GPU" in \
        " ".join(result.stdout.split())


def test_preflight_names_what_is_short_against_the_expected_hardware(tmp_path):
    expected = {**EXPECTED_H100, "gpu_count": 4}
    result = playbook(tmp_path, {"gpuinfra_request": {"model": "deepseek-r1-distill-qwen-7b"},
                                 "gpuinfra_expected_hardware": expected}, stand_in_gpu=True)
    assert result.returncode == 2
    assert "node1 needs 4 x 80 GiB GPUs (H100-SXM-80GB), host has 1 x 79.65 GiB" in " ".join(result.stdout.split())


def test_acceptance_rejects_a_node_whose_measurements_cannot_run(tmp_path):
    """node_validation alone (this 2-core build machine is rightly refused by preflight's vCPU check)."""
    book = tmp_path / "acceptance.yml"
    book.write_text(yaml.safe_dump([{"name": "acceptance", "hosts": "gpu_nodes", "gather_facts": False,
                                     "roles": ["node_validation"]}]))
    # A role on its own reads the contract's constants from the inventory (gpuinfra inventory writes them; in a
    # run, preflight shares them).
    result = playbook(tmp_path, {"gpuinfra_expected_hardware": EXPECTED_H100, "node_validation_min_driver": "570.26",
                                 "gpuinfra_constants": host_constants()},
                      "-e", "node_validation_python=/bin/false", stand_in_gpu=True, book=book)
    joined = " ".join(result.stdout.split())
    assert result.returncode == 2, joined
    assert "node rejected: measurements: exited 1 with no output" in joined
    written = json.loads((tmp_path / "reports" / "node1.json").read_text())
    assert written["report"]["passed"] is False


def test_preflight_hands_the_request_to_the_engine_whole(tmp_path):
    """The preflight runs `gpuinfra size --request-json` with the inventory's request as it is: a stand-in
    CLI (named as one: it records its arguments, then runs the real gpuinfra) shows attention_parallel and
    every other field arrive unchanged."""
    request = {"model": "deepseek-r1", "precision": "fp8", "kv_cache_dtype": "fp8", "context_tokens": 16384,
               "concurrency": 2, "attention_parallel": "dp", "gpu_memory_utilization": 0.85}
    record = tmp_path / "argv.json"
    recorder = tmp_path / "gpuinfra-recording"
    recorder.write_text(f"#!{sys.executable}\n# stand-in: records its argv, then runs the real gpuinfra\n"
                        "import json, sys\n"
                        f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
                        "from gpuinfra.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    recorder.chmod(0o755)
    result = playbook(tmp_path, {"gpuinfra_request": request, "gpuinfra_expected_hardware": EXPECTED_H100,
                                 "preflight_gpuinfra_cli": str(recorder)}, stand_in_gpu=True)
    argv = json.loads(record.read_text())
    assert argv[:2] == ["size", "--request-json"], argv
    assert json.loads(argv[2]) == request
    assert result.returncode == 2  # R1 on one H100 is refused, by the engine, for the request as given
    assert "cannot serve deepseek-r1" in " ".join(result.stdout.split())
