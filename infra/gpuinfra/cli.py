"""The ``gpuinfra`` command line.

Exit codes (a contract, the same for every command): 0 ok (feasible, options found, no mandatory
violation); 1 infeasible (nothing fits, over budget) or a mandatory policy violation; 2 bad input, one
``error: <where>: <why>`` line per problem; 3 an internal error, one ``internal error:`` line (the traceback
only with ``--debug``). Nothing is written when the exit code is not 0 or 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import yaml

from gpuinfra.defaults import DEFAULT_CONTEXT_TOKENS, DEFAULT_GPU_MEMORY_UTILIZATION, DEFAULT_MAX_NODES
from gpuinfra.environments.cli import add_env_parser, run_env
from gpuinfra.errors import InfeasibleError, InputError, Problem

EXIT_OK, EXIT_INFEASIBLE, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
# Bounds on counts a user types: well past any real deployment, far short of what would hang the planner.
LIMITS = {"--input-tokens": 16_777_216, "--output-tokens": 16_777_216, "--nodes": 64, "--max-nodes": 64,
          "--gpus-per-node": 16, "--concurrency": 65536,
          "--context": 16_777_216, "--max-num-batched-tokens": 16_777_216, "--tensor-parallel": 16}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage problems as InputError (exit 2, our format) instead of exiting itself."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # `--gpus` must not silently mean --gpus-per-node

    def error(self, message: str) -> NoReturn:
        raise InputError([Problem("", message)])


def _number(text: str | None, flag: str, problems: list[Problem], kind: Callable[[str], Any] = int) -> Any:
    if text is None:
        return None
    try:
        if not text.isascii() or "_" in text:  # int() and float() also take "1_000" and other scripts' digits
            raise ValueError(text)
        value = kind(text)
    except ValueError:
        problems.append(Problem(flag, f"must be a {'whole number' if kind is int else 'number'}, got {text[:40]!r}"))
        return None
    if not math.isfinite(value):
        problems.append(Problem(flag, f"must be a finite number, got {text[:40]}"))
        return None
    if value <= 0:
        problems.append(Problem(flag, f"must be greater than 0, got {text[:40]}"))
        return None
    limit = LIMITS.get(flag)
    if limit is not None and value > limit:
        problems.append(Problem(flag, f"must be at most {limit:,}, got {text[:40]}"))
        return None
    return value


def _add_request_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", help="catalog slug or HF repo id (omit with --model-config)")
    parser.add_argument("--model-config", metavar="PATH", help="a local Hugging Face config.json")
    parser.add_argument("--precision", choices=["bf16", "fp16", "fp8", "int8", "int4-awq", "int4-gptq"])
    parser.add_argument("--kv-cache-dtype", choices=["auto", "fp8"], help="default auto (16-bit)")
    parser.add_argument("--context", metavar="TOKENS",
                        help=f"max_model_len per sequence (default {DEFAULT_CONTEXT_TOKENS})")
    parser.add_argument("--concurrency", metavar="N", help="concurrent sequences at full context (default 1)")
    parser.add_argument("--gpu-memory-utilization", metavar="F",
                        help=f"vLLM's fraction of GPU memory ({DEFAULT_GPU_MEMORY_UTILIZATION:.2f})")
    parser.add_argument("--attention-parallel", choices=["tp", "dp"],
                        help="MLA models: tp (default) replicates the latent KV on every rank, dp partitions sequences")
    parser.add_argument("--request-json", metavar="JSON",
                        help="the whole serving request as JSON (what the stack outputs carry as `request`), "
                             "instead of MODEL and the request flags")
    parser.add_argument("--max-num-batched-tokens", metavar="N", help="vLLM token budget per step")
    parser.add_argument("--tensor-parallel", metavar="N", help="force this TP size")
    parser.add_argument("--allow-fp8-weight-only", action="store_true",
                        help="allow FP8 weights on GPUs without FP8 tensor cores (weight-only)")


def _build_parser() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="on an internal error, print the traceback")
    parser = _Parser(prog="gpuinfra", description="Size, plan and validate GPU inference clusters.",
                     parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    size = commands.add_parser("size", parents=[common],
                               help="can this hardware serve this model? (or: which hardware can)")
    _add_request_arguments(size)
    size.add_argument("--instance-type", metavar="T", help="an AWS instance type from the catalog")
    size.add_argument("--gpu", metavar="SKU", help="an on-prem GPU (with --gpus-per-node)")
    size.add_argument("--gpus-per-node", metavar="N")
    size.add_argument("--nodes", metavar="N", help="nodes the model spans (pipeline parallel across them)")
    size.add_argument("--max-nodes", metavar="N",
                      help=f"planner: largest node count to consider (default {DEFAULT_MAX_NODES})")
    size.add_argument("--input-tokens", metavar="N", help="prompt tokens per request, for the speed prediction")
    size.add_argument("--output-tokens", metavar="M", help="output tokens per request, for the speed prediction")
    size.add_argument("--ttft-p99", metavar="S", help="planner SLA: time to first token, seconds")
    size.add_argument("--min-stream-tokens-per-s", metavar="R",
                      help="planner SLA: output tokens/s each stream must see (default 10, about reading speed)")
    size.add_argument("--json", action="store_true", help="machine-readable output")
    plan = commands.add_parser("plan", parents=[common], help="what `pulumi up --stack STACK` would create, offline")
    plan.add_argument("stack", metavar="STACK", nargs="?",
                      help="a shipped stack; with --stack-file, default: the name in Pulumi.<STACK>.yaml")
    plan.add_argument("--stack-file", metavar="PATH", help="a stack file outside stacks/")
    plan.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE",
                      help="override a field of gpuinfra:cluster (repeatable; dotted paths)")
    plan.add_argument("--policy-config", metavar="FILE",
                      help="gpu-guardrails config, JSON as for `pulumi up --policy-pack-config`")
    plan.add_argument("--json", action="store_true")
    plan.add_argument("--manifests", metavar="DIR",
                      help="Kubernetes targets: write one YAML file per Kubernetes object into DIR (replaced whole)")
    inventory = commands.add_parser("inventory", parents=[common],
                                    help="the stack's nodes and serving plan as an Ansible inventory")
    inventory.add_argument("stack", metavar="STACK", nargs="?",
                           help="a shipped stack; with --stack-file, default: the name in Pulumi.<STACK>.yaml")
    inventory.add_argument("--stack-file", metavar="PATH", help="a stack file outside stacks/")
    inventory.add_argument("--set", dest="sets", action="append", default=[], metavar="FIELD=VALUE")
    inventory.add_argument("--outputs", metavar="FILE", help="`pulumi stack output --json` of the deployed stack "
                                                             "(default: the offline plan's outputs)")
    inventory.add_argument("--hosts", action="append", default=[], metavar="NAME[=TYPE],...",
                           help="hosts for the static inventory")
    inventory.add_argument("--output", metavar="DIR", help="write an aws_ec2 inventory source and group_vars")
    catalog = commands.add_parser("catalog", parents=[common], help="list catalog models, GPUs or instance types")
    catalog.add_argument("kind", choices=["models", "gpus", "instances", "software"])
    catalog.add_argument("--json", action="store_true")
    add_env_parser(commands)
    return parser


REQUEST_FLAGS = {"model": "MODEL", "model_config": "--model-config", "precision": "--precision",
                 "kv_cache_dtype": "--kv-cache-dtype", "context": "--context", "concurrency": "--concurrency",
                 "gpu_memory_utilization": "--gpu-memory-utilization", "attention_parallel": "--attention-parallel"}


def _request_from_json(args: argparse.Namespace, problems: list[Problem]):
    """--request-json: the request whole; the engine flags (token budget, TP, weight-only FP8) still apply."""
    from gpuinfra.request import ServingRequest

    clash = [flag for name, flag in REQUEST_FLAGS.items() if getattr(args, name) is not None]
    if clash:
        problems.append(Problem("--request-json", f"carries the whole request; drop {', '.join(clash)}"))
        return None
    engine: dict[str, Any] = {"allow_fp8_weight_only": args.allow_fp8_weight_only}
    for key, flag, raw in (("max_num_batched_tokens", "--max-num-batched-tokens", args.max_num_batched_tokens),
                           ("tensor_parallel", "--tensor-parallel", args.tensor_parallel)):
        value = _number(raw, flag, problems)
        if value is not None:
            engine[key] = value
    try:
        return ServingRequest.from_json(args.request_json).sizing_request(**engine)
    except InputError as exc:
        problems.extend(Problem(f"--request-json: {p.path}" if not p.path.startswith("--") else p.path, p.reason)
                        for p in exc.problems)
        return None


def _request_from_args(args: argparse.Namespace, problems: list[Problem]):
    from gpuinfra.architecture import load_hf_config
    from gpuinfra.catalog import find_model
    from gpuinfra.sizing import ModelSpec, build_request

    if args.request_json is not None:
        return _request_from_json(args, problems)
    model = None
    if args.model_config:
        try:
            arch = load_hf_config(args.model_config)
            model = ModelSpec(name=args.model or args.model_config, architecture=arch)
        except InputError as exc:
            problems.extend(exc.problems)
    elif args.model:
        try:
            model = ModelSpec.from_catalog(find_model(args.model, path="MODEL"))
        except InputError as exc:
            problems.extend(exc.problems)
    else:
        problems.append(Problem("MODEL", "give a catalog model or --model-config PATH"))
    fields: dict[str, Any] = {"precision": args.precision, "allow_fp8_weight_only": args.allow_fp8_weight_only}
    fields |= {key: value for key, value in (("kv_cache_dtype", args.kv_cache_dtype),
                                             ("attention_parallel", args.attention_parallel)) if value is not None}
    for key, flag, raw, kind in (
        ("context_tokens", "--context", args.context, int),
        ("concurrency", "--concurrency", args.concurrency, int),
        ("gpu_memory_utilization", "--gpu-memory-utilization", args.gpu_memory_utilization, float),
        ("max_num_batched_tokens", "--max-num-batched-tokens", args.max_num_batched_tokens, int),
        ("tensor_parallel", "--tensor-parallel", args.tensor_parallel, int),
    ):
        value = _number(raw, flag, problems, kind)
        if value is not None:
            fields[key] = value
    if fields.get("gpu_memory_utilization", 0) > 1:
        problems.append(Problem("--gpu-memory-utilization", f"must be at most 1, got {args.gpu_memory_utilization}"))
        del fields["gpu_memory_utilization"]
    if model is None:
        return None
    try:
        return build_request(model=model, **fields)
    except InputError as exc:
        flag_of = {"context_tokens": "--context", "tensor_parallel": "--tensor-parallel",
                   "attention_parallel": "--attention-parallel"}
        problems.extend(Problem(flag_of.get(p.path, p.path), p.reason) for p in exc.problems)
        return None


def _evaluation_with_serving(request, evaluation) -> dict[str, Any]:
    """The evaluation plus the serving plan the inference_server role runs (on-prem hosts have no stack)."""
    from gpuinfra.catalog import find_model
    from gpuinfra.config import DEFAULT_SERVING_PORT
    from gpuinfra.contract import serving_plan

    try:
        hf_repo = find_model(request.model.name).hf_repo
    except InputError:  # a --model-config model: the operator stages its weights
        hf_repo = None
    return {**evaluation.model_dump(mode="json"),
            "serving": serving_plan(request, evaluation, port=DEFAULT_SERVING_PORT,
                                    hf_repo=hf_repo)}


def _size(args: argparse.Namespace, out) -> int:
    from gpuinfra.catalog import find_gpu, find_instance_type
    from gpuinfra.sizing import Hardware, evaluate, survey

    problems: list[Problem] = []
    request = _request_from_args(args, problems)
    nodes = _number(args.nodes, "--nodes", problems)
    max_nodes = _number(args.max_nodes, "--max-nodes", problems)
    gpus_per_node = _number(args.gpus_per_node, "--gpus-per-node", problems)
    hardware = None
    if args.instance_type and args.gpu:
        problems.append(Problem("--gpu", "give either --instance-type or --gpu, not both"))
    elif args.instance_type:
        try:
            instance = find_instance_type(args.instance_type, path="--instance-type")
            hardware = Hardware.from_instance(instance, nodes or 1)
        except InputError as exc:
            problems.extend(exc.problems)
        if args.gpus_per_node:
            problems.append(Problem("--gpus-per-node", "comes from the instance type; use it only with --gpu"))
    elif args.gpu:
        try:
            gpu = find_gpu(args.gpu, path="--gpu")
            if gpus_per_node is None and not args.gpus_per_node:
                problems.append(Problem("--gpus-per-node", "is required with --gpu"))
            elif gpus_per_node:
                hardware = Hardware(gpu=gpu, gpus_per_node=gpus_per_node, nodes=nodes or 1)
        except InputError as exc:
            problems.extend(exc.problems)
    elif args.nodes:
        problems.append(Problem("--nodes", "needs --instance-type or --gpu (the planner uses --max-nodes)"))
    if args.gpus_per_node and not args.gpu and not args.instance_type:
        problems.append(Problem("--gpus-per-node", "needs --gpu (an instance type brings its own)"))
    if (args.instance_type or args.gpu) and (args.ttft_p99 or args.min_stream_tokens_per_s):
        problems.append(Problem("--ttft-p99" if args.ttft_p99 else "--min-stream-tokens-per-s",
                                "is the planner's SLA; without a hardware choice the planner applies it"))
    if (args.instance_type or args.gpu) and args.max_nodes:
        problems.append(Problem("--max-nodes", "is for the planner; with a hardware choice use --nodes"))
    if (
        request is not None
        and hardware is not None
        and request.tensor_parallel
        and request.tensor_parallel > hardware.gpus_per_node
    ):
        problems.append(Problem("--tensor-parallel", f"{request.tensor_parallel} exceeds the "
                                                     f"{hardware.gpus_per_node} GPUs per node"))
    workload, sla = _load_and_sla(args, request, problems)
    if problems:
        raise InputError(problems)
    assert request is not None
    if hardware is not None:
        evaluation = evaluate(request, hardware)
        if workload is not None and evaluation.feasible:
            from gpuinfra.performance import predict

            evaluation = evaluation.model_copy(update={"performance": predict(request, evaluation, hardware.gpu,
                                                                               workload)})
        if args.json:
            out.write(json.dumps(_evaluation_with_serving(request, evaluation), indent=2) + "\n")
        else:
            from gpuinfra.render import console_for, render_evaluation

            render_evaluation(evaluation, console_for(out))
        return EXIT_OK if evaluation.feasible else EXIT_INFEASIBLE
    from gpuinfra.performance import default_workload, rank_by_sla

    options = survey(request, max_nodes=max_nodes or DEFAULT_MAX_NODES)
    result = rank_by_sla(options, request, workload or default_workload(request), sla,
                         closed_batch=workload is not None)
    if args.json:
        out.write(result.model_dump_json(indent=2) + "\n")
    else:
        from gpuinfra.render import console_for, render_survey

        render_survey(result, console_for(out))
    return EXIT_OK if result.options else EXIT_INFEASIBLE


def _load_and_sla(args: argparse.Namespace, request, problems: list[Problem]):
    """The workload to predict speed for (None unless asked for) and the planner's SLA, from the flags."""
    from gpuinfra.performance import SlaTarget, Workload, default_workload

    input_tokens = _number(args.input_tokens, "--input-tokens", problems)
    output_tokens = _number(args.output_tokens, "--output-tokens", problems)
    ttft = _number(args.ttft_p99, "--ttft-p99", problems, float)
    floor = _number(args.min_stream_tokens_per_s, "--min-stream-tokens-per-s", problems, float)
    sla = SlaTarget(ttft_p99_s=ttft, **({"min_stream_tokens_per_s": floor, "floor_is_default": False} if floor else {}))
    if request is None or not (input_tokens or output_tokens):
        return None, sla
    default = default_workload(request)
    workload = Workload(input_tokens=input_tokens or default.input_tokens,
                        output_tokens=output_tokens or default.output_tokens, concurrency=request.concurrency)
    if workload.input_tokens + workload.output_tokens > request.context_tokens:
        problems.append(Problem("--input-tokens", f"{workload.input_tokens} + {workload.output_tokens} output "
                                                  f"tokens exceed the {request.context_tokens}-token context"))
        return None, sla
    return workload, sla


