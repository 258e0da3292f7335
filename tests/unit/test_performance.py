"""The performance model's contract: `size --input-tokens N --output-tokens M --json` carries
`performance`, the planner ranks only the options that meet the SLA, and the model's shape holds
(more concurrency: more throughput, slower streams, later first tokens)."""

from __future__ import annotations

import io
import json

import pytest
from gpuinfra.catalog import find_gpu, find_model
from gpuinfra.cli import main
from gpuinfra.performance import StepCost, Workload, efficiencies, predict, simulate_closed_batch
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
    # The closed batch's wall time holds every prefill and at least the last stream's decode.
    wall = 32 * 256 / performance["output_tokens_per_s"]
    assert wall > performance["ttft_s"] + 255 * performance["inter_token_latency_s"] * 0.5
    assert performance["concurrency"] == 32 and performance["basis"]


def _sized():
    request = build_request(model=ModelSpec.from_catalog(find_model("deepseek-r1-distill-llama-8b")),
                            context_tokens=8192, concurrency=4)
    gpu = find_gpu("h200")
    return request, evaluate(request, Hardware(gpu=gpu, gpus_per_node=1)), gpu


def _cost_and_perf():
    request, evaluation, gpu = _sized()
    return StepCost.of(request, evaluation, gpu), efficiencies(gpu)


def test_one_request_is_one_prefill_step_then_a_decode_step_per_token():
    cost, perf = _cost_and_perf()
    run = simulate_closed_batch(cost, perf, requests=1, input_tokens=1000, output_tokens=5, max_batched_tokens=8192,
                                max_seqs=256)
    prefill = cost.seconds(perf, decode_seqs=0, decode_context=0, prefill=[(1000, 0)])
    decode = sum(cost.seconds(perf, decode_seqs=1, decode_context=1000 + k, prefill=[]) for k in range(4))
    # 1,000 tokens is above the CUDA graphs: the first token is handed out once the next step is launched.
    assert run.first_token_s == [pytest.approx(cost.first_token_visible_s(perf, step_start=0, step_end=prefill,
                                                                          tokens=1000))]
    assert prefill <= run.first_token_s[0] < prefill + decode / 4
    assert run.finished_s == [pytest.approx(prefill + decode)]


def test_steps_above_the_cuda_graphs_cost_at_least_their_launch():
    cost, perf = _cost_and_perf()
    assert 1 < cost.capture_tokens <= 512  # vLLM 0.26 captures at most 512 tokens by default (software.yaml)
    graphed = cost.seconds(perf, decode_seqs=0, decode_context=0, prefill=[(cost.capture_tokens // 2, 0)])
    ungraphed = cost.seconds(perf, decode_seqs=0, decode_context=0, prefill=[(cost.capture_tokens + 1, 0)])
    decode = cost.seconds(perf, decode_seqs=1, decode_context=64, prefill=[])
    assert decode < graphed < ungraphed
    assert graphed >= cost.layers * perf.graphed_layer_launch_us / 1e6
    assert ungraphed >= cost.layers * perf.eager_layer_launch_us / 1e6
    larger = StepCost.of(*_sized(), capture_tokens=2048)
    assert larger.seconds(perf, decode_seqs=0, decode_context=0, prefill=[(cost.capture_tokens + 1, 0)]) < ungraphed


def test_long_prompts_are_chunked_by_the_token_budget_and_seats_are_limited():
    cost, perf = _cost_and_perf()
    chunked = simulate_closed_batch(cost, perf, requests=1, input_tokens=5000, output_tokens=1,
                                    max_batched_tokens=2048, max_seqs=256)
    steps = [(2048, 0), (2048, 2048), (904, 4096)]
    assert chunked.first_token_s[0] == pytest.approx(sum(cost.seconds(perf, decode_seqs=0, decode_context=0,
                                                                      prefill=[s]) for s in steps))
    free = simulate_closed_batch(cost, perf, requests=8, input_tokens=512, output_tokens=64, max_batched_tokens=8192,
                                 max_seqs=8)
    seated = simulate_closed_batch(cost, perf, requests=8, input_tokens=512, output_tokens=64,
                                   max_batched_tokens=8192, max_seqs=2)
    assert max(seated.first_token_s) > 3 * max(free.first_token_s)  # six requests wait for a seat
    assert seated.wall_s > free.wall_s


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
                            "--ttft-p99", "0.5", "--json", capsys=capsys)
    assert code == 0, err
    assert result["request"]["sla"]["ttft_p99_s"] == 0.5 and result["request"]["workload"]["concurrency"] == 8
    assert all(o["steady_state"]["ttft_s"] <= 0.5 for o in result["options"])
    missed = [r for r in result["rejected"] if any("exceeds the 0.5 s SLA" in reason for reason in r["reasons"])]
    assert missed, "no option was turned away by the TTFT SLA"
    costs = [o["cost_per_hour_usd"] for o in result["options"] if o["cost_per_hour_usd"] is not None]
    assert costs == sorted(costs)
    assert all(o["cost_per_million_output_tokens_at_load_usd"] for o in result["options"] if o["cost_per_hour_usd"])


def test_the_32b_case_comes_out_on_one_fast_node():
    """R1-Distill-Qwen-32B at 8 x 32k: two L4 nodes (PP over the network) are cheaper per hour but stream
    below reading speed; the planner must pick a single node of a faster GPU."""
    out = io.StringIO()
    assert main(["size", "deepseek-r1-distill-qwen-32b", "--context", "32768", "--concurrency", "8", "--json"],
                out=out) == 0
    result = json.loads(out.getvalue())
    best = result["options"][0]
    assert best["nodes"] == 1 and best["gpu"] != "L4"
    two_l4 = [r for r in result["rejected"] if r["instance_type"] == "g6.12xlarge" and r["nodes"] == 2]
    assert two_l4 and "below the 10 tokens/s floor" in two_l4[0]["reasons"][0]


def test_a_stack_sla_picks_or_refuses_instance_types(capsys):
    from gpuinfra.config import parse_cluster, resolve
    from gpuinfra.errors import InfeasibleError

    base = {"model": "deepseek-r1-distill-qwen-32b", "weights": {"source": "hf://x/y"}, "concurrency": 8}
    chosen = resolve("t", parse_cluster(base))
    assert chosen.primary.nodes == 1 and chosen.primary.gpu != "L4"
    with pytest.raises(InfeasibleError) as caught:
        resolve("t", parse_cluster({**base, "instance_types": ["g6e.12xlarge"],
                                    "sla": {"min_stream_tokens_per_s": 500}}))
    assert "below the 500 tokens/s floor" in str(caught.value)
    code, _, err = run("plan", "dev-7b", "--set", "sla.ttft_p99_s=0.001", capsys=capsys)
    assert code == 1 and "exceeds the 0.001 s SLA" in err


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
