"""The engine against real vLLM 0.26.0 on one H200 (the committed runs of docs/validation/h200-x1-vllm-0.26).

Memory: for every measured configuration (dense GQA 1.5B-32B, 70B FP8, FP8 weights, FP8 KV cache, token
budgets 2k-32k, eager and CUDA-graph modes, and the DeepSeek-V3 MLA layout cut to 8 layers), the engine's
KV cache in GiB and in tokens must be within 3 % of what vLLM allocated. Speed: the performance model's
output tokens/s for the measured closed batches of the dense models (bf16 and 70B FP8) within 15 %.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from gpuinfra.architecture import parse_hf_config
from gpuinfra.catalog import find_gpu, load_catalog
from gpuinfra.performance import Workload, predict
from gpuinfra.sizing import GIB, Hardware, ModelSpec, build_request, evaluate

REPO = Path(__file__).resolve().parents[2]
RUNS = REPO / "docs/validation/h200-x1-vllm-0.26"
RESULTS = json.loads((RUNS / "results.json").read_text())["results"]
H200 = find_gpu("H200-SXM-141GB")


def engine_answer(spec: dict, concurrency: int = 1):
    arch = parse_hf_config(json.loads((REPO / spec["model_config"]).read_text()))
    request = build_request(model=ModelSpec(name=spec["name"], architecture=arch),
                            precision=spec.get("quantization") or None,
                            kv_cache_dtype=spec.get("kv_cache_dtype") or "auto",
                            context_tokens=spec["max_model_len"], concurrency=concurrency,
                            gpu_memory_utilization=spec["gpu_memory_utilization"],
                            max_num_batched_tokens=spec["max_num_batched_tokens"])
    return request, evaluate(request, Hardware(gpu=H200, gpus_per_node=1))


MEASURED = sorted(name for name, run in RESULTS.items() if run.get("memory"))


def test_every_kind_of_run_is_covered():
    specs = [RESULTS[name]["spec"] for name in MEASURED]
    assert any(s.get("enforce_eager") for s in specs) and any(not s.get("enforce_eager") for s in specs)
    assert any(s.get("quantization") == "fp8" for s in specs) and any(s.get("kv_cache_dtype") == "fp8" for s in specs)
    assert len({s["max_num_batched_tokens"] for s in specs}) >= 3 and len(MEASURED) >= 12


@pytest.mark.parametrize("name", MEASURED)
def test_kv_cache_within_3_percent_of_vllm(name):
    run = RESULTS[name]
    memory = run["memory"]
    _, evaluation = engine_answer(run["spec"])
    assert evaluation.per_gpu.total_gib == pytest.approx(memory["init_total_bytes"] / GIB, abs=0.01)
    assert evaluation.per_gpu.kv_cache_gib == pytest.approx(memory["available_kv_cache_memory_bytes"] / GIB,
                                                             rel=0.03)
    assert evaluation.max_tokens_in_flight == pytest.approx(memory["kv_tokens"], rel=0.03)
    assert evaluation.per_gpu.weights_gib == pytest.approx(memory["weights_bytes"] / GIB, rel=0.05)


def test_mla_layout_within_3_percent_of_vllm():
    """The MLA run logged its figures before its timeout (results.json has no parsed memory for it)."""
    log = (RUNS / "raw/runs/m-mla-v3-8l.log").read_text()
    weights = float(re.search(r"Model loading took ([\d.]+) GiB", log).group(1))
    kv = float(re.search(r"Available KV cache memory: ([\d.]+) GiB", log).group(1))
    tokens = int(re.search(r"GPU KV cache size: ([\d,]+) tokens", log).group(1).replace(",", ""))
    _, evaluation = engine_answer(RESULTS["m-mla-v3-8l"]["spec"])
    assert evaluation.per_gpu.weights_gib == pytest.approx(weights, rel=0.03)
    assert evaluation.per_gpu.kv_cache_gib == pytest.approx(kv, rel=0.03)
    assert evaluation.max_tokens_in_flight == pytest.approx(tokens, rel=0.03)


def test_the_catalog_pins_the_calibrated_engine():
    assert load_catalog().software.inference_engines["vllm"].version == RESULTS[MEASURED[0]]["vllm_version"]


SPEED = [(name, batch["requests"]) for name, run in RESULTS.items()
         if (run.get("workloads") or {}).get("closed_batch") for batch in run["workloads"]["closed_batch"]]


@pytest.mark.parametrize(("name", "concurrency"), SPEED)
def test_closed_batch_throughput_within_15_percent(name, concurrency):
    run = RESULTS[name]
    batch = next(b for b in run["workloads"]["closed_batch"] if b["requests"] == concurrency)
    request, evaluation = engine_answer(run["spec"], concurrency=concurrency)
    got = predict(request, evaluation, H200, Workload(input_tokens=batch["prompt_len"],
                                                      output_tokens=batch["max_tokens"], concurrency=concurrency),
                  max_seqs=run["spec"]["max_num_seqs"])
    assert got.basis.startswith("measured")
    assert got.output_tokens_per_s == pytest.approx(batch["output_tokens_per_s"], rel=0.15)
