"""The performance model's contract: `size --input-tokens N --output-tokens M --json` carries
`performance`, the planner ranks only the options that meet the SLA, and the model's shape holds
(more concurrency: more throughput, slower streams, later first tokens)."""

from __future__ import annotations

import io
import json

import pytest
from gpuinfra.catalog import find_gpu, find_model
from gpuinfra.cli import main
from gpuinfra.performance import Workload, predict
from gpuinfra.sizing import Hardware, ModelSpec, build_request, evaluate


def run(*argv: str, capsys) -> tuple[int, dict, str]:
    out = io.StringIO()
    code = main(list(argv), out=out)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}, capsys.readouterr().err


def test_size_json_carries_performance_for_the_given_load(capsys):
    code, answer, err = run("size", "deepseek-r1-distill-llama-8b", "--gpu", "h200", "--gpus-per-node", "1",
                            "--context", "4096", "--concurrency", "32", "--input-tokens", "1024",
                            "--output-tokens", "256", "--json", capsys=capsys)
    assert code == 0, err
    performance = answer["performance"]
    assert {"ttft_s", "inter_token_latency_s", "output_tokens_per_s"} <= set(performance)
    # output_tokens_per_s is C x M over the closed batch's wall time, prefill included.
    wall = performance["ttft_s"] + 256 * performance["inter_token_latency_s"]
    assert performance["output_tokens_per_s"] == pytest.approx(32 * 256 / wall, rel=0.01)
    assert performance["concurrency"] == 32 and performance["basis"]


def test_no_performance_without_a_load(capsys):
    code, answer, _ = run("size", "deepseek-r1-distill-llama-8b", "--gpu", "h200", "--gpus-per-node", "1", "--json",
                          capsys=capsys)
    assert code == 0 and answer["performance"] is None


def test_more_concurrency_means_more_throughput_slower_streams_later_first_tokens():
    request = build_request(model=ModelSpec.from_catalog(find_model("deepseek-r1-distill-qwen-32b")),
                            context_tokens=4096, concurrency=128)
    gpu = find_gpu("h200")
    evaluation = evaluate(request, Hardware(gpu=gpu, gpus_per_node=1))
    runs = [predict(request, evaluation, gpu, Workload(input_tokens=1024, output_tokens=256, concurrency=c))
            for c in (1, 32, 128)]
    assert runs[0].output_tokens_per_s < runs[1].output_tokens_per_s < runs[2].output_tokens_per_s
    assert runs[0].stream_tokens_per_s > runs[1].stream_tokens_per_s > runs[2].stream_tokens_per_s
    assert runs[0].ttft_s < runs[1].ttft_s < runs[2].ttft_s


def test_planner_lists_options_that_miss_the_sla_with_the_reason(capsys):
    code, result, err = run("size", "deepseek-r1-distill-qwen-32b", "--context", "32768", "--concurrency", "8",
                            "--ttft-p99", "2", "--json", capsys=capsys)
    assert code == 0, err
    assert result["request"]["sla"]["ttft_p99_s"] == 2 and result["request"]["workload"]["concurrency"] == 8
    assert all(o["performance"]["ttft_s"] <= 2 for o in result["options"])
    missed = [r for r in result["rejected"] if any("exceeds the 2 s SLA" in reason for reason in r["reasons"])]
    assert missed, "no option was turned away by the TTFT SLA"
    costs = [o["cost_per_hour_usd"] for o in result["options"] if o["cost_per_hour_usd"] is not None]
    assert costs == sorted(costs)
    assert all(o["cost_per_million_output_tokens_at_load_usd"] for o in result["options"] if o["cost_per_hour_usd"])


def test_planner_states_the_default_stream_floor(capsys):
    code, result, _ = run("size", "deepseek-r1-distill-qwen-7b", "--json", capsys=capsys)
    assert code == 0
    assert result["request"]["sla"] == {"ttft_p99_s": None, "min_stream_tokens_per_s": 10.0,
                                        "floor_is_default": True}


@pytest.mark.parametrize(("argv", "fragment"), [
    (["--input-tokens", "0"], "--input-tokens: must be greater than 0"),
    (["--output-tokens", "x"], "--output-tokens: must be a whole number"),
    (["--ttft-p99", "nan"], "--ttft-p99: must be a finite number"),
    (["--min-stream-tokens-per-s", "-1"], "--min-stream-tokens-per-s: must be greater than 0"),
    (["--context", "4096", "--input-tokens", "4000", "--output-tokens", "200"], "exceed the 4096-token context"),
])
def test_bad_load_and_sla_flags_are_refused(capsys, argv, fragment):
    code, _, err = run("size", "deepseek-r1-distill-llama-8b", *argv, capsys=capsys)
    assert code == 2 and fragment in err and "Traceback" not in err
