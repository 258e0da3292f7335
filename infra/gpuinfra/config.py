"""The stack's one config object, ``gpuinfra:cluster``: parsed, validated and resolved against the sizing engine.

Everything wrong with a stack file is reported at once, each problem with its field path, before any
resource is declared. Unknown keys are errors (a typo'd key must not silently fall back to a default).
"""

from __future__ import annotations

import ipaddress
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from gpuinfra.catalog import InstanceType, find_instance_type, find_model, load_catalog
from gpuinfra.errors import InputError, Problem, problems_from_validation_error
from gpuinfra.sizing import (
    DEFAULT_GPU_MEMORY_UTILIZATION,
    AttentionParallel,
    Evaluation,
    Hardware,
    KvCacheDtype,
    ModelSpec,
    Precision,
    SizingRequest,
    build_request,
    evaluate,
)

CONFIG_KEY = "gpuinfra:cluster"
STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"
REGION_PATTERN = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")


class StrictModel(BaseModel):
    """Unknown fields are rejected, which is what turns a typo'd key into an error instead of a default."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class OnDemand(StrictModel):
    type: Literal["on-demand"] = "on-demand"


class Spot(StrictModel):
    type: Literal["spot"]
    max_price_usd_per_hour: float | None = Field(None, gt=0, description="Cap per instance-hour; default: on-demand")


class CapacityReservation(StrictModel):
    type: Literal["capacity-reservation"]
    reservation_id: str = Field(pattern=r"^cr-[0-9a-f]{8,17}$", description="On-Demand Capacity Reservation id")


class CapacityBlock(StrictModel):
    type: Literal["capacity-block"]
    reservation_id: str = Field(pattern=r"^cr-[0-9a-f]{8,17}$", description="EC2 Capacity Block reservation id")


Capacity = Annotated[OnDemand | Spot | CapacityReservation | CapacityBlock, Field(discriminator="type")]


class CreateVpc(StrictModel):
    mode: Literal["create"] = "create"
    cidr: str = Field("10.42.0.0/16", description="VPC CIDR; one private and one public subnet are carved from it")
    egress: Literal["nat", "endpoints"] = Field(
        "nat", description="nat: NAT gateway (HF hub reachable); endpoints: S3/SSM/ECR VPC endpoints only"
    )

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        network = ipaddress.ip_network(value, strict=True)
        if network.version != 4 or not 16 <= network.prefixlen <= 24:
            raise ValueError("must be an IPv4 network between /16 and /24")
        return value


class ExistingSubnets(StrictModel):
    mode: Literal["existing"]
    vpc_id: str = Field(pattern=r"^vpc-[0-9a-f]{8,17}$")
    subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = Field(
        min_length=1, description="Private subnets for the GPU nodes")
    load_balancer_subnet_ids: list[Annotated[str, Field(pattern=r"^subnet-[0-9a-f]{8,17}$")]] = Field(
        default_factory=list, description="Private subnets in two or more zones for the internal load balancer")


Network = Annotated[CreateVpc | ExistingSubnets, Field(discriminator="mode")]


class Access(StrictModel):
    ssm: bool = Field(True, description="Reach nodes through SSM Session Manager (no inbound port)")
    ssh_cidrs: list[str] = Field(default_factory=list, description="Allow SSH only from these CIDRs")
    ssh_key_name: str | None = Field(None, description="EC2 key pair for SSH")

    @field_validator("ssh_cidrs")
    @classmethod
    def _no_open_ssh(cls, values: list[str]) -> list[str]:
        for value in values:
            network = ipaddress.ip_network(value, strict=False)
            if network.prefixlen == 0:
                raise ValueError(f"{value} opens SSH to the whole internet; name the networks that need it")
        return values


class Weights(StrictModel):
    source: str = Field(description="s3://bucket/prefix or hf://org/repo")
    revision: str | None = Field(None, description="HF revision (commit sha) to pin")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        if not re.match(r"^(s3://[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9](/.*)?|hf://[\w.\-]+/[\w.\-]+)$", value):
            raise ValueError("must be s3://bucket[/prefix] or hf://org/repo")
        return value

    @property
    def s3_bucket(self) -> str | None:
        return self.source[5:].split("/", 1)[0] if self.source.startswith("s3://") else None

    @property
    def s3_prefix(self) -> str:
        rest = self.source[5:].split("/", 1)
        return rest[1].strip("/") if len(rest) > 1 else ""


class Endpoint(StrictModel):
    enabled: bool = Field(False, description="Internal load balancer in front of the nodes")
    port: int = Field(8000, ge=1, le=65535, description="The inference server's port")


class Sla(StrictModel):
    """Service levels the load test and the alert rules compare the running server against."""

    ttft_p99_s: float = Field(2.0, gt=0, description="99th percentile time to first token, seconds")
    e2e_p99_s: float = Field(60.0, gt=0, description="99th percentile end-to-end request latency, seconds")
    error_rate: float = Field(0.01, ge=0, le=1, description="Largest acceptable share of failed (5xx) requests")
    min_output_tokens_per_s: float | None = Field(
        None, gt=0, description="Aggregate generation throughput floor at the stack's concurrency")


class ClusterConfig(StrictModel):
    """`gpuinfra:cluster`: what to serve, where, on what capacity."""

    model: str = Field(description="Catalog model slug or HF repo id (e.g. deepseek-r1-distill-llama-70b)")
    precision: Precision | None = Field(None, description="Weight precision; default: the model's native one")
    kv_cache_dtype: KvCacheDtype = "auto"
    context_tokens: int = Field(32768, gt=0, description="max_model_len per sequence")
    concurrency: int = Field(1, gt=0, description="Concurrent sequences at full context the cluster must hold")
    attention_parallel: AttentionParallel = "tp"
    gpu_memory_utilization: float = Field(DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1)
    instance_types: list[str] | None = Field(
        None, min_length=1, description="Launchable types, in priority order; default: every type that fits"
    )
    nodes: int = Field(1, ge=1, le=64, description="Nodes in the pool: model copies x nodes_per_copy")
    nodes_per_copy: int | None = Field(
        None, ge=1, le=64, description="Nodes one model copy spans (pipeline parallel over EFA); default: the "
                                       "fewest that serve the request")
    capacity: Capacity = Field(default_factory=OnDemand)
    region: str = Field("us-east-1")
    availability_zone: str | None = Field(None, description="Required for multi-node (cluster placement group)")
    network: Network = Field(default_factory=CreateVpc)
    access: Access = Field(default_factory=Access)
    weights: Weights
    ami_id: str | None = Field(None, pattern=r"^ami-[0-9a-f]{8,17}$", description="Override the GPU AMI lookup")
    root_volume_gib: int | None = Field(None, ge=100, le=16384, description="Default: sized for images + weights")
    endpoint: Endpoint = Field(default_factory=Endpoint)
    sla: Sla = Field(default_factory=Sla, description="Latency, error-rate and throughput targets")
    hourly_budget_usd: float | None = Field(None, gt=0, description="Refuse plans whose on-demand cost exceeds it")
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not REGION_PATTERN.match(value):
            raise ValueError(f"{value!r} is not an AWS region name")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _every_problem_at_once(cls, data: Any, handler: Any, info: ValidationInfo) -> ClusterConfig:
        """Field errors and cross-field errors together: the cross-field checks also run on the fields that
        did validate when others did not."""
        if info.context and info.context.get("fields_only"):
            return handler(data)
        try:
            config = handler(data)
        except ValidationError as exc:
            problems = problems_from_validation_error(exc)
            if isinstance(data, dict):
                failed = {p.path.split(".")[0] for p in problems}
                valid = {k: v for k, v in data.items() if k in cls.model_fields and k not in failed}
                try:
                    partial = cls.model_validate({**_PLACEHOLDERS, **valid}, context={"fields_only": True})
                except ValidationError:
                    partial = None
                if partial is not None:
                    problems += [p for p in _cross_field_problems(partial) if p.path.split(".")[0] not in failed]
            raise InputError(problems) from None
        problems = _cross_field_problems(config)
        if problems:
            raise InputError(problems)
        return config


# Stand-ins for required fields, so cross-field checks can run on a config whose other fields failed.
_PLACEHOLDERS: dict[str, Any] = {"model": "deepseek-r1-distill-qwen-1.5b", "weights": {"source": "hf://x/y"}}


def _cross_field_problems(config: ClusterConfig) -> list[Problem]:
    problems: list[Problem] = []
    try:
        find_model(config.model, path="model")
    except InputError as exc:
        problems.extend(exc.problems)
    for index, name in enumerate(config.instance_types or []):
        try:
            find_instance_type(name, path=f"instance_types.{index}")
        except InputError as exc:
            problems.extend(exc.problems)
    if config.nodes_per_copy:
        if config.nodes % config.nodes_per_copy:
            problems.append(Problem("nodes", f"{config.nodes} is not a whole number of copies of "
                                             f"nodes_per_copy {config.nodes_per_copy}"))
        problems += spanning_problems(config, config.nodes_per_copy)
    if config.availability_zone and not config.availability_zone.startswith(config.region):
        problems.append(Problem("availability_zone", f"{config.availability_zone} is not in region {config.region}"))
    reserved = isinstance(config.capacity, CapacityReservation | CapacityBlock)
    if reserved and not config.availability_zone:
        problems.append(Problem("availability_zone", "is required with a capacity reservation or block "
                                                     "(it must match the reservation's zone)"))
    if reserved and len(config.instance_types or []) != 1:
        problems.append(Problem("instance_types", "a capacity reservation or block is for exactly one "
                                                  "instance type: name it"))
    if isinstance(config.network, ExistingSubnets) and config.endpoint.enabled and len(
            set(config.network.load_balancer_subnet_ids)) < 2:
        problems.append(Problem("network.load_balancer_subnet_ids", "an internal load balancer needs subnets in at "
                                                                    "least two zones"))
    if isinstance(config.network, CreateVpc) and config.network.egress == "endpoints" and \
            config.weights.source.startswith("hf://"):
        problems.append(Problem("weights.source", "the Hugging Face hub is unreachable with egress: endpoints; stage "
                                                  "the weights in S3 or use egress: nat"))
    if not config.access.ssm and not config.access.ssh_cidrs:
        problems.append(Problem("access", "enable ssm or give ssh_cidrs: otherwise nothing can configure the nodes"))
    if config.access.ssh_cidrs and not config.access.ssh_key_name:
        problems.append(Problem("access.ssh_key_name", "is required when ssh_cidrs is set"))
    return problems


def spanning_problems(config: ClusterConfig, span: int, *, prefix: str = "") -> list[Problem]:
    """What a model copy spanning several nodes needs: EFA on every type, one zone (cluster placement group),
    identical nodes."""
    if span <= 1:
        return []
    problems = []
    why = f"a model copy spans {span} nodes"
    for index, name in enumerate(config.instance_types or []):
        try:
            instance = find_instance_type(name)
        except InputError:
            continue
        if not instance.efa.supported:
            problems.append(Problem(f"{prefix}instance_types.{index}", f"{name} has no EFA; {why} and needs it"))
    if not config.availability_zone:
        problems.append(Problem(f"{prefix}availability_zone", f"is required: {why}, and a cluster placement group "
                                                              "and EFA keep them in one zone"))
    if isinstance(config.network, ExistingSubnets) and len(config.network.subnet_ids) != 1:
        problems.append(Problem(f"{prefix}network.subnet_ids", f"must be exactly one subnet (one zone): {why}"))
    if len(config.instance_types or []) > 1:
        problems.append(Problem(f"{prefix}instance_types", f"give one instance type: {why}, which must be identical"))
    return problems


class ResolvedCluster(BaseModel):
    """A valid config with the sizing engine's answer for every instance type it may launch."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    stack: str
    config: ClusterConfig
    request: SizingRequest
    evaluations: list[Evaluation] = Field(description="One per launchable instance type, priority order")

    @cached_property
    def instance_types(self) -> list[InstanceType]:
        return [find_instance_type(e.instance_type) for e in self.evaluations if e.instance_type]

    @property
    def primary(self) -> Evaluation:
        return self.evaluations[0]

    @property
    def nodes_per_copy(self) -> int:
        return self.primary.nodes

    @property
    def copies(self) -> int:
        return self.config.nodes // self.nodes_per_copy

    @property
    def max_cost_per_hour_usd(self) -> float | None:
        """The whole pool on demand at its most expensive launchable type (an evaluation prices one copy)."""
        costs = [e.cost_per_hour_usd for e in self.evaluations if e.cost_per_hour_usd is not None]
        return round(max(costs) * self.copies, 2) if costs else None


