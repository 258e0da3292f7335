"""Serving speed: time to first token, inter-token latency and output tokens/s for a closed batch.

A closed batch is C requests of N prompt tokens submitted together, each generating M tokens. It is
simulated step by step as vLLM's scheduler runs it (chunked prefill, FIFO, a token budget of
max_num_batched_tokens per step, at most max_num_seqs in flight). One step costs

* compute: ``2 x active params x tokens in the step`` plus causal attention of its prompt chunks, at
  ``prefill_efficiency`` of the GPU's dense tensor throughput, split over the TP ranks;
* memory: each pipeline stage's weights, at ``weight_bandwidth_efficiency`` of HBM bandwidth, plus the KV
  cache of every decoding sequence, at ``kv_bandwidth_efficiency`` (attention kernels read it less
  efficiently than GEMMs read weights); stages run one after another for a token;
* launch: the host's time to launch the step, per layer. A pure decode step is replayed from one CUDA graph
  (no floor); a step with prompt chunks is replayed from piecewise graphs (attention launched from Python,
  ``graphed_layer_launch_us``) up to the largest captured size (min(2 x max_num_seqs, 512) tokens in vLLM
  0.26, catalog software.yaml), above it every kernel is launched from Python (``eager_layer_launch_us``).
  Small models on short prompts are launch-bound: the 1.5B model's 1,024-token prefill takes as long as a
  3,072-token one, and halves when graphs are captured up to 2,048 tokens (docs/validation);
* the largest of the three, plus a fixed ``step_overhead_ms`` (scheduler) and
  ``per_sequence_overhead_us`` for each sequence in the step (sampling, bookkeeping).

A request that goes on decoding after a prompt step too long for CUDA graphs sees its first token only once
the engine has launched the next step too (async scheduling hands out step N's tokens after launching step
N + 1), so on a launch-bound prefill its first token comes one graphed launch after the step (measured).

``output_tokens_per_s`` = C x M / the batch's wall time, prefill included; ``ttft_s`` is the 99th percentile
over the batch; ``inter_token_latency_s`` the mean over requests of (last token - first token) / (M - 1).

The five figures are calibrated per GPU from measured vLLM runs (benchmarks/calibrate_performance.py)
and stored in the catalog with the run they came from; a GPU never measured gets spec-derived defaults,
labelled as such in ``basis``. Mixture-of-experts speed is labelled unmeasured: the calibration runs use
random weights, whose router does not route like a trained one. Tensor-parallel all-reduce and
inter-node pipeline transfers are not modelled yet (no multi-GPU run so far): results say so in ``notes``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from gpuinfra.catalog import Gpu, GpuPerformance, find_gpu, load_catalog

if TYPE_CHECKING:  # sizing embeds Performance in its Evaluation, so it is imported lazily here
    from gpuinfra.sizing import Evaluation, SizingRequest, Survey

# Spec-derived defaults for a GPU never measured: typical shares of peak for vLLM with CUDA graphs.
# The launch costs are the host's, not the GPU's: the H200 host's measured figures, rounded up.
DERIVED = GpuPerformance(prefill_efficiency=0.5, weight_bandwidth_efficiency=0.75, kv_bandwidth_efficiency=0.6,
                         step_overhead_ms=3.0, per_sequence_overhead_us=20.0, graphed_layer_launch_us=300.0,
                         eager_layer_launch_us=700.0, source="derived from the GPU's spec (not measured)")
DEFAULT_STREAM_TOKENS_PER_S = 10.0  # about reading speed: the floor when no SLA names one


class Workload(BaseModel):
    """The load a performance prediction is for: a closed batch of CONCURRENCY requests."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    input_tokens: int = Field(gt=0, description="Prompt tokens per request")
    output_tokens: int = Field(gt=0, description="Generated tokens per request")
    concurrency: int = Field(gt=0, description="Requests submitted together")


