"""The sizing engine: can this hardware serve this model at this context and concurrency, and how well?

Pure functions over the catalog (no I/O beyond reading it). The per-GPU budget follows vLLM's own
accounting (sizing-facts.md section 2.3, sources S8, S10, S12):

    usable   = GPU memory as CUDA reports it x gpu_memory_utilization
    weights  = what this rank holds after TP/PP/EP sharding (replicated parts included)
    overhead = activation peak (8 B x batched tokens x the widest MLP per rank) + non-torch memory
    kv_cache = usable - weights - overhead

and the KV cache is counted in vLLM's 16-token blocks. The overhead figures are those of the pinned vLLM
release, measured (catalog software.yaml memory_model, docs/validation/h200-x1-vllm-0.26). Every constant
below names its source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpuinfra.architecture import LayerParams, ModelArchitecture
from gpuinfra.catalog import Gpu, InstanceType, ModelEntry, find_gpu, load_catalog
from gpuinfra.catalog.schema import MemoryModel
from gpuinfra.defaults import DEFAULT_CONTEXT_TOKENS, DEFAULT_GPU_MEMORY_UTILIZATION, DEFAULT_MAX_NODES
from gpuinfra.errors import InputError, Problem, problems_from_validation_error
from gpuinfra.performance import Performance, SteadyState

GIB = 1024**3

# vLLM defaults and measured overheads (S8, S10, S10b; catalog-facts.yaml meta.vllm_defaults).
LARGE_GPU_BATCHED_TOKENS = 8192  # vLLM's max_num_batched_tokens on GPUs of 70 GiB or more, except A100 (S34)
KV_BLOCK_TOKENS = 16  # vLLM's default block size (S8)
# vLLM's default token budget per step for the API server: 8192 on GPUs with >= 70 GiB that are not A100
# (PR #17885 measured lower A100 throughput with the larger budget), else 2048 (S34).
LARGE_GPU_GIB = 70.0
# Unified-memory parts (Jetson) lose this much of the shared pool to the OS and the CPU side of the server.
UNIFIED_MEMORY_HOST_RESERVE_GIB = 8.0

# Host sizing (per node). The node's weight share must fit the page cache to load without thrashing;
# each GPU worker process holds a few GiB of host memory (torch, CUDA host allocations, pinned buffers).
HOST_RAM_BASE_GIB = 8.0
HOST_RAM_PER_GPU_GIB = 4.0
NVME_SCRATCH_FACTOR = 1.2  # checkpoint + 20 % for partial downloads / conversions
VCPUS_BASE = 2  # API server and engine core
VCPUS_PER_GPU = 1  # one busy worker process per GPU

# 16-bit tensors that quantisation leaves alone: embeddings, lm_head, norms, router (S1, S11).
UNQUANTIZED_BYTES = 2.0


class Precision(StrEnum):
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4_AWQ = "int4-awq"
    INT4_GPTQ = "int4-gptq"


# Bytes per quantised linear-layer parameter, scales included (sizing-facts.md section 2.1):
# FP8 block 128x128 with one FP32 scale per block (+0.02 %); INT4 group 128 with a 16-bit scale per group,
# plus a 4-bit zero point per group for AWQ.
LINEAR_BYTES: dict[Precision, float] = {
    Precision.BF16: 2.0,
    Precision.FP16: 2.0,
    Precision.FP8: 1.0 + 4 / (128 * 128),
    Precision.INT8: 1.0,
    Precision.INT4_GPTQ: (4 + 16 / 128) / 8,
    Precision.INT4_AWQ: (4 + 16 / 128 + 4 / 128) / 8,
}

# Why an evaluation fails, one code per reason; the planner adds nodes only for NODE_SCALABLE ones.
REASON_CODES = {"fp8-hardware", "gpu-memory", "kv-capacity", "host-ram", "nvme", "vcpus", "rdma", "layout"}
NODE_SCALABLE = {"gpu-memory", "kv-capacity", "host-ram"}

AttentionParallel = Literal["tp", "dp"]
KvCacheDtype = Literal["auto", "fp8"]


class ModelSpec(BaseModel):
    """A model to size: a catalog entry, or an architecture read from a local config.json."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    architecture: ModelArchitecture
    checkpoint_gb: float | None = Field(None, description="Download size in the native precision, when known")
    hf_repo: str | None = None

    @classmethod
    def from_catalog(cls, entry: ModelEntry) -> ModelSpec:
        return cls(
            name=entry.slug, architecture=entry.architecture, checkpoint_gb=entry.checkpoint_gb, hf_repo=entry.hf_repo
        )