def _catalog(args: argparse.Namespace, out) -> int:
    if args.kind == "software":
        # One pinned stack, not a list: the document the Ansible roles read as gpuinfra_software (every run
        # that lacks it asks for it, so it is read without loading the catalog's models).
        from gpuinfra.software_stack import software_document

        software = software_document()
        out.write(json.dumps(software, indent=2) + "\n" if args.json else yaml.safe_dump(software, sort_keys=False))
        return EXIT_OK
    from gpuinfra.catalog import load_catalog

    catalog = load_catalog()
    records = {"models": catalog.models, "gpus": catalog.gpus, "instances": catalog.instances}[args.kind]
    if args.json:
        out.write(json.dumps([r.model_dump(mode="json") for r in records], indent=2) + "\n")
        return EXIT_OK
    from rich.table import Table

    from gpuinfra.render import console_for

    table = Table()
    if args.kind == "models":
        for col in ("slug", "HF repo", "params (B)", "attention", "native"):
            table.add_column(col)
        for m in records:
            a = m.architecture
            table.add_row(m.slug, m.hf_repo, f"{a.total_params / 1e9:.2f}", a.attention, a.native_precision)
    elif args.kind == "gpus":
        for col in ("GPU", "GiB", "GB/s", "BF16 TF", "FP8", "CC"):
            table.add_column(col)
        for g in records:
            table.add_row(g.name, f"{g.memory_gib:g}", f"{g.memory_bandwidth_gbs:g}", f"{g.bf16_dense_tflops:g}",
                          "yes" if g.fp8_tensor_cores else "no", g.compute_capability)
    else:
        for col in ("instance", "GPUs", "vCPU", "RAM GiB", "NVMe GB", "EFA", "$/h"):
            table.add_column(col)
        for i in records:
            table.add_row(i.name, f"{i.gpus} x {i.gpu}", str(i.vcpus), f"{i.ram_gib:g}", f"{i.nvme.total_gb:g}",
                          str(i.efa.max_interfaces), _price(i.price.usd_per_hour))
    console_for(out).print(table)
    return EXIT_OK


