"""Serving speed: time to first token, inter-token latency and output tokens/s for a closed batch.

A closed batch is C requests of N prompt tokens submitted together, each generating M tokens. The model:

* prefill is compute-bound: ``2 x active params x tokens`` plus causal attention ``2 x layers x N^2 x
  heads x head_dim`` per request, at ``prefill_efficiency`` of the GPU's dense tensor throughput, split over
  the TP ranks (pipeline stages run one after another for one request); the C prompts are prefilled before
  the batch decodes, so the last request's first token comes after all C prefills;
* a decode step reads each stage's weights once and every sequence's KV cache, at
  ``decode_bandwidth_efficiency`` of HBM bandwidth, plus a fixed ``decode_step_overhead_ms`` (scheduler,
  sampling, kernel launches), or is compute-bound when the batch is large, whichever is slower;
* output tokens/s = C x M / (all prefills + M decode steps at the batch's mean context N + M/2).

The three efficiencies are calibrated per GPU from measured vLLM runs and stored in the catalog with the
run they came from; a GPU never measured gets spec-derived defaults, labelled as such in ``basis``.
Mixture-of-experts speed is labelled unmeasured: the calibration runs use random weights, whose router
does not route like a trained one.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from gpuinfra.catalog import Gpu, GpuPerformance, find_gpu

if TYPE_CHECKING:  # sizing embeds Performance in its Evaluation, so it is imported lazily here
    from gpuinfra.sizing import Evaluation, PlanResult, SizingRequest

# Spec-derived defaults for a GPU never measured: typical shares of peak for vLLM with CUDA graphs.
DERIVED = GpuPerformance(prefill_efficiency=0.5, decode_bandwidth_efficiency=0.7, decode_step_overhead_ms=5.0,
                         source="derived from the GPU's spec (not measured)")
DEFAULT_STREAM_TOKENS_PER_S = 10.0  # about reading speed: the floor when no SLA names one


class Workload(BaseModel):
    """The load a performance prediction is for: a closed batch of CONCURRENCY requests."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    input_tokens: int = Field(gt=0, description="Prompt tokens per request")
    output_tokens: int = Field(gt=0, description="Generated tokens per request")
    concurrency: int = Field(gt=0, description="Requests submitted together")


class Performance(BaseModel):
    """The `performance` object of `gpuinfra size --json` (keys are a contract)."""

    ttft_s: float = Field(description="Time to first token of the last request of the batch (the worst)")
    inter_token_latency_s: float = Field(description="Mean time between output tokens of one stream")
    output_tokens_per_s: float = Field(description="concurrency x output tokens / wall time of the batch")
    stream_tokens_per_s: float = Field(description="Output tokens/s one stream sees while decoding (1 / ITL)")
    input_tokens: int
    output_tokens: int
    concurrency: int
    basis: str = Field(description="Where the efficiencies come from: a measured run or the GPU's spec")
    notes: list[str]


def efficiencies(gpu: Gpu) -> GpuPerformance:
    return gpu.performance or DERIVED


def _peak_flops(gpu: Gpu, precision: str) -> float:
    fp8 = precision == "fp8" and gpu.fp8_tensor_cores and gpu.fp8_dense_tflops
    return (gpu.fp8_dense_tflops if fp8 else gpu.bf16_dense_tflops) * 1e12


def prefill_seconds(request: SizingRequest, evaluation: Evaluation, gpu: Gpu, tokens: int) -> float:
    """One request's prefill of TOKENS prompt tokens on one model copy."""
    arch = request.model.architecture
    attention = 2 * arch.layers * tokens * tokens * arch.heads * arch.head_dim
    flops = 2 * arch.active_params * tokens + attention
    return flops / (_peak_flops(gpu, request.effective_precision.value) * efficiencies(gpu).prefill_efficiency
                    * evaluation.tensor_parallel)


def decode_step_seconds(request: SizingRequest, evaluation: Evaluation, gpu: Gpu, batch: int,
                        context: float) -> float:
    """One decode step of BATCH sequences at mean CONTEXT tokens on one model copy."""
    from gpuinfra.sizing import GIB

    arch = request.model.architecture
    perf = efficiencies(gpu)
    weights = evaluation.per_gpu.weights_gib * GIB
    if arch.is_moe:  # a token reads its active experts only (unmeasured: see the module docstring)
        weights *= arch.active_params / arch.total_params
    kv = evaluation.kv_cache_bytes_per_token * context * batch
    memory_s = evaluation.pipeline_parallel * (weights + kv) / (gpu.memory_bandwidth_gbs * 1e9
                                                               * perf.decode_bandwidth_efficiency)
    compute_s = (2 * arch.active_params * batch) / (_peak_flops(gpu, request.effective_precision.value)
                                                   * perf.prefill_efficiency * evaluation.tensor_parallel)
    return max(memory_s, compute_s) + perf.decode_step_overhead_ms / 1000


