"""Sizing engine against worked examples computed by hand from sizing-facts.md, and measured vLLM runs."""

from __future__ import annotations

import pytest
from gpuinfra.catalog import find_gpu, find_instance_type, find_model, load_catalog
from gpuinfra.errors import InputError
from gpuinfra.sizing import (
    GIB,
    Hardware,
    ModelSpec,
    Precision,
    build_request,
    model_weight_bytes,
    pipeline_stages,
    survey,
)

from tests.conftest import size

# --- DeepSeek-R1 671B (FP8 native) -----------------------------------------------------------------------

def test_r1_fp8_does_not_fit_one_8xh100_node():
    e = size("deepseek-r1", "p5.48xlarge")
    assert not e.feasible
    assert e.reason_codes == ["gpu-memory"]
    # 671B in FP8 + BF16 embeddings/norms, /8, plus the replicated MLA latent projections
    assert e.per_gpu.weights_gib == pytest.approx(79.3, abs=0.3)
    # overhead: vLLM 0.26's measured MoE activation peak (6.70 GiB at 8192 tokens) + TP>1 non-torch 0.6 GiB
    assert e.reasons[0].startswith("weights need 79.3 GiB per GPU plus 7.3 GiB overhead, but only 72.0 GiB")


def test_r1_fp8_fits_one_8xh200_node():
    e = size("deepseek-r1", "p5en.48xlarge")
    assert e.feasible and (e.tensor_parallel, e.pipeline_parallel, e.expert_parallel) == (8, 1, 8)
    # CUDA's 139.8 GiB x 0.9 = 125.82 usable - 79.3 weights - 7.3 overhead = 39.2 GiB of KV per GPU
    assert e.per_gpu.total_gib == 139.8 and e.per_gpu.usable_gib == pytest.approx(125.82)
    assert e.per_gpu.kv_cache_gib == pytest.approx(39.2, abs=0.2)
    # every TP rank holds the whole latent: 61 x 576 x 2 bytes per token per GPU
    assert e.kv_cache_bytes_per_token == 70272
    assert e.max_tokens_in_flight == pytest.approx(39.2 * GIB / 70272, rel=0.01)


def test_r1_fp8_fits_two_8xh100_nodes_with_pipeline_parallel():
    e = size("deepseek-r1", "p5.48xlarge", nodes=2)
    assert e.feasible and (e.tensor_parallel, e.pipeline_parallel) == (8, 2)
    node_price = find_instance_type("p5.48xlarge").price.usd_per_hour  # from the catalog: 2 nodes
    assert e.needs_rdma and e.cost_per_hour_usd == pytest.approx(2 * node_price)
    # vLLM splits 61 layers 31/30; the first stage's 3 dense layers are lighter than MoE ones, so the
    # second stage (30 MoE layers) has the least KV room and binds: 30 layers of latent per token
    assert e.kv_cache_bytes_per_token == 30 * 576 * 2


def test_r1_fits_8xb200():
    assert size("deepseek-r1", "p6-b200.48xlarge").feasible


def test_r1_on_a100_needs_weight_only_fp8_or_another_precision():
    e = size("deepseek-r1", "p4de.24xlarge", nodes=2)
    assert not e.feasible and "fp8-hardware" in e.reason_codes
    assert size("deepseek-r1", "p4de.24xlarge", nodes=2, allow_fp8_weight_only=True).feasible


def test_r1_bf16_upcast_is_over_1_3_tb():
    arch = find_model("deepseek-r1").architecture
    assert model_weight_bytes(arch, Precision.BF16) / 1e12 == pytest.approx(1.342, rel=0.01)
    # native FP8 computed from the config vs the checkpoint on disk less its MTP layer (688.6 x 671/684.5)
    assert model_weight_bytes(arch, Precision.FP8) / 1e9 == pytest.approx(688.6 * 671 / 684.5, rel=0.01)


def test_dp_attention_partitions_the_latent_cache_and_holds_several_times_the_sequences():
    tp = size("deepseek-r1", "p5en.48xlarge")
    dp = size("deepseek-r1", "p5en.48xlarge", attention_parallel="dp")
    assert dp.feasible and (dp.tensor_parallel, dp.data_parallel, dp.expert_parallel) == (1, 8, 8)
    # attention weights are replicated on every DP rank, so each GPU holds more weights ...
    assert dp.per_gpu.weights_gib > tp.per_gpu.weights_gib + 10
    # ... but sequences are not replicated, so the node holds far more of them
    assert dp.max_tokens_in_flight > 4 * tp.max_tokens_in_flight


def test_dp_attention_needs_the_expert_count_divisible_by_the_ranks():
    e = size("deepseek-r1", "p5.48xlarge", nodes=3, attention_parallel="dp")
    assert not e.feasible and e.reason_codes[0] == "layout"
    assert "expert parallel size 24" in e.reasons[0]


