"""Model architecture from a Hugging Face ``config.json``: parameter groups per layer and the KV-cache layout.

Catalog models store their config.json, so the catalog and ``--model-config PATH`` share this one parser.
Supported families:

* ``dense-gqa``: Llama, Mistral, Qwen2, Qwen3 (grouped-query attention, dense MLP).
* ``mla-moe``: DeepSeek-V2/V3/R1 (multi-head latent attention, routed + shared experts).

Parameters are split into groups by how tensor/pipeline/expert parallelism distributes them
(vLLM's layer classes, sizing-facts.md S9b), so the sizing engine can compute what one GPU holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from gpuinfra.errors import InputError, Problem

Family = Literal["dense-gqa", "mla-moe"]
AttentionKind = Literal["GQA", "MLA"]

MODEL_TYPE_FAMILIES: dict[str, Family] = {
    "llama": "dense-gqa",
    "mistral": "dense-gqa",
    "qwen2": "dense-gqa",
    "qwen3": "dense-gqa",
    "deepseek_v2": "mla-moe",
    "deepseek_v3": "mla-moe",
}

# Native precision from config.json: quantization_config wins over torch_dtype.
_QUANT_METHOD_PRECISION = {"fp8": "fp8", "awq": "int4-awq", "gptq": "int4-gptq"}
_TORCH_DTYPE_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "bf16"}


@dataclass(frozen=True)
class LayerParams:
    """Parameter counts of one transformer layer, grouped by how parallelism splits them."""

    attn_sharded: int  # split across TP ranks by head (q/o, MLA q_b/kv_b)
    kv_proj: int  # GQA k/v projections: split by KV head, replicated once TP exceeds the KV heads
    attn_replicated: int  # MLA q_a/kv_a latent projections: every TP rank holds them whole
    mlp_sharded: int  # dense MLP, or shared experts: split across TP ranks
    routed_experts: int  # all routed experts: split across EP ranks (or TP-sharded when EP is off)
    active_routed: int  # routed-expert parameters one token passes through
    unquantized: int  # norms, biases, router: kept in 16 bits, replicated

    @property
    def total(self) -> int:
        return (
            self.attn_sharded
            + self.kv_proj
            + self.attn_replicated
            + self.mlp_sharded
            + self.routed_experts
            + self.unquantized
        )

    @property
    def active(self) -> int:
        return self.total - self.routed_experts + self.active_routed


@dataclass(frozen=True)
class ModelArchitecture:
    """What sizing needs to know about a model, read from its config.json."""

    model_type: str
    family: Family
    native_precision: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int  # GQA: key/value heads; MLA: 1 (the latent is shared by every head, S9b)
    head_dim: int
    intermediate: int
    vocab: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    qk_norm: bool = False
    # MLA
    q_lora_rank: int | None = None
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    qk_nope_head_dim: int | None = None
    v_head_dim: int | None = None
    # MoE
    n_routed_experts: int = 0
    n_shared_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate: int = 0
    first_k_dense_replace: int = 0
    moe_layer_freq: int = 1

    @property
    def attention(self) -> AttentionKind:
        return "MLA" if self.family == "mla-moe" else "GQA"

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    def is_moe_layer(self, index: int) -> bool:
        return self.is_moe and index >= self.first_k_dense_replace and index % self.moe_layer_freq == 0

    @cached_property
    def layer_params(self) -> tuple[LayerParams, ...]:
        return tuple(self._layer(i) for i in range(self.layers))

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def lm_head_params(self) -> int:
        # A tied head reuses the embedding tensor: no extra memory.
        return 0 if self.tie_word_embeddings else self.vocab * self.hidden

    @cached_property
    def total_params(self) -> int:
        return self.embedding_params + self.lm_head_params + self.hidden + sum(p.total for p in self.layer_params)

    @cached_property
    def active_params(self) -> int:
        return self.embedding_params + self.lm_head_params + self.hidden + sum(p.active for p in self.layer_params)

    def kv_bytes_per_token_per_layer(self, tensor_parallel: int, kv_bytes: float) -> float:
        """KV-cache bytes one GPU stores per token per layer.

        GQA: K and V for the KV heads this rank holds; vLLM keeps max(1, kv_heads // TP) heads per rank,
        replicating rather than splitting further (S9b). MLA: the compressed latent plus the RoPE key,
        which every TP rank stores whole (it is not a per-head tensor, S9b, S4b).
        """
        if self.attention == "MLA":
            assert self.kv_lora_rank is not None and self.qk_rope_head_dim is not None
            return (self.kv_lora_rank + self.qk_rope_head_dim) * kv_bytes
        return 2 * max(1, self.kv_heads // tensor_parallel) * self.head_dim * kv_bytes

    def tensor_parallel_problem(self, tensor_parallel: int) -> str | None:
        """Why vLLM refuses this TP size for this model, or None when it is valid.

        Heads must split evenly (ModelConfig.verify_with_parallel_config), and for GQA the KV heads must
        either split evenly or be replicated a whole number of times (QKVParallelLinear: ``divide(tp,
        kv_heads)`` when TP >= kv_heads, else ``divide(kv_heads, tp)``), S9/S9b.
        """
        if self.heads % tensor_parallel:
            return (
                f"Total number of attention heads ({self.heads}) must be divisible by "
                f"tensor parallel size ({tensor_parallel})"
            )
        if self.attention == "GQA":
            kv = self.kv_heads
            if (tensor_parallel >= kv and tensor_parallel % kv) or (tensor_parallel < kv and kv % tensor_parallel):
                return (
                    f"{kv} KV heads can neither be split evenly across nor replicated evenly over "
                    f"tensor parallel size {tensor_parallel}"
                )
        return None

    def valid_tensor_parallel_sizes(self, limit: int) -> list[int]:
        return [tp for tp in range(1, limit + 1) if self.tensor_parallel_problem(tp) is None]

    def _layer(self, index: int) -> LayerParams:
        h = self.hidden
        norms = 2 * h
        if self.attention == "MLA":
            assert self.kv_lora_rank is not None and self.qk_rope_head_dim is not None
            assert self.qk_nope_head_dim is not None and self.v_head_dim is not None
            qk_head = self.qk_nope_head_dim + self.qk_rope_head_dim
            if self.q_lora_rank:
                q_replicated = h * self.q_lora_rank
                q_sharded = self.q_lora_rank * self.heads * qk_head
                norms += self.q_lora_rank
            else:
                q_replicated, q_sharded = 0, h * self.heads * qk_head
            kv_a = h * (self.kv_lora_rank + self.qk_rope_head_dim)
            kv_b = self.kv_lora_rank * self.heads * (self.qk_nope_head_dim + self.v_head_dim)
            o = self.heads * self.v_head_dim * h
            norms += self.kv_lora_rank
            attn_sharded, kv_proj, attn_replicated = q_sharded + kv_b + o, 0, q_replicated + kv_a
        else:
            q = h * self.heads * self.head_dim
            o = self.heads * self.head_dim * h
            kv_proj = 2 * h * self.kv_heads * self.head_dim
            attn_sharded, attn_replicated = q + o, 0
            if self.qkv_bias:
                norms += (self.heads + 2 * self.kv_heads) * self.head_dim
            if self.qk_norm:
                norms += 2 * self.head_dim
        if self.is_moe_layer(index):
            expert = 3 * h * self.moe_intermediate
            return LayerParams(
                attn_sharded=attn_sharded,
                kv_proj=kv_proj,
                attn_replicated=attn_replicated,
                mlp_sharded=self.n_shared_experts * expert,
                routed_experts=self.n_routed_experts * expert,
                active_routed=self.experts_per_token * expert,
                # router weights and its score-correction bias
                unquantized=norms + self.n_routed_experts * h + self.n_routed_experts,
            )
        return LayerParams(
            attn_sharded=attn_sharded,
            kv_proj=kv_proj,
            attn_replicated=attn_replicated,
            mlp_sharded=3 * h * self.intermediate,
            routed_experts=0,
            active_routed=0,
            unquantized=norms,
        )


# Upper bounds on config.json dimensions: far above any real model (R1: 61 layers, 7168 hidden, 256
# experts), low enough that a hostile file cannot make sizing build billions of layer records.
DIMENSION_LIMITS = {"num_hidden_layers": 1024, "num_attention_heads": 16384, "num_key_value_heads": 16384,
                    "n_routed_experts": 16384, "num_experts_per_tok": 16384, "n_shared_experts": 16384,
                    "first_k_dense_replace": 1024, "moe_layer_freq": 1024}
DEFAULT_DIMENSION_LIMIT = 1 << 24
# Keys by which Hugging Face configs declare routed experts, whatever their model_type says.
EXPERT_COUNT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
# Keys only mixture-of-experts configs carry (their presence alone says so).
EXPERT_HINT_KEYS = ("num_experts_per_tok", "moe_intermediate_size", "moe_k", "router_aux_loss_coef")


def _integer(config: dict[str, Any], key: str, problems: list[Problem], *, default: Any = None,
             minimum: int = 1) -> int:
    """CONFIG[KEY] as an integer >= MINIMUM (and within its sanity limit); a problem otherwise."""
    value = config.get(key, default)
    wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if value is None:
        problems.append(Problem(key, "is required"))
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(Problem(key, f"must be {wanted}, got {_shown(value)}"))
        return 0
    limit = DIMENSION_LIMITS.get(key, DEFAULT_DIMENSION_LIMIT)
    if value < minimum or value > limit:
        problems.append(Problem(key, f"must be {wanted} up to {limit:,}, got {value}"))
        return 0
    return value


def _positive_int(config: dict[str, Any], key: str, problems: list[Problem], *, default: Any = None) -> int:
    return _integer(config, key, problems, default=default)


def _optional_int(config: dict[str, Any], key: str, problems: list[Problem], default: int, minimum: int) -> int:
    """An optional integer field: absent or null means DEFAULT."""
    if config.get(key) is None:
        return default
    return _integer(config, key, problems, minimum=minimum) or default


def _boolean(config: dict[str, Any], key: str, problems: list[Problem]) -> bool:
    value = config.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        problems.append(Problem(key, f"must be true or false, got {_shown(value)}"))
        return False
    return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _expert_problem(config: dict[str, Any], family: Family | None) -> Problem | None:
    """Routed experts declared in a family sized as dense: refused rather than sized as a dense model."""
    if family == "mla-moe":
        return None
    why = ("a mixture-of-experts model with model_type {!r}, which gpuinfra sizes only as dense; mixture-of-experts "
           "sizing supports deepseek_v2/deepseek_v3").format(config.get("model_type"))
    if isinstance(config.get("text_config"), dict):
        return Problem("text_config", "a nested text_config (a multimodal wrapper) is not supported; give the "
                                      "language model's own config.json")
    for key in EXPERT_COUNT_KEYS:
        value = config.get(key)
        if value is not None and value not in (0, 1):
            return Problem(key, f"{_shown(value)} routed experts: {why}")
    hints = [key for key in EXPERT_HINT_KEYS if config.get(key) is not None]
    if hints:
        return Problem(hints[0], f"{_shown(config[hints[0]])}: {why}")
    return None


def _native_precision(config: dict[str, Any], problems: list[Problem]) -> str:
    quant = config.get("quantization_config")
    if quant is not None and not isinstance(quant, dict):
        problems.append(Problem("quantization_config", f"must be an object, got {_shown(quant)}"))
        return "bf16"
    if isinstance(quant, dict) and quant.get("quant_method"):
        method = str(quant["quant_method"]).lower()
        if method in _QUANT_METHOD_PRECISION:
            return _QUANT_METHOD_PRECISION[method]
        if method == "compressed-tensors":
            return "int8"
        problems.append(
            Problem(
                "quantization_config.quant_method",
                f"unsupported quantization {method!r} (supported: {', '.join(sorted(_QUANT_METHOD_PRECISION))})",
            )
        )
        return "bf16"
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    if not isinstance(dtype, str):
        problems.append(Problem("torch_dtype", f"must be a string such as \"bfloat16\", got {_shown(dtype)}"))
        return "bf16"
    if dtype not in _TORCH_DTYPE_PRECISION:
        problems.append(Problem("torch_dtype", f"{dtype!r} is not a checkpoint dtype gpuinfra sizes (known: "
                                               f"{', '.join(_TORCH_DTYPE_PRECISION)})"))
        return "bf16"
    return _TORCH_DTYPE_PRECISION[dtype]


def parse_hf_config(config: Any) -> ModelArchitecture:
    """Build a ModelArchitecture from a config.json dict, reporting every problem at once."""
    if not isinstance(config, dict):
        raise InputError([Problem("", f"config.json must hold a JSON object, got {type(config).__name__}")])
    problems: list[Problem] = []
    family = _family(config, problems)
    common = _common_fields(config, problems)
    parse = _mla_moe if family == "mla-moe" else _dense_gqa
    architecture = parse(config, common, problems)
    if problems:
        raise InputError(problems)
    return architecture


def _family(config: dict[str, Any], problems: list[Problem]) -> Family | None:
    model_type = config.get("model_type")
    family = MODEL_TYPE_FAMILIES.get(model_type) if isinstance(model_type, str) else None
    experts_problem = _expert_problem(config, family)
    if experts_problem:
        problems.append(experts_problem)
    if family is None:
        problems.append(Problem("model_type", f"unsupported model_type {_shown(model_type)} (supported: "
                                              f"{', '.join(sorted(MODEL_TYPE_FAMILIES))})"))
    return family


def _common_fields(config: dict[str, Any], problems: list[Problem]) -> dict[str, Any]:
    """The fields every family has, each checked (a failed one reads as 0 and is reported)."""
    return dict(
        model_type=str(config.get("model_type")),
        native_precision=_native_precision(config, problems),
        layers=_positive_int(config, "num_hidden_layers", problems),
        hidden=_positive_int(config, "hidden_size", problems),
        heads=_positive_int(config, "num_attention_heads", problems),
        vocab=_positive_int(config, "vocab_size", problems),
        intermediate=_positive_int(config, "intermediate_size", problems),
        max_position_embeddings=_positive_int(config, "max_position_embeddings", problems),
        tie_word_embeddings=_boolean(config, "tie_word_embeddings", problems),
    )


def _mla_moe(config: dict[str, Any], common: dict[str, Any], problems: list[Problem]) -> ModelArchitecture | None:
    """DeepSeek-V2/V3/R1: multi-head latent attention and routed + shared experts."""
    rope = _positive_int(config, "qk_rope_head_dim", problems)
    nope = _positive_int(config, "qk_nope_head_dim", problems)
    experts = _positive_int(config, "n_routed_experts", problems)
    per_token = _positive_int(config, "num_experts_per_tok", problems)
    if experts and per_token and per_token > experts:
        problems.append(Problem("num_experts_per_tok", f"{per_token} exceeds n_routed_experts {experts}"))
    fields = dict(
        kv_heads=1, head_dim=nope + rope, qk_rope_head_dim=rope, qk_nope_head_dim=nope,
        kv_lora_rank=_positive_int(config, "kv_lora_rank", problems),
        v_head_dim=_positive_int(config, "v_head_dim", problems),
        q_lora_rank=_optional_int(config, "q_lora_rank", problems, default=0, minimum=1) or None,
        n_routed_experts=experts, experts_per_token=per_token,
        moe_intermediate=_positive_int(config, "moe_intermediate_size", problems),
        n_shared_experts=_optional_int(config, "n_shared_experts", problems, default=0, minimum=0),
        first_k_dense_replace=_optional_int(config, "first_k_dense_replace", problems, default=0, minimum=0),
        moe_layer_freq=_optional_int(config, "moe_layer_freq", problems, default=1, minimum=1),
    )
    return None if problems else ModelArchitecture(family="mla-moe", **fields, **common)


def _dense_gqa(config: dict[str, Any], common: dict[str, Any], problems: list[Problem]) -> ModelArchitecture | None:
    """Llama, Mistral, Qwen2, Qwen3: grouped-query attention and a dense MLP."""
    hidden, heads = common["hidden"], common["heads"]
    kv_heads = _positive_int(config, "num_key_value_heads", problems, default=config.get("num_attention_heads"))
    head_dim = (_optional_int(config, "head_dim", problems, default=0, minimum=1)
                or (hidden // heads if hidden and heads else 0))
    if heads and kv_heads and heads % kv_heads:
        problems.append(Problem("num_key_value_heads", f"{kv_heads} does not divide num_attention_heads {heads}"))
    if "head_dim" not in config and hidden and heads and hidden % heads:
        problems.append(Problem("hidden_size", f"{hidden} is not a multiple of num_attention_heads {heads}"))
    model_type = common["model_type"]
    qkv_bias = model_type == "qwen2" or _boolean(config, "attention_bias", problems)
    if problems:
        return None
    return ModelArchitecture(family="dense-gqa", kv_heads=kv_heads, head_dim=int(head_dim), qkv_bias=qkv_bias,
                             qk_norm=model_type == "qwen3", **common)


def load_hf_config(path: str | Path) -> ModelArchitecture:
    """Read and parse a local config.json (bounded, strict JSON); every failure is an InputError naming it."""
    from gpuinfra.documents import load_json

    data = load_json(path, "--model-config")
    try:
        return parse_hf_config(data)
    except InputError as exc:
        raise InputError(
            Problem(f"--model-config {path}" + (f": {p.path}" if p.path else ""), p.reason) for p in exc.problems
        ) from None
