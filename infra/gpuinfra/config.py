"""The stack's one config object, ``gpuinfra:cluster``: parsed, validated and resolved against the sizing engine.

Everything wrong with a stack file is reported at once, each problem with its field path, before any
resource is declared. Unknown keys are errors (a typo'd key must not silently fall back to a default).
"""

from __future__ import annotations

import copy
import ipaddress
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gpuinfra.catalog import InstanceType, find_gpu, find_instance_type, find_model, load_catalog, region_problem
from gpuinfra.catalog.schema import AMI_ID
from gpuinfra.documents import kind_of, load_yaml, parse_yaml
from gpuinfra.errors import InfeasibleError, InputError, Problem, problems_from_validation_error
from gpuinfra.kubernetes.target import Ec2Target, Target, target_problems
from gpuinfra.performance import DEFAULT_STREAM_TOKENS_PER_S, SlaTarget, default_workload, sla_reasons, steady_state
from gpuinfra.request import ServingRequest
from gpuinfra.sizing import (
    Evaluation,
    Hardware,
    SizingRequest,
    evaluate,
)

CONFIG_KEY = "gpuinfra:cluster"
DEFAULT_SERVING_PORT = 8000  # vLLM's own default; the plan carries it to the hosts (serving.port)
STACKS_DIR = Path(__file__).resolve().parents[2] / "stacks"
# Pulumi's stack-name rule (letters, digits, -, _, .); the name also becomes a file name and an AWS tag value.
STACK_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# AWS tag limits (EC2 User Guide, "Tag restrictions"): 50 tags per resource, of which gpuinfra reserves
# room for its own `gpuinfra:*` tags; keys up to 128 characters, values up to 256; `aws:` is AWS's prefix.
MAX_USER_TAGS = 30
MAX_TAG_KEY_LENGTH, MAX_TAG_VALUE_LENGTH = 128, 256
TAG_TEXT = re.compile(r"[\w .:/=+\-@]*")  # AWS allows spaces, not tabs or newlines
RESERVED_TAG_PREFIXES = ("aws:", "gpuinfra:")


def stack_name_problem(name: str) -> str | None:
    if STACK_NAME_PATTERN.fullmatch(name):  # fullmatch: `$` alone lets a trailing newline through
        return None
    return (f"{name[:60]!r} is not a stack name: 1-100 letters, digits, '-', '_' or '.', starting with a letter "
            "or digit")


def _refusing(problem_of):  # noqa: ANN001, ANN202 - a validator factory
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value

    return check


# Checked names, one definition each: the stack config and the stack outputs (gpuinfra.inventory) use them.
StackName = Annotated[str, AfterValidator(_refusing(stack_name_problem))]
RegionName = Annotated[str, AfterValidator(_refusing(region_problem))]


