"""The serving request: what to serve and at what load, defined once and carried whole across every boundary.

The stack config embeds it (its fields are the request's, flat in `gpuinfra:cluster`), the program writes it
as `gpuinfra:*` tags on GPU launchers and as `gpuinfra.io/*` annotations on Kubernetes pods, the policy pack
reads it back from either, the stack outputs carry it as a dict (`request`), and the Ansible preflight hands
it to `gpuinfra size --request-json` to re-size a host on the GPUs it really has. Each of those is one
conversion here, and `tests/unit/test_request.py` proves a request survives all of them unchanged.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuinfra.errors import InputError, Problem, problems_from_validation_error
from gpuinfra.sizing import (
    DEFAULT_CONTEXT_TOKENS,
    DEFAULT_GPU_MEMORY_UTILIZATION,
    AttentionParallel,
    KvCacheDtype,
    ModelSpec,
    Precision,
    SizingRequest,
    build_request,
)

TAG_PREFIX = "gpuinfra:"  # AWS tags on the resources that launch GPUs
ANNOTATION_PREFIX = "gpuinfra.io/"  # Kubernetes annotations on the serving pods


class ServingRequest(BaseModel):
    """What to serve (a catalog model, at a precision) and the load it must hold (context x concurrency)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)

    model: str = Field(description="Catalog model slug or HF repo id (e.g. deepseek-r1-distill-llama-70b)")
    precision: Precision | None = Field(None, strict=False,  # an enum: its value's text is the input
                                        description="Weight precision; default: the model's native one")
    kv_cache_dtype: KvCacheDtype = Field("auto", description="auto = 16-bit KV cache; fp8 halves it")
    context_tokens: int = Field(DEFAULT_CONTEXT_TOKENS, gt=0, description="max_model_len per sequence")
    concurrency: int = Field(1, gt=0, description="Concurrent sequences at full context the cluster must hold")
    attention_parallel: AttentionParallel = Field(
        "tp", description="MLA models: tp replicates the latent KV on every rank, dp partitions sequences")
    gpu_memory_utilization: float = Field(DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1,
                                          description="vLLM's share of each GPU's memory")

    # --- to and from the sizing engine ---------------------------------------------------------------------

    def sizing_request(self, **engine_settings: Any) -> SizingRequest:
        """The engine's request for this one (ENGINE_SETTINGS: max_num_batched_tokens, tensor_parallel, ...)."""
        from gpuinfra.catalog import find_model

        return build_request(model=ModelSpec.from_catalog(find_model(self.model)),
                             **self.model_dump(exclude={"model"}), **engine_settings)

    @classmethod
    def of(cls, request: SizingRequest) -> ServingRequest:
        """The serving request a sizing request answers, precision resolved (what was served)."""
        return cls(model=request.model.name, precision=request.effective_precision,
                   **{name: getattr(request, name) for name in cls.model_fields if name not in ("model", "precision")})

    # --- dict (stack outputs, JSON) ------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Any, label: str = "request") -> ServingRequest:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InputError(problems_from_validation_error(exc, label)) from None

    @classmethod
    def from_json(cls, text: str, label: str = "--request-json") -> ServingRequest:
        from gpuinfra.documents import parse_json

        return cls.from_dict(parse_json(text, label), label)

    # --- tags and annotations ------------------------------------------------------------------------------

    def to_labels(self, prefix: str = TAG_PREFIX) -> dict[str, str]:
        """The request as string labels (`gpuinfra:context-tokens: "32768"`); unset fields are left out."""
        return {prefix + name.replace("_", "-"): str(value.value if isinstance(value, Precision) else value)
                for name, value in self.model_dump().items() if value is not None}

    @classmethod
    def from_labels(cls, labels: dict[str, str], prefix: str = TAG_PREFIX) -> ServingRequest | None:
        """The request carried in LABELS, or None when they carry none (no model label)."""
        fields: dict[str, Any] = {name: labels[prefix + name.replace("_", "-")] for name in cls.model_fields
                                  if prefix + name.replace("_", "-") in labels}
        if "model" not in fields:
            return None
        try:  # labels are text: the numeric fields are read back as numbers, and must be numbers
            for name, kind in (("context_tokens", int), ("concurrency", int), ("gpu_memory_utilization", float)):
                if name in fields:
                    fields[name] = kind(fields[name])
        except ValueError as exc:
            raise InputError([Problem(f"{prefix}*", f"a label is not a number: {exc}")]) from None
        return cls.from_dict(fields, label=f"{prefix}*")

    # --- the command line ----------------------------------------------------------------------------------

    def to_argv(self) -> list[str]:
        """`gpuinfra size` arguments that carry this request whole."""
        return ["--request-json", json.dumps(self.to_dict(), sort_keys=True)]