def parse_cluster(raw: Any, *, prefix: str = "cluster") -> ClusterConfig:
    if not isinstance(raw, dict):
        raise InputError([Problem(prefix, f"must be a mapping, got {type(raw).__name__}")])
    try:
        return ClusterConfig(**raw)
    except ValidationError as exc:
        raise InputError(problems_from_validation_error(exc, prefix)) from None


def sizing_request(config: ClusterConfig) -> SizingRequest:
    return build_request(
        model=ModelSpec.from_catalog(find_model(config.model)),
        precision=config.precision,
        kv_cache_dtype=config.kv_cache_dtype,
        context_tokens=config.context_tokens,
        concurrency=config.concurrency,
        attention_parallel=config.attention_parallel,
        gpu_memory_utilization=config.gpu_memory_utilization,
    )


def resolve(stack: str, config: ClusterConfig) -> ResolvedCluster:
    """Size the request on every launchable type; any type that cannot serve it is an error with its reasons."""
    try:
        request = sizing_request(config)
    except InputError as exc:
        raise InputError(Problem(f"cluster.{p.path}", p.reason) for p in exc.problems) from None
    problems: list[Problem] = []
    spans = [config.nodes_per_copy] if config.nodes_per_copy else [
        span for span in range(1, config.nodes + 1) if config.nodes % span == 0]
    budget = config.hourly_budget_usd
    if config.instance_types:
        instances = [find_instance_type(name) for name in config.instance_types]
        for span in spans:
            evaluations = [evaluate(request, Hardware.from_instance(i, span)) for i in instances]
            if all(e.feasible for e in evaluations):
                break
        for index, evaluation in enumerate(evaluations):
            problems.extend(Problem(f"cluster.instance_types.{index}", f"{evaluation.instance_type} x {span} "
                                                                       f"node(s): {reason}")
                            for reason in evaluation.reasons)
    else:
        for span in spans:
            candidates = [evaluate(request, Hardware.from_instance(instance, span))
                          for instance in load_catalog().instances if span == 1 or instance.efa.supported]
            evaluations = sorted((e for e in candidates if e.feasible and (
                                     budget is None or (e.cost_per_hour_usd or math.inf) <= budget)),
                                 key=lambda e: (e.cost_per_hour_usd is None, e.cost_per_hour_usd or 0.0))
            if evaluations:
                break
        if not isinstance(config.capacity, Spot) or span > 1:
            # Spot diversifies across every type that fits; otherwise the cheapest. The nodes of one
            # multi-node copy must be identical, so they get one type even on spot.
            evaluations = evaluations[:1]
        if not evaluations:
            problems.append(Problem("cluster.instance_types", f"no catalog instance type serves {config.model} at "
                                                              f"{config.concurrency} x {config.context_tokens} tokens "
                                                              f"on up to {config.nodes} node(s)"
                                                              + (f" within ${budget:.2f}/h" if budget else "")
                                                              + "; see `gpuinfra size`"))
        config_for_span = config.model_copy(update={"instance_types": [e.instance_type for e in evaluations]})
    if not problems and not config.nodes_per_copy:
        problems += spanning_problems(config if config.instance_types else config_for_span, span, prefix="cluster.")
    if config.hourly_budget_usd is not None:
        copies = config.nodes // span
        over = [e for e in evaluations if e.cost_per_hour_usd and e.cost_per_hour_usd * copies > budget]
        for e in over:
            problems.append(Problem("cluster.hourly_budget_usd",
                                    f"{config.nodes} x {e.instance_type} cost "
                                    f"${e.cost_per_hour_usd * copies:.2f}/h on demand, "
                                    f"over the ${budget:.2f}/h budget"))
    if problems:
        raise InputError(problems)
    return ResolvedCluster(stack=stack, config=config, request=request, evaluations=evaluations)