class StrictModel(BaseModel):
    """Unknown fields are rejected, which is what turns a typo'd key into an error instead of a default.
    NaN and infinity are refused: no limit, budget or SLA may be one. Types are strict: "4", 4.0 and yes are
    not a count, and "yes" is not a boolean (a quoted true in YAML is a string, not a switch)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


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


NetworkConfig = Annotated[CreateVpc | ExistingSubnets, Field(discriminator="mode")]


class Access(StrictModel):
    ssm: bool = Field(True, description="Reach nodes through SSM Session Manager (no inbound port)")
    ssh_cidrs: list[str] = Field(default_factory=list, description="Allow SSH only from these CIDRs")
    ssh_key_name: str | None = Field(None, description="EC2 key pair for SSH")

    @field_validator("ssh_cidrs")
    @classmethod
    def _no_open_ssh(cls, values: list[str]) -> list[str]:
        networks = []
        for value in values:
            try:
                networks.append(ipaddress.ip_network(value, strict=True))
            except ValueError as exc:
                raise ValueError(f"{value!r} is not a CIDR block ({exc})") from None
        for version, everything in ((4, ipaddress.ip_network("0.0.0.0/0")), (6, ipaddress.ip_network("::/0"))):
            union = list(ipaddress.collapse_addresses(n for n in networks if n.version == version))
            if union == [everything]:
                what = "this opens" if len(networks) == 1 else "together these open"
                raise ValueError(f"{what} SSH to the whole {'IPv4' if version == 4 else 'IPv6'} internet; name the "
                                 "networks that need it")
        return values


class Weights(StrictModel):
    source: str = Field(description="s3://bucket/prefix or hf://org/repo")
    revision: str | None = Field(None, description="HF revision (commit sha) to pin")

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        # The prefix lands in the node role's IAM policy: no wildcards, no ${policy variables}, no `..`.
        s3 = re.fullmatch(r"s3://([a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])(/[A-Za-z0-9!_.'()/-]*)?", value)
        hub = re.fullmatch(r"hf://[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*", value)
        if not (s3 or hub):
            raise ValueError("must be s3://bucket[/prefix] or hf://org/repo (prefix: letters, digits and "
                             "! _ . ' ( ) / -; no wildcards or ${...})")
        if s3 and (".." in s3.group(1) or "/../" in f"{s3.group(2) or ''}/" or (s3.group(2) or "").endswith("/..")):
            raise ValueError("an S3 bucket or prefix may not hold `..`")
        if hub and ".." in value:
            raise ValueError("a hub repo id may not hold `..`")
        return value

    @field_validator("revision")
    @classmethod
    def _revision(cls, value: str | None) -> str | None:
        # It becomes the stager's --revision argument: a commit, tag or branch, never an option.
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}", value):
            raise ValueError("must be a commit sha, tag or branch (letters, digits and . _ / -, not starting with -)")
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
    port: int = Field(DEFAULT_SERVING_PORT, ge=1, le=65535, description="The inference server's port")


class Sla(StrictModel):
    """Service levels the load test and the alert rules compare the running server against."""

    ttft_p99_s: float = Field(2.0, gt=0, description="99th percentile time to first token, seconds")
    e2e_p99_s: float = Field(60.0, gt=0, description="99th percentile end-to-end request latency, seconds")
    error_rate: float = Field(0.01, ge=0, le=1, description="Largest acceptable share of failed (5xx) requests")
    min_output_tokens_per_s: float | None = Field(
        None, gt=0, description="Aggregate generation throughput floor at the stack's concurrency")
    min_stream_tokens_per_s: float = Field(
        DEFAULT_STREAM_TOKENS_PER_S, gt=0, description="Output tokens/s each stream must see at the stack's "
                                                       "concurrency (the planner's floor; default: reading speed)")

    def target(self) -> SlaTarget:
        """What the planner checks an instance type against (steady state at the stack's concurrency)."""
        return SlaTarget(ttft_p99_s=self.ttft_p99_s, min_stream_tokens_per_s=self.min_stream_tokens_per_s,
                         floor_is_default="min_stream_tokens_per_s" not in self.model_fields_set)


class ClusterConfig(ServingRequest):
    """`gpuinfra:cluster`: what to serve (the serving request's fields, flat), where, on what capacity."""

    instance_types: list[str] | None = Field(
        None, min_length=1, description="Launchable types, in priority order; default: every type that fits"
    )
    nodes: int = Field(1, ge=1, le=64, description="Nodes in the pool: model copies x nodes_per_copy")
    nodes_per_copy: int | None = Field(
        None, ge=1, le=64, description="Nodes one model copy spans (pipeline parallel over EFA); default: the "
                                       "fewest that serve the request")
    capacity: Capacity = Field(default_factory=OnDemand)
    region: RegionName = Field("us-east-1", description="AWS region (one of the catalog's)")
    availability_zone: str | None = Field(None, description="Required for multi-node (cluster placement group)")
    network: NetworkConfig = Field(default_factory=CreateVpc)
    access: Access = Field(default_factory=Access)
    weights: Weights
    ami_id: str | None = Field(None, pattern=AMI_ID, description="Override the GPU AMI lookup")
    root_volume_gib: int | None = Field(None, ge=100, le=16384, description="Root EBS volume; default 200 GiB (OS, "
                                                                         "drivers, images: weights use the NVMe)")
    endpoint: Endpoint = Field(default_factory=Endpoint)
    sla: Sla = Field(default_factory=Sla, description="Latency, error-rate and throughput targets")
    hourly_budget_usd: float | None = Field(None, gt=0, description="Refuse plans whose on-demand cost exceeds it")
    tags: dict[str, str] = Field(default_factory=dict)
    target: Target = Field(default_factory=Ec2Target, description="Where to serve: ec2 (default), eks or an "
                                                                  "existing cluster (kubernetes)")

    def serving_request(self) -> ServingRequest:
        """The request alone, without where and on what it is served."""
        return ServingRequest(**{name: getattr(self, name) for name in ServingRequest.model_fields})

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: dict[str, str]) -> dict[str, str]:
        problems = tag_problems(tags)
        if problems:
            raise InputError(problems)
        return tags

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
        if name in (config.instance_types or [])[:index]:
            problems.append(Problem(f"instance_types.{index}", f"{name} is listed twice"))
    for index, cidr in enumerate(config.access.ssh_cidrs):
        if cidr in config.access.ssh_cidrs[:index]:
            problems.append(Problem(f"access.ssh_cidrs.{index}", f"{cidr} is listed twice"))
    if config.nodes_per_copy:
        if config.nodes % config.nodes_per_copy:
            problems.append(Problem("nodes", f"{config.nodes} is not a whole number of copies of "
                                             f"nodes_per_copy {config.nodes_per_copy}"))
        problems += spanning_problems(config, config.nodes_per_copy)
    if config.availability_zone is not None and not zone_in_region(config.availability_zone, config.region):
        problems.append(Problem("availability_zone", f"{config.availability_zone!r} is not a zone of region "
                                                     f"{config.region} (zones are {config.region}a, "
                                                     f"{config.region}b, ...)"))
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
    problems += [Problem(path, reason) for path, reason in target_problems(config)]
    return problems