class Performance(BaseModel):
    """The `performance` object of `gpuinfra size --json` (keys are a contract)."""

    ttft_s: float = Field(description="99th percentile time to first token over the batch's requests")
    inter_token_latency_s: float = Field(description="Mean time between output tokens of a stream, over requests")
    output_tokens_per_s: float = Field(description="concurrency x output tokens / wall time of the batch")
    stream_tokens_per_s: float = Field(description="Output tokens/s one stream sees while decoding (1 / ITL)")
    input_tokens: int
    output_tokens: int
    concurrency: int
    basis: str = Field(description="Where the efficiencies come from: a measured run or the GPU's spec")
    notes: list[str]


def efficiencies(gpu: Gpu) -> GpuPerformance:
    return gpu.performance or DERIVED


def _capture_tokens(max_num_seqs: int) -> int:
    capture = load_catalog().software.inference_engines["vllm"].cudagraph_capture
    assert capture is not None, "the pinned vLLM has no cudagraph_capture in software.yaml"
    return capture.capture_tokens(max_num_seqs)


def _peak_flops(gpu: Gpu, precision: str) -> float:
    fp8 = precision == "fp8" and gpu.fp8_tensor_cores and gpu.fp8_dense_tflops
    return (gpu.fp8_dense_tflops if fp8 else gpu.bf16_dense_tflops) * 1e12


@dataclass(frozen=True)
class StepCost:
    """What one engine step of one model copy costs: compute-bound work overlapped with memory reads."""

    active_params: float
    attention_flops_per_token_position: float  # causal attention: flops per (prompt token x earlier token)
    weights_bytes: float  # read once per step by every stage
    kv_bytes_per_token: float  # per GPU
    pipeline_parallel: int
    tensor_parallel: int
    layers: int
    capture_tokens: int  # the largest step replayed from CUDA graphs
    peak_flops: float
    bandwidth: float
    fp8: bool  # FP8 weights on FP8 tensor cores: their own efficiencies where measured

    @classmethod
    def of(cls, request: SizingRequest, evaluation: Evaluation, gpu: Gpu, *, max_seqs: int | None = None,
           capture_tokens: int | None = None) -> StepCost:
        """The step cost of EVALUATION's copy, served with MAX_SEQS (default: the serving plan's) and the
        engine's default CUDA-graph sizes unless CAPTURE_TOKENS is given."""
        from gpuinfra.sizing import GIB

        arch = request.model.architecture
        weights = evaluation.per_gpu.weights_gib * GIB
        if arch.is_moe:  # a token reads its active experts only (unmeasured: see the module docstring)
            weights *= arch.active_params / arch.total_params
        return cls(active_params=arch.active_params,
                   attention_flops_per_token_position=4 * arch.layers * arch.heads * arch.head_dim,
                   weights_bytes=weights, kv_bytes_per_token=evaluation.kv_cache_bytes_per_token,
                   pipeline_parallel=evaluation.pipeline_parallel, tensor_parallel=evaluation.tensor_parallel,
                   layers=arch.layers,
                   capture_tokens=capture_tokens or _capture_tokens(max_seqs or evaluation.max_num_seqs),
                   peak_flops=_peak_flops(gpu, request.effective_precision.value),
                   bandwidth=gpu.memory_bandwidth_gbs * 1e9,
                   fp8=request.effective_precision.value == "fp8" and bool(gpu.fp8_dense_tflops))

    def seconds(self, perf: GpuPerformance, *, decode_seqs: int, decode_context: float,
                prefill: list[tuple[int, int]]) -> float:
        """A step decoding DECODE_SEQS sequences (DECODE_CONTEXT tokens of KV in all) and prefilling the
        chunks PREFILL, each (tokens, tokens already in the cache before the chunk)."""
        tokens = decode_seqs + sum(chunk for chunk, _ in prefill)
        attention = sum(self.attention_flops_per_token_position * chunk * (start + chunk / 2)
                        for chunk, start in prefill)
        prefill_efficiency, weight_efficiency = perf.prefill_efficiency, perf.weight_bandwidth_efficiency
        if self.fp8:
            prefill_efficiency = getattr(perf, "fp8_prefill_efficiency", None) or prefill_efficiency
            weight_efficiency = getattr(perf, "fp8_weight_bandwidth_efficiency", None) or weight_efficiency
        compute = (2 * self.active_params * tokens + attention) / (self.peak_flops * prefill_efficiency
                                                                  * self.tensor_parallel)
        memory = self.pipeline_parallel * (self.weights_bytes / weight_efficiency
                                           + self.kv_bytes_per_token * decode_context / perf.kv_bandwidth_efficiency
                                           ) / self.bandwidth
        sequences = decode_seqs + len(prefill)
        launch = self.launch_s(perf, tokens=tokens, prefill=bool(prefill))
        return (max(compute, memory, launch) + perf.step_overhead_ms / 1000
                + sequences * perf.per_sequence_overhead_us / 1e6)

    def launch_s(self, perf: GpuPerformance, *, tokens: int, prefill: bool) -> float:
        """The host's time to launch a step of TOKENS tokens (with prompt chunks when PREFILL)."""
        if tokens > self.capture_tokens:
            return self.layers * perf.eager_layer_launch_us / 1e6
        return self.layers * perf.graphed_layer_launch_us / 1e6 if prefill else 0.0

    def first_token_visible_s(self, perf: GpuPerformance, *, step_start: float, step_end: float, tokens: int) -> float:
        """When a request whose prompt ended in the step [STEP_START, STEP_END] sees its first token, if it
        goes on decoding. After a step too long for CUDA graphs, only once the next step (piecewise graphs
        for the new sequence) is launched too; after a graphed step, at its end. An empirical rule: it
        matches the lone 1,024-token requests of the 1.5B and 8B runs with and without graphs up to 2,048
        tokens (docs/validation/h200-x1-vllm-0.26/performance-model.md)."""
        if tokens <= self.capture_tokens:
            return step_end
        launched = (self.launch_s(perf, tokens=tokens, prefill=True) + self.launch_s(perf, tokens=1, prefill=True)
                    + perf.step_overhead_ms / 1000)
        return max(step_end, step_start + launched)