def _stack_name(args: argparse.Namespace) -> str:
    """STACK as given, else the name in the --stack-file's name (Pulumi.<STACK>.yaml)."""
    from pathlib import Path

    from gpuinfra.config import stack_name_from_file, stack_name_problem

    if args.stack:
        return args.stack
    if not args.stack_file:
        raise InputError([Problem("STACK", "give a stack name, or --stack-file PATH")])
    name = stack_name_from_file(Path(args.stack_file))
    problem = stack_name_problem(name)
    if problem:
        raise InputError([Problem("STACK", f"cannot take it from {args.stack_file}: {problem}; give STACK")])
    return name


def _plan(args: argparse.Namespace, out) -> int:
    from gpuinfra.plan import build_plan, render_plan_report

    stack = _stack_name(args)
    policy_config = None
    if args.manifests:
        from pathlib import Path

        from gpuinfra.kubernetes.manifests import check_manifest_directory

        check_manifest_directory(Path(args.manifests))
    if args.policy_config:
        from gpu_guardrails.offline import load_policy_config

        policy_config = load_policy_config(args.policy_config, "--policy-config")
    cluster, report = build_plan(stack, args.stack_file, args.sets, policy_config)
    if args.manifests:
        _write_manifests(cluster, report, args.manifests)
    if args.json:
        out.write(report.model_dump_json(indent=2) + "\n")
    else:
        from gpuinfra.render import console_for

        render_plan_report(cluster, report, console_for(out))
    for violation in report.mandatory_violations:
        print(f"error: mandatory policy {violation.policy} ({violation.resource or 'stack'}): {violation.message}",
              file=sys.stderr)
    return EXIT_INFEASIBLE if report.mandatory_violations else EXIT_OK


