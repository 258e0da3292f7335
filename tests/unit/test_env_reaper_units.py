"""The reaper's schedulers that ship in the package: the systemd service + timer pass `systemd-analyze
verify`, and the Kubernetes CronJob runs `gpuinfra env reap --yes` every few minutes, one run at a time, as a
non-root, read-only container."""

from __future__ import annotations

import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest
import yaml


def asset(name: str) -> str:
    return resources.files("gpuinfra.assets").joinpath(name).read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_units_verify(tmp_path: Path):
    gpuinfra = tmp_path / "gpuinfra"
    gpuinfra.write_text("#!/bin/sh\n")
    gpuinfra.chmod(0o755)
    (tmp_path / "gpuinfra-env-reap.service").write_text(
        asset("gpuinfra-env-reap.service").replace("/opt/gpuinfra/bin/gpuinfra", str(gpuinfra)))
    (tmp_path / "gpuinfra-env-reap.timer").write_text(asset("gpuinfra-env-reap.timer"))
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "gpuinfra-env-reap.timer"),
                           str(tmp_path / "gpuinfra-env-reap.service")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ExecStart=/opt/gpuinfra/bin/gpuinfra env reap --yes" in asset("gpuinfra-env-reap.service")
    assert "OnUnitActiveSec=5min" in asset("gpuinfra-env-reap.timer")


def test_the_cronjob_runs_the_reaper_every_five_minutes_one_at_a_time():
    job = yaml.safe_load(asset("gpuinfra-env-reap-cronjob.yaml"))
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "CronJob")
    spec = job["spec"]
    assert spec["schedule"] == "*/5 * * * *" and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["env", "reap", "--yes"] and pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {e["name"] for e in container["env"]} >= {"GPUINFRA_BACKEND", "PULUMI_CONFIG_PASSPHRASE"}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/work", "/tmp"} <= mounts  # writable places a read-only root filesystem still needs