def zone_in_region(zone: str, region: str) -> bool:
    """ZONE is REGION plus a zone letter (us-east-1a), or one of its Local Zones (us-east-1-bos-1a)."""
    return re.fullmatch(rf"{re.escape(region)}(-[a-z]+-\d+)?[a-z]", zone) is not None


def tag_problems(tags: dict[str, str]) -> list[Problem]:
    """What AWS (or gpuinfra's own tags) would refuse in the stack's user tags, each with its key."""
    problems: list[Problem] = []
    if len(tags) > MAX_USER_TAGS:
        problems.append(Problem("", f"{len(tags)} tags: at most {MAX_USER_TAGS} (AWS allows 50 per resource and "
                                    "gpuinfra adds its own)"))
    for key, value in tags.items():
        where = key[:40]
        if not key or len(key) > MAX_TAG_KEY_LENGTH:
            problems.append(Problem(where, f"a tag key must be 1-{MAX_TAG_KEY_LENGTH} characters"))
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            problems.append(Problem(where, f"keys starting with {' or '.join(RESERVED_TAG_PREFIXES)} are reserved "
                                           "(AWS's and gpuinfra's own tags)"))
        if len(value) > MAX_TAG_VALUE_LENGTH:
            problems.append(Problem(where, f"a tag value must be at most {MAX_TAG_VALUE_LENGTH} characters"))
        for text, what in ((key, "key"), (value, "value")):
            if not TAG_TEXT.fullmatch(text):
                problems.append(Problem(where, f"the {what} may hold only letters, digits, spaces and _ . : / = + - @"))
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


def resolve(stack: str, config: ClusterConfig) -> ResolvedCluster:
    """Size the request on every launchable type. A type that cannot serve it, or a pool over the budget, is
    an InfeasibleError with its reasons; a multi-node span the config does not allow is an InputError."""
    try:
        request = config.serving_request().sizing_request()
    except InputError as exc:
        raise InputError(Problem(f"cluster.{p.path}", p.reason) for p in exc.problems) from None
    spans = [config.nodes_per_copy] if config.nodes_per_copy else [
        span for span in range(1, config.nodes + 1) if config.nodes % span == 0]
    if config.instance_types:
        span, evaluations = _size_named_types(request, config, spans)
        launchable = config
    else:
        span, evaluations = _cheapest_fitting_types(request, config, spans)
        launchable = config.model_copy(update={"instance_types": [e.instance_type for e in evaluations]})
    if not config.nodes_per_copy:
        problems = spanning_problems(launchable, span, prefix="cluster.")
        if problems:
            raise InputError(problems)
    over = _over_budget(evaluations, config, span)
    if over:
        raise InfeasibleError(Problem("cluster.hourly_budget_usd", _budget_reason(e, config, span)) for e in over)
    resolved = ResolvedCluster(stack=stack, config=config, request=request, evaluations=evaluations)
    if not isinstance(config.target, Ec2Target):
        from gpuinfra.kubernetes.serving_plan import check_kubernetes_target  # needs this module's types

        check_kubernetes_target(resolved)
    return resolved


