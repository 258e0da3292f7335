"""Properties that must hold for any request: more load never needs less, more nodes never hurts."""

from __future__ import annotations

from gpuinfra.catalog import load_catalog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import size

MODELS = [m.slug for m in load_catalog().models]
EFA_TYPES = [i.name for i in load_catalog().instances if i.efa.supported]
ALL_TYPES = [i.name for i in load_catalog().instances]
PRECISIONS = ["bf16", "fp8", "int8", "int4-awq", "int4-gptq"]

common = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@common
@given(
    model=st.sampled_from(MODELS),
    instance=st.sampled_from(ALL_TYPES),
    precision=st.sampled_from(PRECISIONS),
    context=st.integers(min_value=256, max_value=131072 - 32768),
    extra=st.integers(min_value=1, max_value=32768),
    concurrency=st.integers(min_value=1, max_value=256),
)
def test_more_context_never_needs_less_memory(model, instance, precision, context, extra, concurrency):
    short = size(model, instance, precision=precision, context_tokens=context, concurrency=concurrency,
                 allow_fp8_weight_only=True)
    long = size(model, instance, precision=precision, context_tokens=context + extra, concurrency=concurrency,
                allow_fp8_weight_only=True)
    assert long.max_concurrency_at_context <= short.max_concurrency_at_context or (
        long.tensor_parallel > short.tensor_parallel)
    if long.feasible:
        assert short.feasible


@common
@given(
    model=st.sampled_from(MODELS),
    instance=st.sampled_from(ALL_TYPES),
    concurrency=st.integers(min_value=1, max_value=512),
    extra=st.integers(min_value=1, max_value=512),
    kv=st.sampled_from(["auto", "fp8"]),
)
def test_more_concurrency_never_needs_less_memory(model, instance, concurrency, extra, kv):
    fewer = size(model, instance, concurrency=concurrency, kv_cache_dtype=kv, allow_fp8_weight_only=True)
    more = size(model, instance, concurrency=concurrency + extra, kv_cache_dtype=kv, allow_fp8_weight_only=True)
    if more.feasible:
        assert fewer.feasible
    assert more.tensor_parallel >= fewer.tensor_parallel


@common
@given(
    model=st.sampled_from(MODELS),
    instance=st.sampled_from(EFA_TYPES),
    precision=st.sampled_from(PRECISIONS),
    nodes=st.integers(min_value=1, max_value=3),
    context=st.sampled_from([4096, 32768, 131072]),
    concurrency=st.integers(min_value=1, max_value=64),
)
def test_more_nodes_never_turn_feasible_into_infeasible(model, instance, precision, nodes, context, concurrency):
    request = dict(precision=precision, context_tokens=context, concurrency=concurrency, allow_fp8_weight_only=True)
    fewer = size(model, instance, nodes, **request)
    more = size(model, instance, nodes + 1, **request)
    if fewer.feasible:
        assert more.feasible, more.reasons


@common
@given(
    model=st.sampled_from(MODELS),
    instance=st.sampled_from(ALL_TYPES),
    util=st.floats(min_value=0.5, max_value=0.98),
)
def test_a_feasible_plan_never_books_more_than_the_usable_memory(model, instance, util):
    e = size(model, instance, gpu_memory_utilization=util, allow_fp8_weight_only=True)
    budget = e.per_gpu
    assert budget.usable_gib <= budget.total_gib
    if e.feasible:
        assert budget.weights_gib + budget.overhead_gib + budget.kv_cache_gib <= budget.usable_gib + 0.02
        assert e.max_concurrency_at_context >= e.concurrency
        assert e.tensor_parallel * e.replicas <= e.gpus_per_node
