"""The catalog: models, GPUs and AWS instance types, loaded once from the YAML files beside this module."""

from __future__ import annotations

import difflib
from functools import cache
from importlib import resources

import yaml

from gpuinfra.catalog.schema import Catalog, Gpu, GpuPerformance, InstanceType, ModelEntry, Source
from gpuinfra.errors import InputError, Problem

__all__ = [
    "Catalog",
    "Gpu",
    "GpuPerformance",
    "InstanceType",
    "ModelEntry",
    "Source",
    "find_gpu",
    "find_instance_type",
    "find_model",
    "load_catalog",
]


def _read(name: str) -> dict:
    text = resources.files("gpuinfra.catalog").joinpath("data", name).read_text(encoding="utf-8")
    return yaml.safe_load(text)


@cache
def load_catalog() -> Catalog:
    return Catalog(
        sources=_read("sources.yaml")["sources"],
        gpus=_read("gpus.yaml")["gpus"],
        instances=_read("instances.yaml")["instances"],
        models=_read("models.yaml")["models"],
        software=_read("software.yaml")["software"],
        regions=_read("regions.yaml"),
    )


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word.lower(), [c.lower() for c in candidates], n=3, cutoff=0.5)
    lookup = {c.lower(): c for c in candidates}
    if close:
        return "did you mean " + ", ".join(lookup[c] for c in close) + "?"
    return "known: " + ", ".join(sorted(candidates))


def _model_key(name: str) -> str:
    return name.strip().lower()


def find_model(name: str, path: str = "model") -> ModelEntry:
    """A catalog model by slug, display name or Hugging Face repo id (case-insensitive)."""
    catalog = load_catalog()
    key = _model_key(name)
    for model in catalog.models:
        if key in (model.slug, model.name.lower(), model.hf_repo.lower()):
            return model
    names = [m.slug for m in catalog.models] + [m.hf_repo for m in catalog.models]
    raise InputError([Problem(path, f"unknown model {name!r}: {_suggest(key, names)}")])


def find_gpu(name: str, path: str = "gpu") -> Gpu:
    catalog = load_catalog()
    key = name.strip().lower()
    for gpu in catalog.gpus:
        if key == gpu.name.lower() or key in (a.lower() for a in gpu.aliases):
            return gpu
    names = [g.name for g in catalog.gpus] + [a for g in catalog.gpus for a in g.aliases]
    raise InputError([Problem(path, f"unknown GPU {name!r}: {_suggest(key, names)}")])


def find_instance_type(name: str, path: str = "instance_type") -> InstanceType:
    catalog = load_catalog()
    key = name.strip().lower()
    for inst in catalog.instances:
        if key == inst.name:
            return inst
    raise InputError(
        [Problem(path, f"unknown instance type {name!r}: {_suggest(key, [i.name for i in catalog.instances])}")]
    )


def region_names() -> list[str]:
    return [region.name for region in load_catalog().regions.regions]


def region_problem(name: str) -> str | None:
    """Why NAME is not an AWS region gpuinfra can deploy to, or None when it is one."""
    names = region_names()
    if name in names:
        return None
    return f"{name!r} is not an AWS region: {_suggest(name, names)}"