@dataclass(frozen=True)
class BatchRun:
    """A simulated closed batch: per request, when its first and last tokens came."""

    first_token_s: list[float]
    finished_s: list[float]

    @property
    def wall_s(self) -> float:
        return max(self.finished_s)

    def inter_token_latency_s(self, output_tokens: int) -> float:
        if output_tokens < 2:
            return 0.0
        return sum((end - first) / (output_tokens - 1) for first, end in
                   zip(self.first_token_s, self.finished_s, strict=True)) / len(self.finished_s)


def simulate_closed_batch(cost: StepCost, perf: GpuPerformance, *, requests: int, input_tokens: int,
                          output_tokens: int, max_batched_tokens: int, max_seqs: int) -> BatchRun:
    """vLLM's scheduler (chunked prefill, FIFO) step by step: each step decodes one token for every running
    sequence, then fills the rest of the token budget with prompt chunks of the admitted requests, at most
    MAX_SEQS sequences in flight. Prefill's last chunk yields a request's first token.

    Decoding sequences are tracked in aggregate (count, KV tokens) and finish in the order they started, so a
    step costs O(1) beyond its prompt chunks: planner-sized batches (1,024 requests at 128k tokens) stay fast."""
    first: list[float] = [0.0] * requests
    finished: list[float] = [0.0] * requests
    prefilling: deque[list[int]] = deque()  # [request, prompt tokens left], admission order
    decoding: deque[tuple[int, int]] = deque()  # (request, step index of its last token), start order
    next_request = decoders = decode_context = step = 0
    now = 0.0
    while next_request < requests or prefilling or decoding:
        while next_request < requests and len(prefilling) + decoders < max_seqs:
            prefilling.append([next_request, input_tokens])
            next_request += 1
        budget, chunks = max_batched_tokens - decoders, []
        for entry in prefilling:
            if budget <= 0:
                break
            take = min(entry[1], budget)
            chunks.append((take, input_tokens - entry[1]))
            entry[1] -= take
            budget -= take
        start = now
        now += cost.seconds(perf, decode_seqs=decoders, decode_context=decode_context, prefill=chunks)
        step_tokens = decoders + sum(chunk for chunk, _ in chunks)
        decode_context += decoders
        step += 1
        while decoding and decoding[0][1] == step:  # their last token came in this step
            request, _ = decoding.popleft()
            finished[request] = max(now, first[request])  # a first token handed out late comes with the next
            decoders -= 1
            decode_context -= input_tokens + output_tokens - 1
        while prefilling and prefilling[0][1] == 0:
            request = prefilling.popleft()[0]
            if output_tokens == 1:
                first[request] = finished[request] = now
            else:
                first[request] = cost.first_token_visible_s(perf, step_start=start, step_end=now, tokens=step_tokens)
                decoding.append((request, step + output_tokens - 1))
                decoders += 1
                decode_context += input_tokens
    return BatchRun(first_token_s=first, finished_s=finished)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def predict(request: SizingRequest, evaluation: Evaluation, gpu: Gpu, workload: Workload,
            *, max_seqs: int | None = None, capture_tokens: int | None = None) -> Performance:
    """TTFT p99, mean ITL and output tokens/s for WORKLOAD spread evenly over the evaluation's model copies,
    as the deployed server runs it (its max_num_batched_tokens, max_num_seqs and default CUDA-graph sizes,
    unless MAX_SEQS or CAPTURE_TOKENS is given)."""
    copies = max(1, evaluation.replicas) * max(1, evaluation.data_parallel)
    per_copy = math.ceil(workload.concurrency / copies)
    seqs = max_seqs or evaluation.max_num_seqs
    perf = efficiencies(gpu)
    cost = StepCost.of(request, evaluation, gpu, max_seqs=seqs, capture_tokens=capture_tokens)
    run = simulate_closed_batch(cost, perf, requests=per_copy,
                                input_tokens=workload.input_tokens, output_tokens=workload.output_tokens,
                                max_batched_tokens=evaluation.max_num_batched_tokens, max_seqs=seqs)
    itl = run.inter_token_latency_s(workload.output_tokens)
    notes = []
    if request.model.architecture.is_moe:
        notes.append("mixture-of-experts speed is unmeasured: calibration runs use random router weights")
    if evaluation.nodes > 1:
        notes.append("pipeline stages over the network: inter-node transfer time is not modelled")
    if evaluation.tensor_parallel > 1:
        notes.append("tensor-parallel all-reduce time is not modelled yet (multi-GPU runs pending)")
    return Performance(
        ttft_s=round(_percentile(run.first_token_s, 0.99), 4),
        inter_token_latency_s=round(itl, 5),
        output_tokens_per_s=round(workload.concurrency * workload.output_tokens / run.wall_s, 1),
        stream_tokens_per_s=round(1 / itl, 1) if itl else 0.0,
        input_tokens=workload.input_tokens,
        output_tokens=workload.output_tokens,
        concurrency=workload.concurrency,
        basis=perf.source,
        notes=notes,
    )


