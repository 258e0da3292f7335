"""Typed catalog records. Every record names its sources; the loader checks the ids exist."""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpuinfra.architecture import ModelArchitecture, parse_hf_config


class CatalogModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(CatalogModel):
    title: str
    ref: str
    status: Literal["sourced", "recalled"] = "sourced"


SourceMap = Annotated[dict[str, str], Field(description="What each source id backs: field group -> source id")]


class GpuPerformance(CatalogModel):
    """Serving-speed efficiencies of vLLM on this GPU (gpuinfra.performance), with the run they came from."""

    prefill_efficiency: float = Field(gt=0, le=1, description="Share of dense tensor throughput reached by steps")
    weight_bandwidth_efficiency: float = Field(gt=0, le=1, description="Share of HBM bandwidth reading weights")
    kv_bandwidth_efficiency: float = Field(gt=0, le=1, description="Share of HBM bandwidth reading the KV cache")
    step_overhead_ms: float = Field(ge=0, description="Fixed cost per engine step (scheduler, launches)")
    per_sequence_overhead_us: float = Field(ge=0, description="Cost per sequence in a step (sampling, bookkeeping)")
    graphed_layer_launch_us: float = Field(
        0.0, ge=0, description="Host time per layer of a prompt step replayed from piecewise CUDA graphs (attention "
                               "still launched from Python): the floor of a short prefill step")
    eager_layer_launch_us: float = Field(
        0.0, ge=0, description="Host time per layer of a step longer than the largest CUDA graph (every kernel "
                               "launched from Python): the floor of a mid-sized prefill step on a small model")
    fp8_prefill_efficiency: float | None = Field(
        None, gt=0, le=1, description="FP8 weights: share of the FP8 tensor throughput (default: prefill_efficiency)")
    fp8_weight_bandwidth_efficiency: float | None = Field(
        None, gt=0, le=1, description="FP8 weights: share of HBM bandwidth reading them (default: the bf16 one)")
    source: str = Field(description="The measured run (docs/validation/...) or 'derived from the GPU's spec'")


class Gpu(CatalogModel):
    name: str
    aliases: tuple[str, ...] = ()
    architecture: Literal["ampere", "ada", "hopper", "blackwell"]
    compute_capability: str
    form_factor: Literal["sxm", "pcie", "soc"]
    memory_gb: float = Field(gt=0, description="Marketing figure (decimal GB)")
    memory_gib: float = Field(gt=0, description="What the driver / EC2 API reports")
    cuda_total_gib: float | None = Field(
        None, gt=0, description="What CUDA reports as total (torch.cuda.mem_get_info), the base of vLLM's "
                                "gpu_memory_utilization budget; measured, else memory_gib is used")
    memory_bandwidth_gbs: float = Field(gt=0)
    bf16_dense_tflops: float = Field(gt=0)
    fp8_dense_tflops: float | None = None
    fp8_tensor_cores: bool
    nvlink_gbs_bidir: float | None = None
    unified_memory: bool = Field(False, description="CPU and GPU share one memory pool (Jetson)")
    performance: GpuPerformance | None = Field(None, description="Measured serving efficiencies; default: derived")
    sources: SourceMap

    @model_validator(mode="after")
    def _fp8_consistent(self) -> Gpu:
        if self.fp8_tensor_cores != (self.fp8_dense_tflops is not None):
            raise ValueError(f"{self.name}: fp8_tensor_cores and fp8_dense_tflops disagree")
        return self


class Nvme(CatalogModel):
    count: int = Field(ge=0)
    gb_each: float = Field(ge=0)

    @property
    def total_gb(self) -> float:
        return self.count * self.gb_each


class InstanceNetwork(CatalogModel):
    peak_gbps: float = Field(gt=0)
    baseline_gbps: float = Field(gt=0)
    cards: int = Field(ge=1, description="Network cards; EFA wants one interface per card")


class Efa(CatalogModel):
    supported: bool
    max_interfaces: int = Field(ge=0)


class Price(CatalogModel):
    usd_per_hour: float | None = Field(None, gt=0)
    region: str
    date: dt.date
    source: str
    note: str | None = None


