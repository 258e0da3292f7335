"""What every environment command works with, chosen once by the CLI (`--engine`, `--backend`, `--cloud`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from gpuinfra.environments.backend import Backend, Clock
from gpuinfra.environments.engine import Engine
from gpuinfra.environments.idle import Activity
from gpuinfra.environments.progress import Stages

# (Prometheus URL, idle window) -> verdict; idle.probe, asked of the monitoring role's Prometheus.
IdleProbe = Callable[[str | None, timedelta], Activity]


@dataclass(frozen=True)
class Context:
    engine: Engine
    backend: Backend
    clock: Clock
    cloud: object  # cloud.AwsCloud or cloud.StandinCloud: .capacity, .tagged_resources(), .retag()
    stages: Stages
    probe: IdleProbe
    home: Path  # local files of this machine (inventories, serving reports): ~/.gpuinfra