def test_fp8_kv_cache_halves_bytes_per_token_and_doubles_capacity():
    auto = size("deepseek-r1", "p5en.48xlarge")
    fp8 = size("deepseek-r1", "p5en.48xlarge", kv_cache_dtype="fp8")
    assert fp8.kv_cache_bytes_per_token * 2 == auto.kv_cache_bytes_per_token
    assert fp8.max_tokens_in_flight == pytest.approx(2 * auto.max_tokens_in_flight, rel=0.001)


# --- distills ------------------------------------------------------------------------------------------------

def test_70b_bf16_fits_8xa100_40gb():
    e = size("deepseek-r1-distill-llama-70b", "p4d.24xlarge", concurrency=8)
    assert e.feasible and e.tensor_parallel == 8
    assert e.per_gpu.weights_gib == pytest.approx(16.4, abs=0.1)  # sizing-facts section 2.6


def test_70b_bf16_does_not_fit_one_a100_40gb():
    e = size("deepseek-r1-distill-llama-70b", gpu="a100-40gb", gpus_per_node=1)
    assert not e.feasible and e.reason_codes == ["gpu-memory"]
    assert e.weights_gib == pytest.approx(131.4, abs=0.5)  # 141 GB = 131 GiB


def test_70b_int4_awq_is_about_40_gb():
    arch = find_model("deepseek-r1-distill-llama-70b").architecture
    assert model_weight_bytes(arch, Precision.INT4_AWQ) / 1e9 == pytest.approx(39.8, rel=0.02)


@pytest.mark.parametrize("instance", [i.name for i in load_catalog().instances if i.gpus >= 8])
def test_the_7b_distill_never_gets_tp_8(instance):
    for concurrency in (1, 64, 512):
        e = size("deepseek-r1-distill-qwen-7b", instance, concurrency=concurrency)
        assert e.tensor_parallel in (1, 2, 4)


def test_forcing_an_invalid_tp_is_an_input_error():
    with pytest.raises(InputError, match=r"must be divisible by tensor parallel size \(8\)"):
        build_request(model=ModelSpec.from_catalog(find_model("deepseek-r1-distill-qwen-7b")), tensor_parallel=8)


def test_smallest_fitting_tp_is_chosen_and_the_rest_become_replicas():
    e = size("deepseek-r1-distill-qwen-7b", "g5.48xlarge", concurrency=64)
    assert (e.tensor_parallel, e.replicas) == (4, 2) and e.max_concurrency_at_context >= 64
    e = size("deepseek-r1-distill-qwen-7b", "g5.48xlarge", concurrency=1)
    assert (e.tensor_parallel, e.replicas) == (1, 8)


# --- calibration against measured vLLM memory on H100 (llm-d, S10) ----------------------------------------

def test_llama_8b_on_h100_against_llm_ds_older_vllm_measurement():
    """llm-d measured (S10, an older vLLM on H100): weights 14.99 GiB, KV 51.38 GiB at util 0.9, with an
    activation peak of 4.76-5.64 GiB. The weights are version-independent and still match; the KV differs
    by exactly the activation the pinned vLLM 0.26 no longer reserves (measured: 0.88 GiB for this shape),
    so the engine answers for the pinned version, not for llm-d's."""
    e = size("deepseek-r1-distill-llama-8b", "p5.4xlarge", context_tokens=16000)
    assert e.per_gpu.weights_gib == pytest.approx(14.99, rel=0.01)
    llm_d_overhead = 72.0 - 14.99 - 51.38  # what that vLLM kept back beyond the weights: 5.63 GiB
    assert e.per_gpu.kv_cache_gib - 51.38 == pytest.approx(llm_d_overhead - e.per_gpu.overhead_gib, abs=0.1)


def test_llama_70b_fp8_tp2_matches_vllms_measured_weights():
    # measured: 33.88 GiB per GPU at TP=2, 67.72 GiB at TP=1 (model loaded, then no room for KV)
    e = size("deepseek-r1-distill-llama-70b", "p5.48xlarge", precision="fp8", tensor_parallel=2)
    assert e.per_gpu.weights_gib == pytest.approx(33.88, rel=0.01)
    one = size("deepseek-r1-distill-llama-70b", "p5.4xlarge", precision="fp8", context_tokens=16000)
    assert one.per_gpu.weights_gib == pytest.approx(67.72, rel=0.01) and not one.feasible