class InstanceType(CatalogModel):
    name: str
    gpu: str
    gpus: int = Field(ge=1)
    gpu_memory_gib: float = Field(gt=0)
    vcpus: int = Field(ge=1)
    ram_gib: float = Field(gt=0)
    nvme: Nvme
    network: InstanceNetwork
    efa: Efa
    nvswitch: bool
    gpu_interconnect: str
    price: Price
    sources: SourceMap

    @property
    def family(self) -> str:
        return self.name.split(".")[0]

    @model_validator(mode="after")
    def _efa_consistent(self) -> InstanceType:
        if self.efa.supported != (self.efa.max_interfaces > 0):
            raise ValueError(f"{self.name}: efa.supported and efa.max_interfaces disagree")
        if self.efa.max_interfaces > self.network.cards and self.efa.max_interfaces != self.network.cards:
            raise ValueError(f"{self.name}: more EFA interfaces than network cards")
        return self


class ModelEntry(CatalogModel):
    slug: str
    name: str
    hf_repo: str
    published_params_b: float = Field(gt=0)
    published_active_params_b: float = Field(gt=0)
    checkpoint_gb: float = Field(gt=0, description="Download size in the native precision (decimal GB)")
    notes: str | None = None
    sources: SourceMap
    config: dict[str, Any]

    @property
    def architecture(self) -> ModelArchitecture:
        return _architecture(self)


_ARCH_CACHE: dict[int, ModelArchitecture] = {}


def _architecture(entry: ModelEntry) -> ModelArchitecture:
    key = id(entry)
    if key not in _ARCH_CACHE:
        _ARCH_CACHE[key] = parse_hf_config(entry.config)
    return _ARCH_CACHE[key]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class NvidiaRepository(CatalogModel):
    url: str = Field(description="Repository URL with a {distribution} placeholder")
    key_file: str
    key_fingerprint: str = Field(pattern=r"^[0-9A-F]{40}$")
    distributions: dict[str, str] = Field(description="'<os>-<version>' -> the repository's distribution path")


class NvidiaDriver(CatalogModel):
    branch: str = Field(pattern=r"^[0-9]{3}$")
    version: str = Field(pattern=r"^[0-9]{3}\.[0-9]+(\.[0-9]+)?$")
    open_kernel_modules_from: str = Field(description="Lowest compute capability that runs the open modules")


class Cuda(CatalogModel):
    version: str = Field(pattern=r"^[0-9]+\.[0-9]+$")
    nccl: str
    cudnn: str


class EfaInstaller(CatalogModel):
    version: str
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ContainerToolkit(CatalogModel):
    version: str


class MemoryModel(CatalogModel):
    """How this engine version budgets GPU memory beyond weights and KV cache, as measured (the sizing engine
    uses it for every GPU; it is the reason the catalog pins the engine at the calibrated version)."""

    activation_bytes_per_token_intermediate: float = Field(
        gt=0, description="Activation peak per batched token per MLP intermediate unit on one rank (gate/up "
                          "output and the activated product, bf16)")
    moe_activation_bytes_per_token: float = Field(
        gt=0, description="Activation peak per batched token of a DeepSeek-style MoE model (MLA, FP8 block "
                          "weights, fused MoE), measured at TP 1 / EP 1 and taken whole on every rank")
    non_torch_gib_single: float = Field(ge=0, description="CUDA context and allocator slack at world size 1")
    non_torch_gib_multi: float = Field(ge=0, description="The same plus NCCL/custom all-reduce buffers at TP > 1")
    source: str = Field(description="The run each figure comes from")


class CudaGraphCapture(CatalogModel):
    """Which engine steps this version replays from CUDA graphs by default: steps of at most
    min(per_sequence x max_num_seqs, max_tokens) tokens. Longer steps launch every kernel from Python."""

    max_tokens: int = Field(gt=0, description="The cap of the default max_cudagraph_capture_size")
    per_sequence: int = Field(gt=0, description="Capture tokens per max_num_seqs below the cap")
    source: str = Field(description="Where the rule comes from")

    def capture_tokens(self, max_num_seqs: int) -> int:
        return min(self.per_sequence * max_num_seqs, self.max_tokens)


class InferenceEngine(CatalogModel):
    package: str = Field(description="The pip requirement name, extras included")
    version: str = Field(pattern=r"^[0-9]+(\.[0-9]+)+(\.post[0-9]+)?$")
    memory_model: MemoryModel | None = Field(None, description="Measured memory accounting of this version")
    cudagraph_capture: CudaGraphCapture | None = Field(None, description="Default CUDA-graph sizes of this version")


class Monitoring(CatalogModel):
    dcgm_exporter_image: str = Field(pattern=r"^[\w./-]+:[\w.-]+$", description="Image reference, tag pinned")
    dcgm_exporter_port: int = Field(gt=0, lt=65536)
    node_exporter_port: int = Field(gt=0, lt=65536)


AMI_ID = r"^ami-[0-9a-f]{8,17}$"  # an EC2 image id: the catalog's pins and a stack's ami_id


