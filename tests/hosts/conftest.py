"""Fixtures for the real-host tests: three nspawn hosts and the stand-in repositories."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.rigs import nspawn, standin_repo
from tests.rigs.ansible_run import REPO

GPUINFRA = REPO / ".venv" / "bin" / "gpuinfra"


def software() -> dict:
    done = subprocess.run([str(GPUINFRA), "catalog", "software", "--json"], capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout)


def host_group_vars(repos: standin_repo.StandinRepos) -> dict:
    mount = nspawn.REPO_MOUNT
    return {
        # GPU-less test hosts: declared CPU-only, but with the hardware of an 8 x H100 NVSwitch node expected,
        # so the driver role takes the open-module + Fabric Manager path.
        "preflight_cpu_only": True,
        "preflight_gpuinfra_cli": str(GPUINFRA),
        "gpuinfra_request": {"model": "deepseek-r1-distill-qwen-7b"},
        "gpuinfra_expected_hardware": {"gpu": "H100-SXM-80GB", "compute_capability": "9.0", "nvswitch": True,
                                       "efa_devices": 0},
        # STAND-IN sources (tests/rigs/standin_repo.py) in place of NVIDIA's repository and AWS's installer.
        "nvidia_repository_url": f"file://{mount}/nvidia/{{distribution}}/x86_64/",
        "nvidia_repository_key_fingerprint": repos.key_fingerprint,
        "fabric_efa_installer_url": f"file://{mount}/efa/aws-efa-installer-standin.tar.gz",
        "fabric_efa_installer_sha256": repos.efa_sha256(),
    }


HOST_VARS = {
    "h1": {"fabric_kind": "efa", "host_tuning_hugepages": "efa"},
    "h2": {"fabric_kind": "rdma", "fabric_rdma_link": "roce", "host_tuning_hugepages": "explicit",
           "host_tuning_hugepages_count": 64, "nvidia_driver_fabric_manager": False},
    "h3": {},
}


@pytest.fixture(scope="session")
def nspawn_hosts(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("nspawn hosts, network namespaces and overlays need root (CI runs as root)")
    missing = nspawn.missing_tools()
    assert not missing, f"scripts/bootstrap.sh should have installed {missing}"
    repos = standin_repo.build(nspawn.base_rootfs(), software())
    with nspawn.NspawnHosts(repos, count=3) as hosts:
        inventory = hosts.inventory(Path(tmp_path_factory.mktemp("inventory")) / "hosts.yml",
                                    host_group_vars(repos), HOST_VARS)
        yield hosts, inventory