def _write_manifests(cluster, report, directory: str) -> None:
    """The plan's Kubernetes objects, unless the stack has none or a mandatory policy refuses the plan."""
    from pathlib import Path

    from gpuinfra.kubernetes.manifests import kubernetes_objects, write_manifests

    if cluster.config.target.kind == "ec2":
        raise InputError([Problem("--manifests", f"stack {cluster.stack} targets ec2 (no Kubernetes objects); set "
                                                 "target.kind to eks or kubernetes")])
    if not report.mandatory_violations:
        write_manifests(kubernetes_objects(report.resources), Path(directory))


def _inventory(args: argparse.Namespace, out) -> int:
    from pathlib import Path

    from gpuinfra.inventory import check_output_directory, load_outputs, static_inventory, write_directory

    stack = _stack_name(args)
    if args.output:
        check_output_directory(Path(args.output))
    if args.outputs:
        if args.sets or args.stack_file:
            raise InputError([Problem("--outputs", "comes from a deployed stack; --set/--stack-file apply to the "
                                                   "offline plan only")])
        outputs = load_outputs(args.outputs)
    else:
        from gpuinfra.plan import build_plan

        _, report = build_plan(stack, args.stack_file, args.sets)
        outputs = load_outputs(report.outputs, label="plan outputs")
    if outputs.stack != stack:
        raise InputError([Problem("--outputs", f"belong to stack {outputs.stack}, not {stack}")])
    if args.output:
        if args.hosts:
            raise InputError([Problem("--hosts", "is for the static inventory; --output writes an aws_ec2 source "
                                                 "that finds the nodes by tag")])
        for path in write_directory(outputs, Path(args.output)):
            out.write(f"wrote {path}\n")
    else:
        out.write(static_inventory(outputs, args.hosts))
    return EXIT_OK


def _price(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


COMMANDS: dict[str, Callable[[argparse.Namespace, Any], int]] = {
    "size": _size, "plan": _plan, "inventory": _inventory, "catalog": _catalog, "env": run_env}


def main(argv: Sequence[str] | None = None, out=None) -> int:
    out = out or sys.stdout
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = _build_parser().parse_args(argv)
        return COMMANDS[args.command](args, out)
    except InfeasibleError as exc:
        _report(exc)
        return EXIT_INFEASIBLE
    except InputError as exc:
        _report(exc)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place an unexpected failure becomes exit 3, not a traceback
        if "--debug" in argv:
            traceback.print_exc()
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(f"internal error: {type(exc).__name__}{': ' + detail if detail else ''} (run again with --debug for "
              "the traceback, and report it)", file=sys.stderr)
        return EXIT_INTERNAL


def _report(exc: InputError) -> None:
    for problem in exc.problems:
        print(f"error: {problem}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