class SizingRequest(BaseModel):
    """What to serve: the model, its precision, and the load (context x concurrency)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    model: ModelSpec
    precision: Precision | None = Field(None, description="Weight precision; default: the model's native one")
    kv_cache_dtype: KvCacheDtype = Field("auto", description="auto = 16-bit KV cache; fp8 halves it")
    context_tokens: int = Field(DEFAULT_CONTEXT_TOKENS, gt=0,
                                description="max_model_len: prompt + output tokens per sequence")
    concurrency: int = Field(1, gt=0, description="Sequences served at once, each at full context")
    gpu_memory_utilization: float = Field(DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    attention_parallel: AttentionParallel = Field(
        "tp", description="tp: attention sharded by head; dp: data-parallel attention with expert parallelism"
    )
    max_num_batched_tokens: int | None = Field(None, gt=0, description="Default: vLLM's (8192 / 2048)")
    allow_fp8_weight_only: bool = Field(False, description="Allow FP8 weights on GPUs without FP8 tensor cores")
    tensor_parallel: int | None = Field(None, gt=0, description="Force this TP size instead of choosing one")

    @property
    def effective_precision(self) -> Precision:
        return self.precision or Precision(self.model.architecture.native_precision)

    @property
    def kv_bytes(self) -> float:
        return 1.0 if self.kv_cache_dtype == "fp8" else 2.0

    @model_validator(mode="after")
    def _fits_the_model(self) -> SizingRequest:
        arch = self.model.architecture
        problems = []
        if self.context_tokens > arch.max_position_embeddings:
            problems.append(Problem(
                "context_tokens",
                f"context_tokens {self.context_tokens} exceeds the model's max_position_embeddings "
                f"{arch.max_position_embeddings}",
            ))
        if self.tensor_parallel is not None:
            why = arch.tensor_parallel_problem(self.tensor_parallel)
            if why:
                problems.append(Problem("tensor_parallel", why))
            if self.attention_parallel == "dp":
                problems.append(Problem("tensor_parallel", "cannot be forced with attention_parallel dp "
                                                           "(attention runs TP=1)"))
        if self.attention_parallel == "dp" and not arch.is_moe:
            problems.append(Problem(
                "attention_parallel",
                "attention_parallel dp needs a mixture-of-experts model (it pairs data-parallel attention "
                "with expert parallelism); serve dense models with tp",
            ))
        if problems:
            raise InputError(problems)
        return self


def build_request(**fields) -> SizingRequest:
    """SizingRequest from plain values, every problem reported at once as an InputError."""
    try:
        return SizingRequest(**fields)
    except ValidationError as exc:
        raise InputError(problems_from_validation_error(exc)) from None


@dataclass(frozen=True)
class Hardware:
    """Where to serve: an instance type (AWS) or an on-prem GPU SKU, and how many nodes."""

    gpu: Gpu
    gpus_per_node: int
    nodes: int = 1
    instance_type: InstanceType | None = None

    @classmethod
    def from_instance(cls, instance: InstanceType, nodes: int = 1) -> Hardware:
        return cls(gpu=find_gpu(instance.gpu), gpus_per_node=instance.gpus, nodes=nodes, instance_type=instance)


@dataclass(frozen=True)
class Layout:
    tensor_parallel: int
    pipeline_parallel: int
    data_parallel: int  # ranks running attention data-parallel (1 in tp mode)
    expert_parallel: int  # 1 = experts TP-sharded or dense model
    replicas: int  # independent model copies on the hardware

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.data_parallel


class PerGpu(BaseModel):
    total_gib: float
    usable_gib: float
    weights_gib: float
    overhead_gib: float
    kv_cache_gib: float


class HostRequirements(BaseModel):
    vcpus_required: int
    vcpus_available: int | None
    ram_gib_available: float | None
    nvme_gb_available: float | None
    efa_interfaces: int | None


class Evaluation(BaseModel):
    """The answer for one model x hardware: the CLI's --json contract (keys are relied on outside)."""

    model: str
    precision: str
    kv_cache_dtype: str
    context_tokens: int
    concurrency: int
    instance_type: str | None
    gpu: str
    nodes: int
    gpus_per_node: int
    tensor_parallel: int
    pipeline_parallel: int
    expert_parallel: int
    data_parallel: int
    replicas: int
    attention_parallel: str
    feasible: bool
    reasons: list[str]
    reason_codes: list[str] = Field(description="One code per reason: " + ", ".join(sorted(REASON_CODES)))
    notes: list[str]
    weights_gib: float
    kv_cache_bytes_per_token: int
    per_gpu: PerGpu
    max_tokens_in_flight: int
    max_concurrency_at_context: int
    gpu_memory_utilization: float
    max_num_batched_tokens: int
    host_ram_gib_required: float
    nvme_gib_required: float
    needs_rdma: bool
    host: HostRequirements
    decode_tokens_per_s_bound: float
    aggregate_decode_tokens_per_s_bound: float
    cost_per_hour_usd: float | None
    cost_per_million_output_tokens_usd: float | None
    assumptions: list[str]
    performance: Performance | None = Field(None, description="Speed at a given load (gpuinfra.performance)")
    steady_state: SteadyState | None = Field(None, description="What the SLA is checked on (planner options)")
    cost_per_million_output_tokens_at_load_usd: float | None = Field(
        None, description="$/h over the predicted output tokens/s at that load")

    @property
    def max_num_seqs(self) -> int:
        """The server's max_num_seqs: every sequence the KV cache holds at full context, at most 1,024."""
        return max(1, min(self.max_concurrency_at_context * self.nodes, 1024))


