"""Property tests: no generated stack file, argument list or config.json ever produces a traceback, an
internal error or an exit code outside 0/1/2, and no failed run leaves a file behind."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import pytest
import yaml
from gpuinfra.cli import main
from gpuinfra.config import ClusterConfig
from gpuinfra.documents import parse_json, parse_yaml
from gpuinfra.errors import InputError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Hundreds of generated runs: `make test` runs these, `make test-fast` does not.
pytestmark = pytest.mark.slow

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=10), inner,
                                                                            max_size=4)), max_leaves=12)
plausible = {
    "model": st.sampled_from(["deepseek-r1-distill-qwen-1.5b", "deepseek-r1", "nope", "deepseek-r1-distill-llama-8b"]),
    "weights": st.one_of(st.just({"source": "hf://deepseek-ai/x"}), json_values),
    "instance_types": st.one_of(st.lists(st.sampled_from(["g6.2xlarge", "p5.48xlarge", "g6e.xlarge", "x1"]),
                                         max_size=3), json_values),
    "nodes": st.one_of(st.integers(min_value=-3, max_value=70), json_values),
    "region": st.one_of(st.sampled_from(["us-east-1", "eu-west-1", "zz-nowhere-9"]), st.text(max_size=20)),
    "availability_zone": st.one_of(st.sampled_from(["us-east-1a", "us-east-10a", "eu-west-1b"]), json_values),
    "capacity": st.one_of(st.sampled_from([{"type": "spot"}, {"type": "on-demand"},
                                           {"type": "capacity-block", "reservation_id": "cr-0123456789abcdef0"}]),
                          json_values),
    "access": st.one_of(st.fixed_dictionaries({"ssh_cidrs": st.lists(st.sampled_from(
        ["0.0.0.0/1", "128.0.0.0/1", "10.0.0.0/8", "::/0", "bad"]), max_size=3), "ssh_key_name": st.just("k")}),
        json_values),
    "tags": st.one_of(st.dictionaries(st.text(max_size=140), st.text(max_size=300), max_size=5), json_values),
}
other_fields = st.sampled_from(sorted(set(ClusterConfig.model_fields) - set(plausible)) + ["bogus_field"])
clusters = st.fixed_dictionaries({}, optional=plausible).flatmap(
    lambda known: st.dictionaries(other_fields, json_values, max_size=3).map(lambda extra: {**known, **extra}))


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """main(ARGV) in CWD with stderr captured; asserts the contract of every run."""
    err = io.StringIO()
    before = sorted(p.name for p in cwd.rglob("*"))
    old = Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv, out=io.StringIO())
    finally:
        os.chdir(old)
    text = err.getvalue()
    assert code in (0, 1, 2), (argv, code, text)
    assert "Traceback" not in text and "internal error" not in text, (argv, text)
    if code == 2:
        assert text and all(line.startswith("error: ") for line in text.splitlines() if line), text
        assert sorted(p.name for p in cwd.rglob("*")) == before, "a failed run left files behind"
    return code, text


@SETTINGS
@given(clusters)
def test_any_stack_file_is_planned_or_refused_cleanly(cluster):
    with tempfile.TemporaryDirectory() as work:
        stack = Path(work) / "Pulumi.gen.yaml"
        try:
            stack.write_text(yaml.safe_dump({"config": {"gpuinfra:cluster": cluster}}), encoding="utf-8")
        except UnicodeEncodeError:  # lone surrogates cannot be written as UTF-8: not a file a user can have
            return
        run_cli(["plan", "--stack-file", str(stack)], Path(work))


@SETTINGS
@given(st.text(max_size=400))
def test_any_text_parses_as_yaml_or_is_refused_as_input(text):
    with contextlib.suppress(InputError):  # refusing is fine; anything else is not
        parse_yaml(text, "FILE")
    with contextlib.suppress(InputError):
        parse_json(text, "FILE")


flag_values = st.one_of(st.text(max_size=12), st.sampled_from(["0", "-1", "1", "8", "1e9", "nan", "inf", "99999999",
                                                                "0.95", "h100", "p5.48xlarge", "fp8", "dp"]))
size_flags = st.sampled_from(["--context", "--concurrency", "--gpu-memory-utilization", "--max-num-batched-tokens",
                              "--tensor-parallel", "--instance-type", "--gpu", "--gpus-per-node", "--nodes",
                              "--max-nodes", "--precision", "--kv-cache-dtype", "--attention-parallel"])


@SETTINGS
@given(st.sampled_from(["deepseek-r1-distill-qwen-1.5b", "deepseek-r1", "unknown-model", "--json"]),
       st.lists(st.tuples(size_flags, flag_values), max_size=4))
def test_any_size_arguments_answer_or_are_refused_cleanly(model, pairs):
    argv = ["size", model, *[word for pair in pairs for word in pair]]
    with tempfile.TemporaryDirectory() as work:
        run_cli(argv, Path(work))


@SETTINGS
@given(st.lists(st.one_of(st.text(max_size=20), st.sampled_from(["10.0.0.1", "10.0.0.1", "h1", "", "a b",
                                                                  "999.1.1.1", "h2=p5.48xlarge", "::1"])),
                max_size=5))
def test_any_host_list_is_accepted_or_refused_cleanly(hosts):
    with tempfile.TemporaryDirectory() as work:
        run_cli(["inventory", "prod-r1", "--hosts", ",".join(hosts)], Path(work))


CONFIG_KEYS = ["model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "intermediate_size", "vocab_size", "max_position_embeddings", "head_dim", "torch_dtype",
               "quantization_config", "tie_word_embeddings", "kv_lora_rank", "q_lora_rank", "qk_rope_head_dim",
               "qk_nope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
               "first_k_dense_replace", "num_local_experts", "n_shared_experts", "moe_layer_freq"]
config_values = st.one_of(st.integers(min_value=-5, max_value=10**9), st.sampled_from(["llama", "deepseek_v3",
                                                                                      "mistral", "qwen2"]),
                          json_values)
BASE_CONFIG = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
               "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
               "max_position_embeddings": 131072}


@SETTINGS
@given(st.dictionaries(st.sampled_from(CONFIG_KEYS), config_values, max_size=6), st.booleans())
def test_any_config_json_is_sized_or_refused_cleanly(changes, from_base):
    config = {**(BASE_CONFIG if from_base else {}), **changes}
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "config.json"
        try:
            path.write_text(json.dumps(config, allow_nan=True), encoding="utf-8")
        except UnicodeEncodeError:
            return
        run_cli(["size", "--model-config", str(path), "--gpu", "h100", "--gpus-per-node", "8", "--json"], Path(work))
