"""The `gpuinfra size` contract: JSON keys, exit codes, and one clear line per bad input."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from gpuinfra.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
EVALUATION_KEYS = {
    "model", "precision", "context_tokens", "concurrency", "instance_type", "gpu", "nodes", "gpus_per_node",
    "tensor_parallel", "pipeline_parallel", "expert_parallel", "feasible", "reasons", "weights_gib",
    "kv_cache_bytes_per_token", "per_gpu", "max_tokens_in_flight", "max_concurrency_at_context",
    "host_ram_gib_required", "nvme_gib_required", "needs_rdma", "decode_tokens_per_s_bound", "cost_per_hour_usd",
}
PER_GPU_KEYS = {"total_gib", "usable_gib", "weights_gib", "overhead_gib", "kv_cache_gib"}


def run(*argv: str, capsys) -> tuple[int, str, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, out.getvalue(), capsys.readouterr().err


def test_evaluation_json_has_every_contract_key(capsys):
    code, out, _ = run("size", "deepseek-r1", "--instance-type", "p5en.48xlarge", "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 0 and set(data) >= EVALUATION_KEYS and set(data["per_gpu"]) >= PER_GPU_KEYS
    assert data["feasible"] is True and data["reasons"] == []


def test_infeasible_hardware_exits_1_with_reasons(capsys):
    code, out, _ = run("size", "deepseek-r1", "--instance-type", "p5.48xlarge", "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 1 and data["feasible"] is False and data["reasons"]


def test_planner_json_shape(capsys):
    code, out, _ = run("size", "deepseek-r1-distill-llama-70b", "--context", "16384", "--concurrency", "8",
                       "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 0 and set(data) == {"request", "options", "rejected"}
    assert data["request"]["model"] == "deepseek-r1-distill-llama-70b"
    assert all(set(o) >= EVALUATION_KEYS for o in data["options"])
    assert all({"instance_type", "nodes", "reasons"} <= set(r) for r in data["rejected"])


def test_nothing_feasible_exits_1(capsys):
    code, out, _ = run("size", "deepseek-r1", "--precision", "bf16", "--max-nodes", "1", "--json", capsys=capsys)
    assert code == 1 and json.loads(out)["options"] == []


def test_on_prem_gpu_and_model_config(capsys):
    code, out, _ = run("size", "--model-config", str(FIXTURES / "llama-3-8b-config.json"), "--context", "8192",
                       "--gpu", "RTX-4090", "--gpus-per-node", "1", "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 0 and data["gpu"] == "RTX-4090" and data["instance_type"] is None


def test_human_output_shows_verdict_and_memory_bar(capsys):
    code, out, _ = run("size", "deepseek-r1", "--instance-type", "p5en.48xlarge", capsys=capsys)
    assert code == 0 and "FITS" in out and "weights 79.3 GiB" in out and "KV cache" in out and "█" in out
    code, out, _ = run("size", "deepseek-r1-distill-qwen-7b", "--max-nodes", "1", capsys=capsys)
    assert code == 0 and "Meet the SLA, cheapest first" in out and "Not feasible" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["size", "deepseek-r2"], "error: MODEL: unknown model 'deepseek-r2': did you mean deepseek-r1"),
        (["size", "deepseek-r1", "--context", "0"], "error: --context: must be greater than 0, got 0"),
        (["size", "deepseek-r1", "--concurrency", "-4"], "error: --concurrency: must be greater than 0, got -4"),
        (["size", "deepseek-r1", "--context", "lots"], "error: --context: must be a whole number, got 'lots'"),
        (["size", "deepseek-r1", "--gpu-memory-utilization", "1.5"], "must be at most 1, got 1.5"),
        (["size", "deepseek-r1", "--instance-type", "p9.48xlarge"], "unknown instance type 'p9.48xlarge'"),
        (["size", "deepseek-r1", "--gpu", "H1000", "--gpus-per-node", "8"], "error: --gpu: unknown GPU 'H1000'"),
        (["size", "deepseek-r1", "--gpu", "H100"], "error: --gpus-per-node: is required with --gpu"),
        (["size", "deepseek-r1", "--gpu", "H100", "--gpus-per-node", "8", "--instance-type", "p5.48xlarge"],
         "give either --instance-type or --gpu, not both"),
        (["size", "deepseek-r1-distill-qwen-7b", "--tensor-parallel", "8"],
         "error: --tensor-parallel: Total number of attention heads (28) must be divisible by "
         "tensor parallel size (8)"),
        (["size", "deepseek-r1-distill-llama-8b", "--tensor-parallel", "8", "--instance-type", "g6e.12xlarge"],
         "error: --tensor-parallel: 8 exceeds the 4 GPUs per node"),
        (["size", "deepseek-r1", "--context", "200000"],
         "context_tokens 200000 exceeds the model's max_position_embeddings 163840"),
        (["size", "deepseek-r1-distill-llama-70b", "--attention-parallel", "dp"],
         "attention_parallel dp needs a mixture-of-experts model"),
        (["size", "deepseek-r1", "--precision", "fp4"], "argument --precision: invalid choice: 'fp4'"),
        (["size", "deepseek-r1", "--nodes", "2"], "error: --nodes: needs --instance-type or --gpu"),
        (["size"], "error: MODEL: give a catalog model or --model-config PATH"),
        (["launch"], "invalid choice: 'launch'"),
    ],
)
def test_bad_input_exits_2_with_one_clear_line_per_problem(argv, expected, capsys):
    code, out, err = run(*argv, capsys=capsys)
    assert code == 2 and out == ""
    assert expected in err, err
    assert "Traceback" not in err


def test_every_problem_is_reported_at_once(capsys):
    code, _, err = run("size", "deepseek-r1", "--context", "0", "--concurrency", "x", "--instance-type", "p9",
                       "--gpu-memory-utilization", "-1", capsys=capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 4, err


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{broken", "not valid JSON (line 1, column 2"),
        ('{"model_type": "llama", "hidden_size": 4096}', "num_hidden_layers: is required"),
        ('{"model_type": "bert"}', "unsupported model_type 'bert'"),
    ],
)
def test_malformed_config_json_is_bad_input(tmp_path, content, expected, capsys):
    path = tmp_path / "config.json"
    path.write_text(content)
    code, _, err = run("size", "--model-config", str(path), capsys=capsys)
    assert code == 2 and expected in err and "Traceback" not in err


def test_installed_console_script_runs_as_a_real_process():
    exe = Path(sys.executable).with_name("gpuinfra")
    result = subprocess.run([str(exe), "size", "deepseek-r1", "--instance-type", "p5.48xlarge", "--nodes", "2",
                             "--json"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pipeline_parallel"] == 2
    bad = subprocess.run([str(exe), "size", "nope"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_size_json_carries_the_serving_plan_for_on_prem_hosts(capsys):
    code, out, _ = run("size", "deepseek-r1-distill-llama-70b", "--gpu", "H100-SXM-80GB", "--gpus-per-node", "8",
                       "--precision", "fp8", "--json", capsys=capsys)
    serving = json.loads(out)["serving"]
    assert code == 0 and serving["engine"] == "vllm"
    assert serving["hf_repo"] == "deepseek-ai/DeepSeek-R1-Distill-Llama-70B"
    assert serving["quantization"] == "fp8" and serving["tensor_parallel"] * serving["pipeline_parallel"] >= 1
    code, out, _ = run("size", "--model-config", str(FIXTURES / "llama-3-8b-config.json"), "--gpu", "RTX-4090",
                       "--gpus-per-node", "1", "--context", "8192", "--json", capsys=capsys)
    assert json.loads(out)["serving"]["hf_repo"] is None
