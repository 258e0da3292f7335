"""The serving request survives every boundary unchanged: stack config -> engine -> the program's tags on
GPU launchers and annotations on Kubernetes pods -> the policy pack's reading of them -> the stack outputs
-> the Ansible inventory -> `gpuinfra size --request-json` (what the preflight role runs)."""

from __future__ import annotations

import io
import json

import pytest
from gpu_guardrails.common import request_from_tags, tags_of
from gpuinfra.cli import main
from gpuinfra.config import STACKS_DIR, parse_cluster, resolve
from gpuinfra.inventory import group_vars, load_outputs
from gpuinfra.plan import build_plan, resolve_stack
from gpuinfra.request import ANNOTATION_PREFIX, TAG_PREFIX, ServingRequest

SHIPPED = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in STACKS_DIR.glob("Pulumi.*.yaml"))


def served(stack: str) -> ServingRequest:
    """What the stack asks for, precision resolved as the engine serves it."""
    return ServingRequest.of(resolve_stack(stack).request)


@pytest.mark.parametrize("stack", SHIPPED)
def test_a_shipped_stacks_request_survives_the_program_the_policies_and_the_inventory(stack):
    expected = served(stack)
    assert expected.model_dump(exclude={"precision"}) == resolve_stack(stack).config.serving_request().model_dump(
        exclude={"precision"})
    _, report = build_plan(stack)
    carriers = [r for r in report.resources if TAG_PREFIX + "model" in tags_of(r.inputs)]
    annotated = [r for r in report.resources if r.type.startswith("kubernetes:")
                 and ANNOTATION_PREFIX + "model" in json.dumps(r.inputs)]
    assert carriers or annotated, "nothing carries the request"
    for resource in carriers:
        assert ServingRequest.from_labels(tags_of(resource.inputs)) == expected, resource.name
        sizing, unreadable = request_from_tags(tags_of(resource.inputs))
        assert unreadable is None and ServingRequest.of(sizing) == expected
    templates = [t for resource in annotated for t in _pod_templates(resource.inputs)]
    if resolve_stack(stack).config.target.kind != "ec2":
        assert templates, "a Kubernetes stack's pods carry no request"
    for template in templates:
        annotations = (template.get("metadata") or {}).get("annotations") or {}
        assert ServingRequest.from_labels(annotations, ANNOTATION_PREFIX) == expected
    outputs = load_outputs(report.outputs, label="plan outputs")
    assert outputs.request == expected
    assert ServingRequest.from_dict(group_vars(outputs)["gpuinfra_request"]) == expected


def _pod_templates(value):
    if isinstance(value, dict):
        if "spec" in value and isinstance(value.get("spec"), dict) and "containers" in value["spec"]:
            yield value
        for item in value.values():
            yield from _pod_templates(item)
    elif isinstance(value, list):
        for item in value:
            yield from _pod_templates(item)


def test_a_dp_attention_request_reaches_the_engine_through_request_json():
    """The drift the one definition fixes: the preflight once re-spelled the request as flags and lost
    attention_parallel, so a DP-attention stack was re-sized (and served) with TP attention."""
    cluster = resolve("t", parse_cluster({"model": "deepseek-r1", "attention_parallel": "dp",
                                          "instance_types": ["p5en.48xlarge"], "weights": {"source": "hf://x/y"}}))
    request = ServingRequest.of(cluster.request)
    out = io.StringIO()
    code = main(["size", *request.to_argv(), "--gpu", "h200", "--gpus-per-node", "8", "--json"], out=out)
    answer = json.loads(out.getvalue())
    assert code == 0 and answer["attention_parallel"] == "dp" and answer["data_parallel"] == 8
    assert {k: answer[k] for k in ("model", "precision", "kv_cache_dtype", "context_tokens", "concurrency",
                                   "gpu_memory_utilization")} == request.model_dump(
        mode="json", exclude={"attention_parallel"})
    assert answer["per_gpu"] == cluster.primary.per_gpu.model_dump()


@pytest.mark.parametrize("request_fields", [
    {"model": "deepseek-r1-distill-qwen-7b"},
    {"model": "deepseek-r1", "precision": "fp8", "kv_cache_dtype": "fp8", "context_tokens": 65536, "concurrency": 3,
     "attention_parallel": "dp", "gpu_memory_utilization": 0.85},
])
def test_every_conversion_round_trips(request_fields):
    request = ServingRequest(**request_fields)
    assert ServingRequest.from_labels(request.to_labels()) == request
    assert ServingRequest.from_labels(request.to_labels(ANNOTATION_PREFIX), ANNOTATION_PREFIX) == request
    assert ServingRequest.from_dict(json.loads(json.dumps(request.to_dict()))) == request
    assert ServingRequest.from_json(request.to_argv()[1]) == request
    assert ServingRequest.of(request.sizing_request()).model_dump(exclude={"precision"}) == request.model_dump(
        exclude={"precision"})


def test_request_json_with_request_flags_or_bad_fields_is_refused(capsys):
    assert main(["size", "deepseek-r1", "--request-json", '{"model": "deepseek-r1"}', "--gpu", "h200",
                 "--gpus-per-node", "8"], out=io.StringIO()) == 2
    assert "--request-json: carries the whole request; drop MODEL" in capsys.readouterr().err
    assert main(["size", "--request-json", '{"model": "deepseek-r1", "concurrency": "many", "tp": 8}', "--gpu",
                 "h200", "--gpus-per-node", "8"], out=io.StringIO()) == 2
    err = capsys.readouterr().err
    assert "--request-json.concurrency: Input should be a valid integer" in err and "--request-json.tp" in err
