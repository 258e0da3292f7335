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


def _is_target(run: dict, batch: dict) -> bool:
    """The closed batches the 15 % target is for: vLLM's default async scheduling, answers of chat length.
    Two side experiments are not (performance-model.md): scheduling made synchronous, two-token answers."""
    return run["spec"].get("async_scheduling") is not False and batch["max_tokens"] >= 64


SPEED = [(name, batch["requests"]) for name, run in RESULTS.items()
         if (run.get("workloads") or {}).get("closed_batch") for batch in run["workloads"]["closed_batch"]
         if _is_target(run, batch)]


def test_the_speed_target_covers_every_measured_size_and_concurrency():
    covered = {(RESULTS[name]["spec"]["model_config"], concurrency) for name, concurrency in SPEED}
    assert {c for _, c in covered} == {1, 32, 128}
    assert len({config for config, _ in covered}) >= 4  # 1.5B, 8B, 32B, 70B FP8


@pytest.mark.parametrize(("name", "concurrency"), SPEED)
def test_closed_batch_speed_within_15_percent(name, concurrency):
    """TTFT p99, mean inter-token latency and output tokens/s, each within 15 % of the measured batch (the
    median repeat where it was repeated), with the run's own CUDA-graph sizes."""
    run = RESULTS[name]
    batch = next(b for b in run["workloads"]["closed_batch"] if b["requests"] == concurrency)
    request, evaluation = engine_answer(run["spec"], concurrency=concurrency)
    capture = (run["spec"].get("compilation_config") or {}).get("max_cudagraph_capture_size")
    got = predict(request, evaluation, H200, Workload(input_tokens=batch["prompt_len"],
                                                      output_tokens=batch["max_tokens"], concurrency=concurrency),
                  max_seqs=run["spec"]["max_num_seqs"], capture_tokens=capture)
    assert got.basis.startswith("measured")
    assert got.output_tokens_per_s == pytest.approx(batch["output_tokens_per_s"], rel=0.15)
    assert got.ttft_s == pytest.approx(batch["ttft_s"]["p99"], rel=0.15)
    assert got.inter_token_latency_s == pytest.approx(batch["itl_s"]["mean"], rel=0.15)


def test_small_models_on_short_prompts_are_launch_bound_as_measured():
    """The 1.5B model's 1,024-token prefill costs what its 3,072-token one does (every kernel launched from
    Python above the 512-token CUDA graphs) and about half with graphs up to 2,048 tokens: the model within
    20 % of each median, for the default graphs and for the run that captured larger ones (the worst point,
    -17 %, is 1,536 tokens with graphs, where the step leaves the launch floor)."""
    for name in ("t-qwen-1.5b", "t-qwen-1.5b-cg2048"):
        run = RESULTS[name]
        request, evaluation = engine_answer(run["spec"])
        capture = (run["spec"].get("compilation_config") or {}).get("max_cudagraph_capture_size")
        for sample in run["workloads"]["prefill_sweep"]:
            got = predict(request, evaluation, H200, Workload(input_tokens=sample["prompt_len"], output_tokens=1,
                                                              concurrency=1),
                          max_seqs=run["spec"]["max_num_seqs"], capture_tokens=capture)
            assert got.ttft_s == pytest.approx(sample["ttft_median_s"], rel=0.2), (name, sample["prompt_len"])