class GpuImage(CatalogModel):
    """The EC2 GPU node image: a family found by name, and the image pinned in each region where one is
    known. AMI IDs differ per region and per release and are published only through the EC2 API."""

    owner: str = Field(description="Image owner: an account id or 'amazon'")
    name_pattern: str = Field(description="EC2 image name filter of the family (newest match at deploy time)")
    architecture: Literal["x86_64", "arm64"]
    region_ids: dict[str, str] = Field(
        default_factory=dict, description="region -> pinned AMI id; a region without one uses the family's newest")

    @model_validator(mode="after")
    def _ids_are_amis(self) -> GpuImage:
        bad = [f"{region}: {ami}" for region, ami in self.region_ids.items() if not re.fullmatch(AMI_ID, ami)]
        if bad:
            raise ValueError(f"region_ids must map to AMI ids (ami-<8 to 17 hex digits>): {', '.join(bad)}")
        return self


class Software(CatalogModel):
    """The pinned host stack, installed as one set by the Ansible roles."""

    nvidia_repository: NvidiaRepository
    nvidia_driver: NvidiaDriver
    cuda: Cuda
    cuda_min_driver: dict[str, str]
    efa_installer: EfaInstaller
    efa_hugepages_per_core: int = Field(gt=0)
    nvidia_container_toolkit: ContainerToolkit
    inference_engines: dict[Literal["vllm", "sglang"], InferenceEngine]
    boto3_version: str
    monitoring: Monitoring
    gpu_image: GpuImage
    sources: SourceMap

    @model_validator(mode="after")
    def _driver_runs_cuda(self) -> Software:
        needed = self.cuda_min_driver.get(self.cuda.version)
        if needed is None:
            raise ValueError(f"cuda {self.cuda.version} is not in cuda_min_driver")
        if not self.nvidia_driver.version.startswith(self.nvidia_driver.branch + "."):
            raise ValueError(f"driver {self.nvidia_driver.version} is not on branch {self.nvidia_driver.branch}")
        if _version_key(self.nvidia_driver.version) < _version_key(needed):
            raise ValueError(
                f"driver {self.nvidia_driver.version} is older than CUDA {self.cuda.version} needs ({needed})"
            )
        return self


class Region(CatalogModel):
    name: str = Field(pattern=r"^[a-z]{2}(-gov)?-[a-z]+-\d{1,2}$", description="AWS region name")
    partition: Literal["aws", "aws-cn", "aws-us-gov"]


class Regions(CatalogModel):
    regions: tuple[Region, ...]
    sources: list[str]


class Catalog(CatalogModel):
    sources: dict[str, Source]
    gpus: tuple[Gpu, ...]
    instances: tuple[InstanceType, ...]
    models: tuple[ModelEntry, ...]
    software: Software
    regions: Regions

    @model_validator(mode="after")
    def _references_resolve(self) -> Catalog:
        errors = []
        gpu_names = {g.name: g for g in self.gpus}
        for record in (*self.gpus, *self.instances, *self.models, self.software):
            label = getattr(record, "slug", None) or getattr(record, "name", "software")
            for what, sid in record.sources.items():
                if sid not in self.sources:
                    errors.append(f"{label}: source {sid!r} for {what} is not in sources.yaml")
        errors += [f"regions: source {sid!r} is not in sources.yaml" for sid in self.regions.sources
                   if sid not in self.sources]
        region_names = {r.name for r in self.regions.regions}
        errors += [f"software.gpu_image.region_ids: {name!r} is not a region in regions.yaml"
                   for name in self.software.gpu_image.region_ids if name not in region_names]
        for inst in self.instances:
            if inst.price.source not in self.sources:
                errors.append(f"{inst.name}: price source {inst.price.source!r} unknown")
            gpu = gpu_names.get(inst.gpu)
            if gpu is None:
                errors.append(f"{inst.name}: GPU {inst.gpu!r} is not in gpus.yaml")
            elif abs(gpu.memory_gib - inst.gpu_memory_gib) > 0.01:
                errors.append(
                    f"{inst.name}: gpu_memory_gib {inst.gpu_memory_gib} disagrees with {gpu.name} {gpu.memory_gib}"
                )
        for kind, names in (
            ("GPU", [g.name.lower() for g in self.gpus] + [a.lower() for g in self.gpus for a in g.aliases]),
            ("instance", [i.name for i in self.instances]),
            ("model", [m.slug for m in self.models]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                errors.append(f"duplicate {kind} names or aliases: {', '.join(dupes)}")
        if errors:
            raise ValueError("; ".join(errors))
        return self