def predict(request: SizingRequest, evaluation: Evaluation, gpu: Gpu, workload: Workload) -> Performance:
    """TTFT, ITL and output tokens/s for WORKLOAD spread evenly over the evaluation's model copies."""
    copies = max(1, evaluation.replicas) * max(1, evaluation.data_parallel)
    per_copy = math.ceil(workload.concurrency / copies)
    one_prefill = prefill_seconds(request, evaluation, gpu, workload.input_tokens)
    all_prefills = per_copy * one_prefill
    step = decode_step_seconds(request, evaluation, gpu, per_copy,
                               workload.input_tokens + workload.output_tokens / 2)
    wall = all_prefills + workload.output_tokens * step
    notes = []
    if request.model.architecture.is_moe:
        notes.append("mixture-of-experts speed is unmeasured: calibration runs use random router weights")
    if evaluation.nodes > 1:
        notes.append("pipeline stages over the network: inter-node transfer time is not modelled")
    return Performance(
        ttft_s=round(all_prefills, 4),  # prefill yields the first token
        inter_token_latency_s=round(step, 5),
        output_tokens_per_s=round(workload.concurrency * workload.output_tokens / wall, 1),
        stream_tokens_per_s=round(1 / step, 1),
        input_tokens=workload.input_tokens,
        output_tokens=workload.output_tokens,
        concurrency=workload.concurrency,
        basis=efficiencies(gpu).source,
        notes=notes,
    )


class Sla(BaseModel):
    """What a planner option must meet: TTFT p99 (the closed batch's last first token) and a per-stream
    output-speed floor."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    ttft_p99_s: float | None = Field(None, gt=0, description="None: no TTFT target")
    min_stream_tokens_per_s: float = Field(DEFAULT_STREAM_TOKENS_PER_S, gt=0)
    floor_is_default: bool = Field(True, description="The floor was not asked for: say so in the output")


def default_workload(request: SizingRequest) -> Workload:
    """The load to rank by when none is given: the request's concurrency, prompts of half the context (at
    most 2048 tokens) and answers of up to 1024 tokens within the context."""
    input_tokens = max(1, min(2048, request.context_tokens // 2))
    output_tokens = max(1, min(1024, request.context_tokens - input_tokens))
    return Workload(input_tokens=input_tokens, output_tokens=output_tokens, concurrency=request.concurrency)


def sla_reasons(performance: Performance, sla: Sla) -> list[str]:
    reasons = []
    if sla.ttft_p99_s is not None and performance.ttft_s > sla.ttft_p99_s:
        reasons.append(f"TTFT {performance.ttft_s:.2f} s exceeds the {sla.ttft_p99_s:g} s SLA at "
                       f"{performance.concurrency} requests together")
    if performance.stream_tokens_per_s < sla.min_stream_tokens_per_s:
        reasons.append(f"{performance.stream_tokens_per_s:.1f} output tokens/s per stream, below the "
                       f"{sla.min_stream_tokens_per_s:g} tokens/s floor")
    return reasons


def rank_by_sla(result: PlanResult, request: SizingRequest, workload: Workload, sla: Sla) -> PlanResult:
    """RESULT with every option's performance at WORKLOAD; options that miss the SLA move to the rejected
    list with their reasons; the rest are ranked by $/h, with $ per million output tokens at that load."""
    from gpuinfra.sizing import Rejection

    options, rejected = [], list(result.rejected)
    for option in result.options:
        performance = predict(request, option, find_gpu(option.gpu), workload)
        cost_per_million = (round(option.cost_per_hour_usd / (performance.output_tokens_per_s * 3600) * 1e6, 4)
                            if option.cost_per_hour_usd and performance.output_tokens_per_s > 0 else None)
        option = option.model_copy(update={"performance": performance,
                                           "cost_per_million_output_tokens_at_load_usd": cost_per_million})
        reasons = sla_reasons(performance, sla)
        if reasons:
            rejected.append(Rejection(instance_type=option.instance_type or option.gpu, nodes=option.nodes,
                                      reasons=reasons))
        else:
            options.append(option)
    options.sort(key=lambda e: (e.cost_per_hour_usd is None, e.cost_per_hour_usd or 0.0, e.instance_type))
    summary = {**result.request, "workload": workload.model_dump(), "sla": sla.model_dump()}
    return result.model_copy(update={"options": options, "rejected": rejected, "request": summary})