# --- weights -------------------------------------------------------------------------------------------


def _linear_bytes(precision: Precision) -> float:
    return LINEAR_BYTES[precision]


def _rank_layer_bytes(
    layer: LayerParams, arch: ModelArchitecture, layout: Layout, precision: Precision, *, active_only: bool = False
) -> float:
    """Bytes of one layer held (or, with active_only, read per token) by one GPU."""
    tp = layout.tensor_parallel
    linear = _linear_bytes(precision)
    kv_share = max(1, arch.kv_heads // tp) / arch.kv_heads if arch.kv_heads else 0.0
    routed = layer.active_routed if active_only else layer.routed_experts
    routed_share = 1 / layout.expert_parallel if layout.expert_parallel > 1 else 1 / tp
    if active_only and layout.expert_parallel > 1:
        routed_share = 1 / min(layout.expert_parallel, max(1, arch.experts_per_token))
    held = (
        layer.attn_sharded / tp + layer.kv_proj * kv_share + layer.attn_replicated + layer.mlp_sharded / tp
    ) * linear
    return held + routed * routed_share * linear + layer.unquantized * UNQUANTIZED_BYTES


@lru_cache(maxsize=4096)
def _stage_params(arch: ModelArchitecture, start: int, stop: int) -> LayerParams:
    """The layers of one stage summed group by group (every sharding rule is linear in the groups)."""
    layers = arch.layer_params[start:stop]
    return LayerParams(*(sum(getattr(layer, f.name) for layer in layers) for f in fields(LayerParams)))


def pipeline_stages(layers: int, pipeline_parallel: int) -> list[range]:
    """Layer ranges per pipeline stage, as vLLM's get_pp_indices splits them (extra layers go to the
    stages before the last, S9b)."""
    sizes = [layers // pipeline_parallel] * pipeline_parallel
    for i in range(2, layers % pipeline_parallel + 2):
        sizes[-i] += 1
    stages, start = [], 0
    for size in sizes:
        stages.append(range(start, start + size))
        start += size
    return stages


@lru_cache(maxsize=256)
def model_weight_bytes(arch: ModelArchitecture, precision: Precision) -> float:
    """Whole-model weight bytes at a precision (one copy, unsharded)."""
    layers = _stage_params(arch, 0, arch.layers)
    embeddings = arch.embedding_params + arch.lm_head_params + arch.hidden
    return (layers.total - layers.unquantized) * _linear_bytes(precision) + (
        layers.unquantized + embeddings) * UNQUANTIZED_BYTES


def _stage_bytes(arch: ModelArchitecture, layout: Layout, precision: Precision, stage: range, *, first: bool,
                 last: bool, active_only: bool = False) -> float:
    tp = layout.tensor_parallel
    total = _rank_layer_bytes(_stage_params(arch, stage.start, stage.stop), arch, layout, precision,
                              active_only=active_only)
    # Embedding and lm_head are vocab-parallel across TP ranks; the first stage embeds, the last projects.
    if first:
        total += arch.embedding_params * UNQUANTIZED_BYTES / tp
    if last:
        total += (arch.lm_head_params * UNQUANTIZED_BYTES + arch.hidden * UNQUANTIZED_BYTES) / tp
    return total


def download_gb(model: ModelSpec, precision: Precision) -> float:
    """What has to be on local disk: the native checkpoint when vLLM quantises on load (FP8 from 16-bit),
    otherwise a checkpoint already in the requested precision."""
    arch = model.architecture
    native = Precision(arch.native_precision)
    online_fp8 = precision == Precision.FP8 and native in (Precision.BF16, Precision.FP16)
    if precision == native or online_fp8:
        return model.checkpoint_gb or model_weight_bytes(arch, native) / 1e9
    return model_weight_bytes(arch, precision) / 1e9


# --- layout ------------------------------------------------------------------------------------------------


def candidate_layouts(request: SizingRequest, hardware: Hardware) -> tuple[list[Layout], list[str]]:
    """Valid layouts for the hardware, smallest TP first, or the reasons there are none."""
    arch = request.model.architecture
    gpus, nodes = hardware.gpus_per_node, hardware.nodes
    if nodes > arch.layers:
        return [], [f"{nodes} nodes would need pipeline parallel {nodes} > {arch.layers} layers"]
    if request.attention_parallel == "dp":
        ranks = gpus * nodes
        if arch.n_routed_experts % ranks:
            return [], [
                f"expert parallel size {ranks} ({nodes} x {gpus} GPUs) does not divide the model's "
                f"{arch.n_routed_experts} experts"
            ]
        return [Layout(1, 1, ranks, ranks, 1)], []
    if request.tensor_parallel is not None:
        tp = request.tensor_parallel
        if tp > gpus:
            return [], [f"tensor parallel {tp} exceeds the {gpus} GPUs per node (TP stays inside a node)"]
        sizes = [tp]
    else:
        sizes = [tp for tp in arch.valid_tensor_parallel_sizes(gpus) if gpus % tp == 0]
    layouts = []
    for tp in sizes:
        ep = tp if arch.is_moe and tp > 1 and arch.n_routed_experts % tp == 0 else 1
        layouts.append(Layout(tp, nodes, 1, ep, gpus // tp))
    return layouts, []


# --- evaluation --------------------------------------------------------------------------------------------


def _max_batched_tokens(request: SizingRequest, gpu: Gpu) -> int:
    if request.max_num_batched_tokens:
        return request.max_num_batched_tokens
    large = gpu.memory_gib >= LARGE_GPU_GIB and "a100" not in gpu.name.lower()
    return LARGE_GPU_BATCHED_TOKENS if large else 2048


def memory_model() -> MemoryModel:
    """The pinned vLLM's measured memory accounting (catalog software.inference_engines.vllm)."""
    model = load_catalog().software.inference_engines["vllm"].memory_model
    assert model is not None, "the pinned vLLM has no memory_model in software.yaml"
    return model


def activation_bytes_per_token(arch: ModelArchitecture, layout: Layout) -> float:
    """Peak activation bytes per batched token on one rank, as the pinned vLLM measured: 8 B x the dense
    MLP width per rank; for a mixture-of-experts model, the measured DeepSeek-layout figure (MLA and the
    fused-MoE workspace dominate), which is not yet measured at TP/EP > 1 and so is charged whole."""
    model = memory_model()
    dense = model.activation_bytes_per_token_intermediate * arch.intermediate / layout.tensor_parallel
    return max(dense, model.moe_activation_bytes_per_token) if arch.is_moe else dense


def _overhead_gib(arch: ModelArchitecture, layout: Layout, batched_tokens: int) -> float:
    model = memory_model()
    activation = activation_bytes_per_token(arch, layout) * batched_tokens / GIB
    non_torch = model.non_torch_gib_single if layout.world_size == 1 else model.non_torch_gib_multi
    return activation + non_torch


def total_gib(gpu: Gpu) -> float:
    """What vLLM takes as the GPU's total: CUDA's figure where measured, else the driver's."""
    return gpu.cuda_total_gib or gpu.memory_gib


def _usable_gib(request: SizingRequest, gpu: Gpu) -> float:
    total = total_gib(gpu) - (UNIFIED_MEMORY_HOST_RESERVE_GIB if gpu.unified_memory else 0.0)
    return total * request.gpu_memory_utilization


def _experts_touched(arch: ModelArchitecture, tokens: int) -> float:
    """Expected distinct routed experts a decode step with `tokens` tokens reads per MoE layer."""
    if not arch.is_moe:
        return 0.0
    e, k = arch.n_routed_experts, arch.experts_per_token
    return e * (1 - (1 - k / e) ** tokens)


@dataclass(frozen=True)
class _StageMemory:
    weights: float  # bytes per GPU
    kv_per_token: float  # bytes per GPU per token
    kv_free: float  # bytes per GPU
    blocks: int  # KV blocks per GPU


@dataclass
class _Findings:
    """What the stages of one evaluation found: failures (each with its reason code) and notes."""

    reasons: list[str] = field(default_factory=list)
    codes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def fail(self, code: str, reason: str) -> None:
        self.codes.append(code)
        self.reasons.append(reason)


@dataclass(frozen=True)
class GpuBudget:
    """One rank's memory on this layout: usable bytes, overhead, each pipeline stage's weights and KV, and the
    sequences that fit."""

    batched_tokens: int
    usable: float  # bytes
    overhead: float  # bytes
    stages: list[range]
    memory: list[_StageMemory]
    groups: int  # KV-holding groups: replicas x DP ranks

    @property
    def binding(self) -> _StageMemory:  # the stage with the fewest KV blocks sets the capacity
        return min(self.memory, key=lambda m: (m.blocks, m.kv_free))

    @property
    def heaviest(self) -> _StageMemory:
        return max(self.memory, key=lambda m: m.weights)

    def sequences_per_group(self, context_tokens: int) -> int:
        return self.binding.blocks // math.ceil(context_tokens / KV_BLOCK_TOKENS)

    @property
    def max_tokens(self) -> int:
        return self.binding.blocks * KV_BLOCK_TOKENS * self.groups


def gpu_budget(request: SizingRequest, hardware: Hardware, layout: Layout) -> GpuBudget:
    """vLLM's per-rank budget for LAYOUT: usable - weights - overhead per stage, in KV blocks. In tp mode
    every rank of a replica holds (its layers of) every sequence; in dp mode each rank holds its own."""
    arch, precision = request.model.architecture, request.effective_precision
    batched = _max_batched_tokens(request, hardware.gpu)
    usable = _usable_gib(request, hardware.gpu) * GIB
    overhead = _overhead_gib(arch, layout, batched) * GIB
    stages = pipeline_stages(arch.layers, layout.pipeline_parallel)
    memory = []
    for index, stage in enumerate(stages):
        weights = _stage_bytes(arch, layout, precision, stage, first=index == 0, last=index == len(stages) - 1)
        kv_per_token = len(stage) * arch.kv_bytes_per_token_per_layer(layout.tensor_parallel, request.kv_bytes)
        kv_free = usable - weights - overhead
        blocks = max(0, int(kv_free // (kv_per_token * KV_BLOCK_TOKENS))) if kv_per_token else 0
        memory.append(_StageMemory(weights, kv_per_token, kv_free, blocks))
    return GpuBudget(batched, usable, overhead, stages, memory, layout.replicas * layout.data_parallel)


def _check_fp8(request: SizingRequest, gpu: Gpu, findings: _Findings) -> None:
    if request.effective_precision != Precision.FP8 or gpu.fp8_tensor_cores:
        return
    if request.allow_fp8_weight_only:
        findings.notes.append(f"{gpu.name} has no FP8 tensor cores: FP8 weights run weight-only (dequantised to "
                              "BF16, vLLM Marlin W8A16), so compute is BF16-speed")
    else:
        findings.fail("fp8-hardware", f"{gpu.name} (compute capability {gpu.compute_capability}) has no FP8 tensor "
                                      "cores; FP8 compute needs Hopper, Ada or Blackwell. Use --precision "
                                      "bf16/int8/int4-awq, or allow weight-only FP8")


def _check_gpu_memory(request: SizingRequest, gpu: Gpu, budget: GpuBudget, findings: _Findings) -> None:
    binding, heaviest = budget.binding, budget.heaviest
    max_concurrency = budget.sequences_per_group(request.context_tokens) * budget.groups
    if heaviest.weights + budget.overhead > budget.usable:
        findings.fail("gpu-memory", f"weights need {heaviest.weights / GIB:.1f} GiB per GPU plus "
                                    f"{budget.overhead / GIB:.1f} GiB overhead, but only {budget.usable / GIB:.1f} GiB "
                                    f"is usable ({total_gib(gpu):g} GiB x {request.gpu_memory_utilization:g})")
    elif max_concurrency < request.concurrency:
        context_bytes = math.ceil(request.context_tokens / KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS * binding.kv_per_token
        need = request.concurrency / budget.groups * context_bytes
        findings.fail("kv-capacity", f"KV cache holds {max_concurrency} sequence(s) of {request.context_tokens} "
                                     f"tokens, {request.concurrency} requested: needs {need / GIB:.1f} GiB of KV per "
                                     f"GPU, {max(0.0, binding.kv_free) / GIB:.1f} GiB free after weights and overhead")


@dataclass(frozen=True)
class HostNeeds:
    """What one node's host must offer besides its GPUs."""

    ram_gib: float
    node_weight_gib: float
    nvme_gib: float
    vcpus: int
    rdma: bool


def host_needs(request: SizingRequest, hardware: Hardware) -> HostNeeds:
    """The page cache must hold this node's share of the checkpoint once, however many ranks read it."""
    precision = request.effective_precision
    node_weight_gib = model_weight_bytes(request.model.architecture, precision) / hardware.nodes / GIB
    ram = HOST_RAM_BASE_GIB + HOST_RAM_PER_GPU_GIB * hardware.gpus_per_node + node_weight_gib
    if hardware.gpu.unified_memory:
        ram = HOST_RAM_BASE_GIB  # weights load straight into the shared pool
    return HostNeeds(ram_gib=ram, node_weight_gib=node_weight_gib,
                     nvme_gib=download_gb(request.model, precision) * 1e9 * NVME_SCRATCH_FACTOR / GIB,
                     vcpus=VCPUS_BASE + VCPUS_PER_GPU * hardware.gpus_per_node, rdma=hardware.nodes > 1)


def _check_host(hardware: Hardware, needs: HostNeeds, findings: _Findings) -> None:
    instance = hardware.instance_type
    if instance is None:
        if needs.rdma:
            findings.notes.append("multi-node: needs an RDMA fabric (InfiniBand/RoCE, >= 100 Gbps) between the nodes")
        return
    if instance.ram_gib < needs.ram_gib:
        findings.fail("host-ram", f"host RAM {instance.ram_gib:g} GiB < {needs.ram_gib:.0f} GiB needed to load this "
                                  f"node's {needs.node_weight_gib:.0f} GiB of weights and run "
                                  f"{hardware.gpus_per_node} GPU worker(s)")
    nvme_available = instance.nvme.total_gb * 1e9 / GIB
    if nvme_available < needs.nvme_gib:
        findings.fail("nvme", f"instance-store NVMe {nvme_available:.0f} GiB < {needs.nvme_gib:.0f} GiB for the "
                              f"checkpoint (+{(NVME_SCRATCH_FACTOR - 1) * 100:.0f} % scratch)")
    if instance.vcpus < needs.vcpus:
        findings.fail("vcpus", f"{instance.vcpus} vCPUs < {needs.vcpus} needed")
    if needs.rdma and not instance.efa.supported:
        findings.fail("rdma", f"{hardware.nodes} nodes need RDMA between them, and {instance.name} has no EFA")


def _layout_notes(request: SizingRequest, hardware: Hardware, layout: Layout, findings: _Findings) -> None:
    arch, gpu = request.model.architecture, hardware.gpu
    if layout.expert_parallel > 1:
        findings.notes.append(f"MoE experts split {layout.expert_parallel} ways: serve with --enable-expert-parallel")
    if arch.attention == "MLA" and request.attention_parallel == "tp" and layout.tensor_parallel > 1:
        findings.notes.append(f"MLA latent KV cache is replicated on all {layout.tensor_parallel} TP ranks; "
                              "--attention-parallel dp partitions sequences instead")
    if layout.tensor_parallel > 1 and not gpu.nvlink_gbs_bidir:
        findings.notes.append(f"TP {layout.tensor_parallel} over PCIe ({gpu.name} has no NVLink): the all-reduces "
                              "of every layer keep real throughput well below the bandwidth bound")
    if hardware.gpus_per_node % layout.tensor_parallel:
        findings.notes.append(f"{hardware.gpus_per_node % layout.tensor_parallel} GPU(s) per node left idle by TP")


@dataclass(frozen=True)
class Bounds:
    """Decode throughput at 100 % of HBM bandwidth and of dense tensor throughput (ceilings, not forecasts)."""

    single_stream: float
    aggregate: float
    fp8_compute: bool
    mean_context: float


def decode_bounds(request: SizingRequest, hardware: Hardware, layout: Layout, budget: GpuBudget) -> Bounds:
    arch, precision, gpu = request.model.architecture, request.effective_precision, hardware.gpu
    mean_ctx = request.context_tokens / 2
    bandwidth = gpu.memory_bandwidth_gbs * 1e9
    per_group = min(max(1, math.ceil(request.concurrency / budget.groups)),
                    max(1, budget.sequences_per_group(request.context_tokens)))
    touched = _experts_touched(arch, per_group * layout.data_parallel)
    single_s = step_s = 0.0
    for index, stage in enumerate(budget.stages):
        weights = _stage_bytes(arch, layout, precision, stage, first=index == 0,
                               last=index == len(budget.stages) - 1, active_only=True)
        kv = budget.memory[index].kv_per_token * mean_ctx
        single_s += (weights + kv) / bandwidth
        if arch.is_moe:  # batch > 1 reads more experts than one token does
            routed_active = _stage_params(arch, stage.start, stage.stop).active_routed
            share = 1 / layout.expert_parallel if layout.expert_parallel > 1 else 1 / layout.tensor_parallel
            weights += max(0.0, routed_active * (touched / arch.experts_per_token - 1) * share) * _linear_bytes(
                precision)
        step_s += (weights + kv * per_group) / bandwidth
    fp8 = bool(precision == Precision.FP8 and gpu.fp8_tensor_cores and gpu.fp8_dense_tflops)
    flops = (gpu.fp8_dense_tflops if fp8 else gpu.bf16_dense_tflops) * 1e12
    compute_bound = flops * hardware.gpus_per_node * hardware.nodes / (2 * arch.active_params)
    bandwidth_bound = per_group * layout.data_parallel / step_s * layout.replicas
    return Bounds(single_stream=1 / single_s, aggregate=min(bandwidth_bound, compute_bound), fp8_compute=fp8,
                  mean_context=mean_ctx)


def _cost(hardware: Hardware, bounds: Bounds, findings: _Findings) -> tuple[float | None, float | None]:
    """$/h of the nodes on demand, and $ per million output tokens at the aggregate bound (a floor)."""
    instance = hardware.instance_type
    price = instance.price.usd_per_hour if instance else None
    if instance is not None and price is None:
        findings.notes.append(f"no on-demand price on record for {instance.name}: {instance.price.note or 'unknown'}")
    cost = round(price * hardware.nodes, 4) if price else None
    per_million = round(cost / (bounds.aggregate * 3600) * 1e6, 4) if cost and bounds.aggregate > 0 else None
    return cost, per_million


def _assumptions(request: SizingRequest, hardware: Hardware, layout: Layout, budget: GpuBudget,
                 bounds: Bounds, priced: bool) -> list[str]:
    arch, gpu, instance = request.model.architecture, hardware.gpu, hardware.instance_type
    engine = load_catalog().software.inference_engines["vllm"]
    assumptions = [
        f"vLLM {engine.version} accounting: usable = {total_gib(gpu):g} GiB"
        f"{' (CUDA total, measured)' if gpu.cuda_total_gib else ' (driver figure; CUDA total not measured)'} x "
        f"{request.gpu_memory_utilization:g} gpu_memory_utilization; KV in {KV_BLOCK_TOKENS}-token blocks",
        f"activation peak {activation_bytes_per_token(arch, layout) / 1024:,.0f} KiB x {budget.batched_tokens} "
        "batched tokens " + ("(measured on a DeepSeek-V3 layout at TP 1; charged whole at TP/EP > 1)" if arch.is_moe
                             else f"(8 B x MLP width per rank, {memory_model().source})"),
        f"every sequence at the full {request.context_tokens}-token context (worst case)",
        f"decode bounds at 100 % of HBM bandwidth and dense {'FP8' if bounds.fp8_compute else 'BF16'} throughput, "
        f"mean KV length {int(bounds.mean_context)} tokens; real servers reach ~60-85 % of the bandwidth bound",
    ]
    if priced and instance is not None:
        assumptions.append(f"price: on-demand {instance.price.region} {instance.price.date} (S13b); $/M tokens at "
                           "the aggregate bound, i.e. a floor")
    if gpu.unified_memory:
        assumptions.append(f"unified memory: {UNIFIED_MEMORY_HOST_RESERVE_GIB:g} GiB of the shared pool kept for OS "
                           "and CPU side")
    return assumptions


def _evaluate_layout(request: SizingRequest, hardware: Hardware, layout: Layout) -> Evaluation:
    """One layout through the stages: FP8 support, GPU memory, host, notes, throughput bounds, cost."""
    findings = _Findings()
    _check_fp8(request, hardware.gpu, findings)
    budget = gpu_budget(request, hardware, layout)
    _check_gpu_memory(request, hardware.gpu, budget, findings)
    needs = host_needs(request, hardware)
    _check_host(hardware, needs, findings)
    _layout_notes(request, hardware, layout, findings)
    bounds = decode_bounds(request, hardware, layout, budget)
    cost, per_million = _cost(hardware, bounds, findings)
    return _evaluation(request, hardware, layout, findings, budget, needs, bounds, cost, per_million)


def _evaluation(request: SizingRequest, hardware: Hardware, layout: Layout, findings: _Findings,
                budget: GpuBudget, needs: HostNeeds, bounds: Bounds, cost: float | None,
                per_million: float | None) -> Evaluation:
    instance, gpu = hardware.instance_type, hardware.gpu
    return Evaluation(
        model=request.model.name, precision=request.effective_precision.value, kv_cache_dtype=request.kv_cache_dtype,
        context_tokens=request.context_tokens, concurrency=request.concurrency,
        instance_type=instance.name if instance else None, gpu=gpu.name, nodes=hardware.nodes,
        gpus_per_node=hardware.gpus_per_node, tensor_parallel=layout.tensor_parallel,
        pipeline_parallel=layout.pipeline_parallel, expert_parallel=layout.expert_parallel,
        data_parallel=layout.data_parallel, replicas=layout.replicas, attention_parallel=request.attention_parallel,
        feasible=not findings.reasons, reasons=findings.reasons, reason_codes=findings.codes, notes=findings.notes,
        weights_gib=round(model_weight_bytes(request.model.architecture, request.effective_precision) / GIB, 2),
        kv_cache_bytes_per_token=int(budget.binding.kv_per_token),
        per_gpu=PerGpu(total_gib=round(total_gib(gpu), 2), usable_gib=round(budget.usable / GIB, 2),
                       weights_gib=round(budget.heaviest.weights / GIB, 2),
                       overhead_gib=round(budget.overhead / GIB, 2),
                       kv_cache_gib=round(max(0.0, budget.binding.kv_free) / GIB, 2)),
        max_tokens_in_flight=budget.max_tokens,
        max_concurrency_at_context=budget.sequences_per_group(request.context_tokens) * budget.groups,
        gpu_memory_utilization=request.gpu_memory_utilization, max_num_batched_tokens=budget.batched_tokens,
        host_ram_gib_required=round(needs.ram_gib, 1), nvme_gib_required=round(needs.nvme_gib, 1),
        needs_rdma=needs.rdma,
        host=HostRequirements(vcpus_required=needs.vcpus, vcpus_available=instance.vcpus if instance else None,
                              ram_gib_available=instance.ram_gib if instance else None,
                              nvme_gb_available=instance.nvme.total_gb if instance else None,
                              efa_interfaces=instance.efa.max_interfaces if instance else None),
        decode_tokens_per_s_bound=round(bounds.single_stream, 1),
        aggregate_decode_tokens_per_s_bound=round(bounds.aggregate, 1),
        cost_per_hour_usd=cost, cost_per_million_output_tokens_usd=per_million,
        assumptions=_assumptions(request, hardware, layout, budget, bounds, priced=cost is not None),
    )


def _structural_failure(request: SizingRequest, hardware: Hardware, reasons: list[str]) -> Evaluation:
    """An evaluation for hardware on which no valid layout exists (numbers at TP=1 for reference)."""
    layout = Layout(1, 1, 1, 1, hardware.gpus_per_node)
    evaluation = _evaluate_layout(request, Hardware(hardware.gpu, hardware.gpus_per_node, 1,
                                                    hardware.instance_type), layout)
    return evaluation.model_copy(update={
        "feasible": False,
        "reasons": reasons + evaluation.reasons,
        "reason_codes": ["layout"] * len(reasons) + evaluation.reason_codes,
        "nodes": hardware.nodes,
    })


def evaluate(request: SizingRequest, hardware: Hardware) -> Evaluation:
    """The smallest-TP valid layout that serves the request on this hardware, or why none does.

    Smaller TP means more independent replicas and fewer collectives per token; when no layout fits,
    the largest TP (the closest to fitting) is reported with its reasons.
    """
    layouts, reasons = candidate_layouts(request, hardware)
    if not layouts:
        return _structural_failure(request, hardware, reasons)
    evaluation = None
    for layout in layouts:
        evaluation = _evaluate_layout(request, hardware, layout)
        if evaluation.feasible:
            return evaluation
    assert evaluation is not None
    return evaluation


class Rejection(BaseModel):
    instance_type: str
    nodes: int
    reasons: list[str]


class Survey(BaseModel):
    request: dict
    options: list[Evaluation]
    rejected: list[Rejection]


def survey(request: SizingRequest, max_nodes: int = DEFAULT_MAX_NODES,
           instance_types: list[InstanceType] | None = None) -> Survey:
    """Every catalog instance type at 1..max_nodes nodes: the smallest node count that serves the request
    per type, cheapest first, and why the rest do not. Multi-node only where the type has EFA."""
    if max_nodes < 1:
        raise InputError([Problem("max_nodes", "must be at least 1")])
    options: list[Evaluation] = []
    rejected: list[Rejection] = []
    for instance in instance_types or list(load_catalog().instances):
        for nodes in range(1, max_nodes + 1):
            evaluation = evaluate(request, Hardware.from_instance(instance, nodes))
            if evaluation.feasible:
                options.append(evaluation)
                break
            reasons = list(evaluation.reasons)
            more_nodes_help = set(evaluation.reason_codes) <= NODE_SCALABLE
            if more_nodes_help and nodes < max_nodes and not instance.efa.supported:
                reasons.append("multi-node not considered: no EFA")
                more_nodes_help = False
            rejected.append(Rejection(instance_type=instance.name, nodes=nodes, reasons=reasons))
            if not more_nodes_help:
                break
    options.sort(key=lambda e: (e.cost_per_hour_usd is None, e.cost_per_hour_usd or 0.0, e.instance_type))
    from gpuinfra.request import ServingRequest  # it builds on this module

    summary = {**ServingRequest.of(request).to_dict(), "max_nodes": max_nodes}
    return Survey(request=summary, options=options, rejected=rejected)