def _size_named_types(request: SizingRequest, config: ClusterConfig,
                      spans: list[int]) -> tuple[int, list[Evaluation]]:
    """The smallest span on which every named type serves the request; else every reason, per type."""
    instances = [find_instance_type(name) for name in config.instance_types or []]
    for span in spans:
        evaluations = [evaluate(request, Hardware.from_instance(i, span)) for i in instances]
        if all(e.feasible for e in evaluations):
            missed = [Problem(f"cluster.instance_types.{index}", f"{e.instance_type} x {span} node(s): {reason}")
                      for index, e in enumerate(evaluations) for reason in _sla_misses(request, config, e)]
            if missed:
                raise InfeasibleError(missed)
            return span, evaluations
    raise InfeasibleError(Problem(f"cluster.instance_types.{index}", f"{e.instance_type} x {span} node(s): {reason}")
                          for index, e in enumerate(evaluations) for reason in e.reasons)


def _cheapest_fitting_types(request: SizingRequest, config: ClusterConfig,
                            spans: list[int]) -> tuple[int, list[Evaluation]]:
    """The smallest span on which some catalog type fits (within the budget): the cheapest type, or on spot
    every fitting type, cheapest first. The nodes of one multi-node copy must be identical: one type."""
    for span in spans:
        candidates = [evaluate(request, Hardware.from_instance(instance, span))
                      for instance in load_catalog().instances if span == 1 or instance.efa.supported]
        fitting = [e for e in candidates if e.feasible and not _over_budget([e], config, span)
                   and not _sla_misses(request, config, e)]
        fitting.sort(key=lambda e: (e.cost_per_hour_usd is None, e.cost_per_hour_usd or 0.0))
        if fitting:
            diversify = isinstance(config.capacity, Spot) and span == 1
            return span, fitting if diversify else fitting[:1]
    budget = config.hourly_budget_usd
    raise InfeasibleError([Problem("cluster.instance_types", f"no catalog instance type serves {config.model} at "
                                                             f"{config.concurrency} x {config.context_tokens} tokens "
                                                             f"on up to {config.nodes} node(s)"
                                                             + (f" within ${budget:.2f}/h" if budget else "")
                                                             + " and the sla; see `gpuinfra size`")])


def _sla_misses(request: SizingRequest, config: ClusterConfig, evaluation: Evaluation) -> list[str]:
    """Why this type misses the stack's SLA in steady state at its concurrency (empty: it meets it)."""
    workload = default_workload(request)
    steady = steady_state(request, evaluation, find_gpu(evaluation.gpu), workload)
    return sla_reasons(steady, config.sla.target(), workload.concurrency)


