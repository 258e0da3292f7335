"""Model architecture parsing: parameter counts and KV layout computed from config.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gpuinfra.architecture import load_hf_config, parse_hf_config
from gpuinfra.catalog import find_model, load_catalog
from gpuinfra.errors import InputError

FIXTURES = Path(__file__).parent / "fixtures"

# KV bytes per token at TP=1 in BF16 (sizing-facts.md section 2.2 / catalog-facts kv_bytes_per_token_bf16).
KV_BYTES_BF16 = {
    "deepseek-r1": 70272,
    "deepseek-r1-distill-qwen-1.5b": 28672,
    "deepseek-r1-distill-qwen-7b": 57344,
    "deepseek-r1-distill-llama-8b": 131072,
    "deepseek-r1-distill-qwen-14b": 196608,
    "deepseek-r1-distill-qwen-32b": 262144,
    "deepseek-r1-distill-llama-70b": 327680,
}


@pytest.mark.parametrize("model", load_catalog().models, ids=lambda m: m.slug)
def test_parameter_count_from_config_matches_the_published_count(model):
    arch = model.architecture
    assert arch.total_params / 1e9 == pytest.approx(model.published_params_b, rel=0.001)


def test_r1_active_parameters_are_about_37b_not_45b():
    arch = find_model("deepseek-r1").architecture
    assert arch.active_params / 1e9 == pytest.approx(37.0, rel=0.02)
    assert arch.n_routed_experts == 256 and arch.experts_per_token == 8 and arch.layers == 61


@pytest.mark.parametrize(("slug", "expected"), KV_BYTES_BF16.items())
def test_kv_bytes_per_token_match_the_reference(slug, expected):
    arch = find_model(slug).architecture
    assert arch.layers * arch.kv_bytes_per_token_per_layer(1, 2.0) == expected


def test_gqa_kv_heads_are_replicated_not_split_beyond_their_count():
    arch = find_model("deepseek-r1-distill-llama-70b").architecture  # 8 KV heads
    per_layer = [arch.kv_bytes_per_token_per_layer(tp, 2.0) for tp in (1, 2, 4, 8)]
    assert per_layer == [2 * 8 * 128 * 2, 2 * 4 * 128 * 2, 2 * 2 * 128 * 2, 2 * 1 * 128 * 2]
    small = find_model("deepseek-r1-distill-qwen-1.5b").architecture  # 2 KV heads
    assert small.kv_bytes_per_token_per_layer(4, 2.0) == small.kv_bytes_per_token_per_layer(2, 2.0)


def test_mla_latent_cache_is_not_divided_by_tensor_parallel():
    arch = find_model("deepseek-r1").architecture
    assert arch.kv_bytes_per_token_per_layer(1, 2.0) == arch.kv_bytes_per_token_per_layer(8, 2.0) == 576 * 2


def test_tensor_parallel_must_divide_heads_with_vllms_message():
    arch = find_model("deepseek-r1-distill-qwen-7b").architecture
    assert arch.tensor_parallel_problem(8) == (
        "Total number of attention heads (28) must be divisible by tensor parallel size (8)"
    )
    assert arch.valid_tensor_parallel_sizes(8) == [1, 2, 4]


def test_kv_heads_must_split_or_replicate_evenly_which_the_heads_rule_alone_misses():
    # 12 heads / 2 KV heads: TP 3 divides the heads but vLLM's QKVParallelLinear rejects it.
    assert find_model("deepseek-r1-distill-qwen-1.5b").architecture.valid_tensor_parallel_sizes(12) == [1, 2, 4, 6, 12]
    # 40 heads / 8 KV heads: TP 5 likewise.
    assert 5 not in find_model("deepseek-r1-distill-qwen-14b").architecture.valid_tensor_parallel_sizes(8)
    assert find_model("deepseek-r1").architecture.valid_tensor_parallel_sizes(16) == [1, 2, 4, 8, 16]


def test_a_real_llama_config_json_parses_to_8b_parameters():
    arch = load_hf_config(FIXTURES / "llama-3-8b-config.json")
    assert arch.family == "dense-gqa" and arch.native_precision == "bf16"
    assert arch.total_params == pytest.approx(8.03e9, rel=0.001)


def test_a_catalog_mla_config_round_trips_through_a_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(find_model("deepseek-v3").config))
    arch = load_hf_config(path)
    assert arch.family == "mla-moe" and arch.native_precision == "fp8"
    assert arch.total_params == find_model("deepseek-v3").architecture.total_params


def test_awq_quantization_config_sets_the_native_precision():
    config = dict(json.loads((FIXTURES / "llama-3-8b-config.json").read_text()))
    config["quantization_config"] = {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True}
    assert parse_hf_config(config).native_precision == "int4-awq"


def test_every_problem_in_a_config_is_reported_at_once():
    with pytest.raises(InputError) as caught:
        parse_hf_config({"model_type": "llama", "hidden_size": -1, "num_attention_heads": "32", "vocab_size": 0})
    paths = {p.path for p in caught.value.problems}
    assert {"hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "intermediate_size",
            "max_position_embeddings"} <= paths


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(InputError) as caught:
        parse_hf_config({"model_type": "gpt2"})
    assert "unsupported model_type 'gpt2' (supported: deepseek_v2, deepseek_v3, llama" in str(caught.value)


def test_kv_heads_that_do_not_divide_heads_are_rejected():
    config = json.loads((FIXTURES / "llama-3-8b-config.json").read_text())
    config["num_key_value_heads"] = 5
    with pytest.raises(InputError, match="num_key_value_heads: 5 does not divide num_attention_heads 32"):
        parse_hf_config(config)


def test_malformed_and_missing_files_are_input_errors(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_hf_config(bad)
    with pytest.raises(InputError, match="no such file"):
        load_hf_config(tmp_path / "missing.json")
    bad.write_text("[1, 2]")
    with pytest.raises(InputError, match="must hold a JSON object"):
        load_hf_config(bad)