def test_small_gpus_get_vllms_smaller_token_budget_and_so_less_activation_memory():
    big = size("deepseek-r1-distill-qwen-7b", "p5.4xlarge")
    small = size("deepseek-r1-distill-qwen-7b", "g6.2xlarge")
    a100 = size("deepseek-r1-distill-llama-70b", "p4de.24xlarge")
    assert (big.max_num_batched_tokens, small.max_num_batched_tokens, a100.max_num_batched_tokens) == (
        8192, 2048, 2048)
    assert small.per_gpu.overhead_gib < big.per_gpu.overhead_gib


# --- layout, host and money ---------------------------------------------------------------------------------

def test_pipeline_stages_follow_vllm():
    assert [len(s) for s in pipeline_stages(61, 2)] == [31, 30]
    assert [len(s) for s in pipeline_stages(80, 3)] == [27, 27, 26]
    assert [len(s) for s in pipeline_stages(28, 4)] == [7, 7, 7, 7]


def test_host_requirements_are_checked_on_instance_types():
    e = size("deepseek-r1-distill-qwen-7b", "g6.xlarge")
    assert not e.feasible and e.reason_codes == ["host-ram"]
    assert e.host_ram_gib_required > 16 and e.nvme_gib_required == pytest.approx(15.2e9 * 1.2 / GIB, rel=0.01)
    assert size("deepseek-r1-distill-qwen-7b", "g6.2xlarge").feasible


def test_multi_node_without_efa_is_rejected():
    e = size("deepseek-r1-distill-llama-70b", "g6e.xlarge", nodes=2)
    assert "rdma" in e.reason_codes


def test_decode_bound_follows_memory_bandwidth():
    # 8B BF16 on one H100: 16.1 GB / 3.35 TB/s -> <= 209 tok/s before any KV is read
    e = size("deepseek-r1-distill-llama-8b", "p5.4xlarge", context_tokens=2048)
    assert 190 < e.decode_tokens_per_s_bound <= 209
    # 70B BF16 on 4 x H100: <= 95 tok/s
    e = size("deepseek-r1-distill-llama-70b", gpu="h100", gpus_per_node=4, context_tokens=2048, tensor_parallel=4)
    assert 85 < e.decode_tokens_per_s_bound <= 95


def test_on_prem_edge_and_workstation_parts():
    orin = size("deepseek-r1-distill-llama-8b", gpu="jetson-agx-orin", gpus_per_node=1, precision="int4-awq",
                context_tokens=8192)
    assert orin.feasible and orin.cost_per_hour_usd is None and orin.instance_type is None
    assert orin.per_gpu.usable_gib == pytest.approx((61.4 - 8) * 0.9, abs=0.01)
    rtx = size("deepseek-r1-distill-qwen-14b", gpu="rtx-4090", gpus_per_node=2, context_tokens=8192)
    assert rtx.feasible and rtx.tensor_parallel == 2
    assert any("no NVLink" in n for n in rtx.notes)


# --- planner ----------------------------------------------------------------------------------------------------

def _r1_request(**fields):
    return build_request(model=ModelSpec.from_catalog(find_model("deepseek-r1")), **fields)


def test_planner_returns_the_feasible_types_cheapest_first_and_why_not_for_the_rest():
    result = survey(_r1_request(concurrency=4))
    chosen = [(e.instance_type, e.nodes) for e in result.options]
    assert ("p5en.48xlarge", 1) in chosen and ("p5.48xlarge", 2) in chosen and ("p6-b200.48xlarge", 1) in chosen
    prices = [e.cost_per_hour_usd for e in result.options if e.cost_per_hour_usd is not None]
    assert prices == sorted(prices)
    assert result.options[-1].cost_per_hour_usd is None  # unpriced (p5e) last
    rejected = {(r.instance_type, r.nodes): r.reasons for r in result.rejected}
    assert rejected[("p5.48xlarge", 1)][0].startswith("weights need")
    # single-node-only types are never tried at 2 nodes; unfixable blockers stop the node loop
    assert ("g6e.xlarge", 2) not in rejected and ("p4d.24xlarge", 2) not in rejected
    assert all(e.feasible for e in result.options)


def test_planner_picks_the_cheapest_small_gpu_for_the_smallest_distill():
    result = survey(build_request(model=ModelSpec.from_catalog(find_model("deepseek-r1-distill-qwen-1.5b"))))
    assert result.options[0].instance_type == "g6.xlarge"


def test_planner_respects_max_nodes():
    result = survey(_r1_request(precision="bf16"), max_nodes=1)
    assert all(e.nodes == 1 for e in result.options)
    assert not any(e.instance_type == "p5.48xlarge" for e in result.options)


def test_on_prem_hardware_via_gpu_sku():
    e = size("deepseek-r1", gpu="h200", gpus_per_node=8)
    assert e.feasible and e.gpu == "H200-SXM-141GB"
    assert find_gpu("H200").name == Hardware(find_gpu("h200"), 8).gpu.name
    assert find_instance_type("p5en.48xlarge").gpu == e.gpu