def _pool_cost(evaluation: Evaluation, config: ClusterConfig, span: int) -> float | None:
    """The whole pool's on-demand $/h on this type: an evaluation prices one copy of SPAN nodes."""
    if evaluation.cost_per_hour_usd is None:
        return None
    return evaluation.cost_per_hour_usd * (config.nodes // span)


def _over_budget(evaluations: list[Evaluation], config: ClusterConfig, span: int) -> list[Evaluation]:
    """The evaluations whose pool costs more than the budget, or has no price to compare with it."""
    budget = config.hourly_budget_usd
    if budget is None:
        return []
    return [e for e in evaluations if (_pool_cost(e, config, span) or math.inf) > budget]


def _budget_reason(evaluation: Evaluation, config: ClusterConfig, span: int) -> str:
    cost = _pool_cost(evaluation, config, span)
    if cost is None:
        return (f"{evaluation.instance_type} has no catalog price, so it cannot be checked against the "
                f"${config.hourly_budget_usd:.2f}/h budget")
    return (f"{config.nodes} x {evaluation.instance_type} cost ${cost:.2f}/h on demand, over the "
            f"${config.hourly_budget_usd:.2f}/h budget")


def stack_file(stack: str, directory: Path = STACKS_DIR) -> Path:
    return directory / f"Pulumi.{stack}.yaml"


def stack_name_from_file(path: Path) -> str:
    """`stacks/Pulumi.prod-70b.yaml` -> `prod-70b` (Pulumi's own naming of stack files)."""
    name = path.name
    for suffix in (".yaml", ".yml"):
        name = name.removesuffix(suffix)
    return name.removeprefix("Pulumi.")


def read_stack_document(file: Path) -> dict[str, Any]:
    """The `gpuinfra:cluster` object of a stack file, refusing every malformed shape with a clear reason."""
    label = str(file)
    document = load_yaml(file, label)
    if document is None:
        raise InputError([Problem(label, f"is empty; a stack file holds config.{CONFIG_KEY}")])
    if not isinstance(document, dict):
        raise InputError([Problem(label, f"must be a mapping with a config: key, got {kind_of(document)}")])
    config = document.get("config")
    if not isinstance(config, dict):
        reason = "is missing" if config is None else f"must be a mapping, got {kind_of(config)}"
        raise InputError([Problem(f"{label}: config", reason)])
    raw = config.get(CONFIG_KEY)
    if raw is None:
        raise InputError([Problem(label, f"has no config.{CONFIG_KEY} object")])
    if not isinstance(raw, dict):
        raise InputError([Problem(f"{label}: config.{CONFIG_KEY}", f"must be a mapping, got {kind_of(raw)}")])
    return raw


def load_stack(stack: str, *, path: Path | None = None, overrides: dict[str, Any] | None = None) -> ResolvedCluster:
    """Read `stacks/Pulumi.<stack>.yaml` (or PATH), apply `--set` overrides, validate and resolve."""
    problem = stack_name_problem(stack)
    if problem:
        raise InputError([Problem("STACK", problem)])
    file = path or stack_file(stack)
    if path is None and not file.is_file():
        known = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in STACKS_DIR.glob("Pulumi.*.yaml"))
        raise InputError([Problem("STACK", f"{file} does not exist (shipped stacks: {', '.join(known)})")])
    raw = read_stack_document(file)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return resolve(stack, parse_cluster(raw))


OVERRIDE_KEY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*$")
LIST_FIELDS = ("instance_types", "access.ssh_cidrs", "network.subnet_ids", "network.load_balancer_subnet_ids")


def parse_override(text: str) -> tuple[str, Any]:
    """`FIELD=VALUE` (dotted paths allowed); VALUE is YAML, and a comma list becomes a list for list fields."""
    if "=" not in text:
        raise InputError([Problem("--set", f"{text[:80]!r} is not FIELD=VALUE")])
    key, value = text.split("=", 1)
    if not key:
        raise InputError([Problem("--set", f"{text[:80]!r} has no field name")])
    if not OVERRIDE_KEY.fullmatch(key):
        raise InputError([Problem("--set", f"{key[:80]!r} is not a field path (lower-case names joined by dots, "
                                           "e.g. sla.ttft_p99_s)")])
    try:
        parsed = parse_yaml(value, f"--set {key}") if value else ""
    except InputError as exc:
        if any("not valid YAML" in p.reason for p in exc.problems):
            parsed = value  # not YAML: the text itself
        else:
            raise
    if key in LIST_FIELDS and isinstance(parsed, str):
        parsed = [item.strip() for item in parsed.split(",") if item.strip()]
    return key, parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """RAW with each dotted-path override set; a path through a value that is not a mapping is an error."""
    result = copy.deepcopy(raw)
    problems = []
    for key, value in overrides.items():
        target = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            if target.get(part) is None:
                target[part] = {}
            elif not isinstance(target[part], dict):
                problems.append(Problem(f"--set {key}", f"{'.'.join(parts[:depth + 1])} is "
                                                        f"{kind_of(target[part])}, not a mapping"))
                break
            target = target[part]
        else:
            target[parts[-1]] = value
    if problems:
        raise InputError(problems)
    return result