class SlaTarget(BaseModel):
    """What a planner option must meet, from the stack's `sla` block or `size --ttft-p99 /
    --min-stream-tokens-per-s`: TTFT p99 and a per-stream output-speed floor, both in steady state."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    ttft_p99_s: float | None = Field(None, gt=0, description="None: no TTFT target")
    min_stream_tokens_per_s: float = Field(DEFAULT_STREAM_TOKENS_PER_S, gt=0)
    floor_is_default: bool = Field(True, description="The floor was not asked for: say so in the output")


class SteadyState(BaseModel):
    """What a client sees at the requested concurrency once the server is busy: a new prompt is prefilled
    beside the other streams' decode steps, and each stream decodes at the batch's mean context."""

    ttft_s: float = Field(description="A new request's time to first token while the others decode")
    stream_tokens_per_s: float = Field(description="Output tokens/s of one stream")


def default_workload(request: SizingRequest) -> Workload:
    """The load to plan for when none is given: the request's concurrency, chat-sized prompts (2,048
    tokens, or a quarter of a short context) and answers long enough that a stream decodes at half the
    context on average, as reasoning models do and as the engine's throughput bound assumes."""
    input_tokens = max(1, min(2048, request.context_tokens // 4))
    output_tokens = max(1, request.context_tokens - 2 * input_tokens)
    return Workload(input_tokens=input_tokens, output_tokens=output_tokens, concurrency=request.concurrency)


def steady_state(request: SizingRequest, evaluation: Evaluation, gpu: Gpu, workload: Workload) -> SteadyState:
    """Steady-state TTFT and per-stream speed of WORKLOAD on one model copy's share of the streams."""
    copies = max(1, evaluation.replicas) * max(1, evaluation.data_parallel)
    streams = math.ceil(workload.concurrency / copies)
    cost, perf = StepCost.of(request, evaluation, gpu), efficiencies(gpu)
    mean_context = workload.input_tokens + workload.output_tokens / 2
    others = streams - 1
    ttft, done = 0.0, 0
    while done < workload.input_tokens:  # the prompt in budget-sized chunks, each beside the decoders
        chunk = min(workload.input_tokens - done, max(1, evaluation.max_num_batched_tokens - others))
        ttft += cost.seconds(perf, decode_seqs=others, decode_context=others * mean_context,
                             prefill=[(chunk, done)])
        done += chunk
    step = cost.seconds(perf, decode_seqs=streams, decode_context=streams * mean_context, prefill=[])
    return SteadyState(ttft_s=round(ttft, 4), stream_tokens_per_s=round(1 / step, 1))


def sla_reasons(steady: SteadyState, sla: SlaTarget, concurrency: int) -> list[str]:
    reasons = []
    if sla.ttft_p99_s is not None and steady.ttft_s > sla.ttft_p99_s:
        reasons.append(f"TTFT {steady.ttft_s:.2f} s exceeds the {sla.ttft_p99_s:g} s SLA at {concurrency} "
                       "concurrent streams")
    if steady.stream_tokens_per_s < sla.min_stream_tokens_per_s:
        reasons.append(f"{steady.stream_tokens_per_s:.1f} output tokens/s per stream at {concurrency} concurrent "
                       f"streams, below the {sla.min_stream_tokens_per_s:g} tokens/s floor")
    return reasons


def rank_by_sla(result: Survey, request: SizingRequest, workload: Workload, sla: SlaTarget, *,
                closed_batch: bool = False) -> Survey:
    """RESULT with every option's steady state at WORKLOAD (and, with CLOSED_BATCH, its closed-batch
    performance); options that miss the SLA move to the front of the rejected list with their reasons; the
    rest are ranked by $/h, with $ per million output tokens at that load (all streams at their speed)."""
    from gpuinfra.sizing import Rejection

    options, missed = [], []
    for option in result.options:
        gpu = find_gpu(option.gpu)
        steady = steady_state(request, option, gpu, workload)
        tokens_per_s = steady.stream_tokens_per_s * workload.concurrency
        cost_per_million = (round(option.cost_per_hour_usd / (tokens_per_s * 3600) * 1e6, 4)
                            if option.cost_per_hour_usd and tokens_per_s > 0 else None)
        update = {"steady_state": steady, "cost_per_million_output_tokens_at_load_usd": cost_per_million}
        if closed_batch:
            update["performance"] = predict(request, option, gpu, workload)
        option = option.model_copy(update=update)
        reasons = sla_reasons(steady, sla, workload.concurrency)
        if reasons:
            missed.append(Rejection(instance_type=option.instance_type or option.gpu, nodes=option.nodes,
                                    reasons=reasons))
        else:
            options.append(option)
    options.sort(key=lambda e: (e.cost_per_hour_usd is None, e.cost_per_hour_usd or 0.0, e.instance_type))
    summary = {**result.request, "workload": workload.model_dump(), "sla": sla.model_dump()}
    # What missed the SLA first: those fit, and why they were not chosen is the planner's answer.
    return result.model_copy(update={"options": options, "rejected": missed + list(result.rejected),
                                     "request": summary})