def stack_file(stack: str, directory: Path = STACKS_DIR) -> Path:
    return directory / f"Pulumi.{stack}.yaml"


def load_stack(stack: str, *, path: Path | None = None, overrides: dict[str, Any] | None = None) -> ResolvedCluster:
    """Read `stacks/Pulumi.<stack>.yaml` (or PATH), apply `--set` overrides, validate and resolve."""
    file = path or stack_file(stack)
    if not file.is_file():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in STACKS_DIR.glob("Pulumi.*.yaml"))
        raise InputError([Problem("STACK", f"{file} does not exist (shipped stacks: {', '.join(known)})")])
    try:
        document = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise InputError([Problem(str(file), f"not valid YAML: {exc}")]) from None
    raw = (document.get("config") or {}).get(CONFIG_KEY) if isinstance(document, dict) else None
    if raw is None:
        raise InputError([Problem(str(file), f"has no config.{CONFIG_KEY} object")])
    if overrides:
        raw = apply_overrides(raw, overrides)
    return resolve(stack, parse_cluster(raw))


def parse_override(text: str) -> tuple[str, Any]:
    """`FIELD=VALUE` (dotted paths allowed); VALUE is YAML, and a comma list becomes a list for list fields."""
    if "=" not in text:
        raise InputError([Problem("--set", f"{text!r} is not FIELD=VALUE")])
    key, value = text.split("=", 1)
    if not key:
        raise InputError([Problem("--set", f"{text!r} has no field name")])
    try:
        parsed = yaml.safe_load(value) if value else ""
    except yaml.YAMLError:
        parsed = value
    if key in ("instance_types", "access.ssh_cidrs", "network.subnet_ids") and isinstance(parsed, str):
        parsed = [item.strip() for item in parsed.split(",") if item.strip()]
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    result = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for key, value in overrides.items():
        target = result
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                target[part] = {}
            target = target[part]
        target[parts[-1]] = value
    return result
