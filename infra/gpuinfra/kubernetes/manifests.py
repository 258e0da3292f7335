"""`gpuinfra plan STACK --manifests DIR`: every Kubernetes object the program declares, one YAML file each.

The objects are the typed resources' inputs as the mock runtime recorded them, which is what the API server
would receive (apiVersion, kind, metadata, spec...), with whole numbers as integers. DIR is replaced whole
and atomically: the new directory is built beside it and swapped in by rename, so a failure leaves DIR as it
was and stale files of an older plan never survive.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import yaml

from gpuinfra.errors import InputError, Problem

FLAG = "--manifests"
HEAD = ("apiVersion", "kind", "metadata")


class Declared(Protocol):
    type: str
    inputs: dict[str, Any]


# A Helm release is one opaque resource (chart, version, values), not an object the API server receives:
# `--json` lists it, `--manifests` has no file for it.
NOT_OBJECTS = ("kubernetes:helm.sh/v3:Release",)


def is_kubernetes_object(resource_type: str) -> bool:
    return resource_type.startswith("kubernetes:") and resource_type not in NOT_OBJECTS


def _sorted(value: Any) -> Any:
    """Keys in a stable order (the engine's wire format does not keep the program's)."""
    if isinstance(value, dict):
        return {key: _sorted(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted(item) for item in value]
    return value


def kubernetes_objects(resources: Iterable[Declared]) -> list[dict[str, Any]]:
    """The manifests, apiVersion/kind/metadata first, in declaration order."""
    objects = []
    for resource in resources:
        if is_kubernetes_object(resource.type):
            inputs = _sorted(resource.inputs)
            objects.append({**{key: inputs[key] for key in HEAD if key in inputs},
                            **{key: value for key, value in inputs.items() if key not in HEAD}})
    return objects


def file_name(index: int, manifest: dict[str, Any]) -> str:
    metadata = manifest.get("metadata") or {}
    parts = [f"{index:03d}", manifest.get("kind", "object"), metadata.get("namespace") or "cluster",
             metadata.get("name", "unnamed")]
    return re.sub(r"[^a-z0-9.-]+", "-", "-".join(str(p) for p in parts).lower()) + ".yaml"


def check_manifest_directory(directory: Path) -> None:
    """Refuse, before any work, a DIR that is a file or whose nearest existing parent cannot be written."""
    if directory.exists() and not directory.is_dir():
        raise InputError([Problem(FLAG, f"{directory} exists and is not a directory")])
    existing = directory
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InputError([Problem(FLAG, f"{directory}: {existing} is not a writable directory")])


def write_manifests(manifests: list[dict[str, Any]], directory: Path) -> list[Path]:
    check_manifest_directory(directory)
    staging = previous = None
    names = [file_name(index, manifest) for index, manifest in enumerate(manifests)]
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.new-", dir=directory.parent))
        for name, manifest in zip(names, manifests, strict=True):
            (staging / name).write_text(yaml.safe_dump(manifest, sort_keys=False, width=120), encoding="utf-8")
        staging.chmod(0o755)
        if directory.exists():
            previous = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            directory.rename(previous / "d")
        staging.rename(directory)
        staging = None
    except OSError as exc:
        if previous is not None and (previous / "d").exists() and not directory.exists():
            (previous / "d").rename(directory)
        raise InputError([Problem(FLAG, f"{directory}: {exc.strerror or exc}; nothing was changed")]) from None
    finally:
        for leftover in (staging, previous):
            if leftover is not None:
                shutil.rmtree(leftover, ignore_errors=True)
    return [directory / name for name in names]
