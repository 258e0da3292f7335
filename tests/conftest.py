"""Shared helpers for the test suite."""

from __future__ import annotations

from gpuinfra.catalog import find_gpu, find_instance_type, find_model
from gpuinfra.sizing import Evaluation, Hardware, ModelSpec, build_request, evaluate


def size(model: str, instance: str | None = None, nodes: int = 1, *, gpu: str | None = None,
         gpus_per_node: int | None = None, **request) -> Evaluation:
    """Evaluate a catalog model on an instance type (or an on-prem GPU) with request overrides."""
    req = build_request(model=ModelSpec.from_catalog(find_model(model)), **request)
    if instance:
        hardware = Hardware.from_instance(find_instance_type(instance), nodes)
    else:
        hardware = Hardware(gpu=find_gpu(gpu), gpus_per_node=gpus_per_node, nodes=nodes)
    return evaluate(req, hardware)
