"""The node-acceptance parsers and thresholds against what real H100 / H200 machines returned
(docs/validation/), plus one broken figure per check."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "ansible" / "library"))

import gpuinfra_acceptance as acceptance  # noqa: E402

sys.path.insert(0, str(ROOT / "ansible" / "module_utils"))
import gpuinfra_hw as facts  # noqa: E402
from gpuinfra.contract import GPU_MEMORY_TOLERANCE  # noqa: E402

VALIDATION = ROOT / "docs" / "validation"
MACHINES = ["h100-x1", "h200-x2"]


def report(machine: str) -> dict:
    return json.loads((VALIDATION / machine / "reports" / "gpu-under-test.json").read_text())


def test_parse_recorded_nvidia_smi_csv():
    (h100,) = facts.parse_gpu_csv((VALIDATION / "h100-x1" / "nvidia-smi-query-gpu.csv").read_text())
    assert h100 | {} == {**h100, "index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_mib": 81559, "memory_gib": 79.65,
                         "driver_version": "580.159.04", "compute_capability": "9.0", "ecc_enabled": True,
                         "mig_enabled": False, "retired_pages_pending": False, "power_limit_w": 700.0}
    h200 = facts.parse_gpu_csv((VALIDATION / "h200-x2" / "nvidia-smi-query-gpu.csv").read_text())
    assert [g["pci_bus_id"] for g in h200] == ["00000000:00:06.0", "00000000:00:07.0"]
    assert {g["memory_gib"] for g in h200} == {140.4}


def test_parse_recorded_remapped_rows_and_odd_lines():
    rows = facts.parse_remapped_rows((VALIDATION / "h200-x2" / "nvidia-smi-remapped-rows.csv").read_text())
    assert rows == {"00000000:00:06.0": {"pending": False, "failure": False},
                    "00000000:00:07.0": {"pending": False, "failure": False}}
    assert facts.parse_gpu_csv("No devices were found\n") == []
    assert facts.parse_remapped_rows("00000000:00:06.0, Yes, No") == {"00000000:00:06.0": {"pending": True,
                                                                                          "failure": False}}


def test_parse_meminfo_and_xid():
    info = facts.parse_meminfo("MemTotal:       132000000 kB\nHugePages_Total:    1024\nHugepagesize:       2048 kB\n")
    assert info == {"ram_gib": 125.9, "hugepages_total": 1024, "hugepage_size_kib": 2048}
    log = "[ 12.3] NVRM: Xid (PCI:0000:00:06): 79, pid=1, GPU has fallen off the bus.\n[ 13.0] other\n"
    assert facts.xid_events(log) == ["[ 12.3] NVRM: Xid (PCI:0000:00:06): 79, pid=1, GPU has fallen off the bus."]


def evaluate(data: dict, **options) -> dict[str, dict]:
    checks = acceptance.evaluate(data["hardware"], data["expected"], data["measurements"], {}, min_driver="570.0",
                                 gpu_memory_tolerance=GPU_MEMORY_TOLERANCE, **options)
    return {c["name"]: c for c in checks}


@pytest.mark.parametrize("machine", MACHINES)
def test_recorded_real_nodes_pass(machine):
    checks = evaluate(report(machine))
    assert [c for c in checks.values() if c["status"] == "fail"] == []
    assert report(machine)["report"]["passed"] is True


def test_recorded_figures_are_what_the_docs_say():
    h200 = report("h200-x2")["measurements"]
    assert h200["nccl_all_reduce"]["busbw_gbs"] == 316.0
    assert [g["hbm_copy_gbs"] for g in h200["gpus"]] == [4260.9, 4270.0]
    assert report("h100-x1")["measurements"]["gpus"][0]["bf16_matmul_tflops"] == 751.5


@pytest.mark.parametrize("path, value, check, observed", [
    (("gpus", 0, "hbm_copy_gbs"), 2000.0, "gpu0-hbm-bandwidth", "2000.0 GB/s"),
    (("gpus", 1, "bf16_matmul_tflops"), 400.0, "gpu1-bf16-matmul", "400.0 TFLOPS"),
    (("gpus", 0, "h2d_gbs"), 6.2, "gpu0-h2d-bandwidth", "6.2 GB/s"),
    (("nccl_all_reduce", "busbw_gbs"), 90.0, "nccl-all-reduce", "90.0 GB/s bus (2 ranks)"),
])
def test_a_slow_figure_fails_with_the_figure(path, value, check, observed):
    data = copy.deepcopy(report("h200-x2"))
    target = data["measurements"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    result = evaluate(data)[check]
    assert result["status"] == "fail" and result["observed"] == observed


@pytest.mark.parametrize("mutate, check", [
    (lambda d: d["hardware"].update(gpu_count=1), "gpu-count"),
    (lambda d: d["hardware"]["gpus"][0].update(name="NVIDIA A100-SXM4-80GB"), "gpu-model"),
    (lambda d: d["hardware"].update(gpu_memory_gib=70.0), "gpu-memory"),
    (lambda d: d["hardware"].update(driver_version="535.183.01"), "driver"),
    (lambda d: d["hardware"]["gpus"][1].update(ecc_enabled=False, ecc_mode="Disabled"), "ecc"),
    (lambda d: d["hardware"]["gpus"][1].update(remapped_rows_pending=True), "memory-retirement"),
    (lambda d: d["hardware"].update(xid_events=["NVRM: Xid 79"]), "xid-errors"),
    (lambda d: d["expected"].update(efa_devices=32), "rdma-devices"),
    (lambda d: d["expected"].update(nvswitch=True) or d["hardware"].update(fabric_manager="inactive"),
     "fabric-manager"),
])
def test_a_bad_fact_fails_its_check(mutate, check):
    data = copy.deepcopy(report("h200-x2"))
    mutate(data)
    assert evaluate(data)[check]["status"] == "fail"


def test_raid_hugepages_memlock_checks():
    data = report("h100-x1")
    checks = evaluate(data, raid_mount="/mnt/nvme", raid_mounted=False, min_hugepages=5128,
                      require_memlock_unlimited=True)
    assert checks["nvme-raid-mounted"]["status"] == "fail" and checks["hugepages"]["status"] == "fail"
    assert checks["memlock"]["status"] == "pass"


@pytest.mark.parametrize("measurements, why", [
    ({"error": "PyTorch is not installed on this host"}, "PyTorch is not installed on this host"),
    ({"error": ""}, "no GPU was measured"),
    ({"gpus": [], "nccl_all_reduce": {"skipped": "x"}}, "no GPU was measured"),
])
def test_missing_or_failed_measurements_reject_the_node(measurements, why):
    """Found on the first real run: a node whose measurements never ran was accepted."""
    data = copy.deepcopy(report("h100-x1"))
    data["measurements"] = measurements
    check = evaluate(data)["measurements"]
    assert check["status"] == "fail" and check["observed"] == why


def test_thresholds_are_configurable():
    data = report("h100-x1")
    checks = {c["name"]: c for c in acceptance.evaluate(data["hardware"], data["expected"], data["measurements"],
                                                        {"bf16_matmul_fraction": 0.9},
                                                        gpu_memory_tolerance=GPU_MEMORY_TOLERANCE)}
    assert checks["gpu0-bf16-matmul"]["status"] == "fail"


def test_version_compare():
    assert acceptance.version_tuple("580.159.04") > acceptance.version_tuple("570.0")
    assert acceptance.version_tuple("535.183.01") < acceptance.version_tuple("570")


UBUNTU_2204 = """PRETTY_NAME="Ubuntu 22.04.4 LTS"
NAME="Ubuntu"
VERSION_ID="22.04"
VERSION="22.04.4 LTS (Jammy Jellyfish)"
VERSION_CODENAME=jammy
ID=ubuntu
ID_LIKE=debian
UBUNTU_CODENAME=jammy
"""
DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nNAME="Debian GNU/Linux"\nVERSION_ID="12"\n' \
            'VERSION_CODENAME=bookworm\nID=debian\n'


def test_os_release_gives_the_names_setup_gives():
    ubuntu = facts.os_facts(UBUNTU_2204, "bookworm/sid\n", "6.8.0-1015-aws", "x86_64")
    assert ubuntu == {"distribution": "Ubuntu", "distribution_version": "22.04", "distribution_major_version": "22",
                      "distribution_release": "jammy", "os_family": "Debian", "kernel": "6.8.0-1015-aws",
                      "architecture": "x86_64", "system": "Linux"}
    debian = facts.os_facts(DEBIAN_12, "12.11\n", "6.1.0-28-amd64", "x86_64")
    assert (debian["distribution"], debian["distribution_version"], debian["distribution_major_version"],
            debian["distribution_release"]) == ("Debian", "12.11", "12", "bookworm")
    rocky = facts.os_facts('NAME="Rocky Linux"\nID="rocky"\nID_LIKE="rhel centos fedora"\nVERSION_ID="9.4"\n', "",
                           "5.14.0", "aarch64")
    assert (rocky["distribution"], rocky["os_family"], rocky["distribution_major_version"]) == ("Rocky", "RedHat", "9")
    unknown = facts.os_facts('NAME="Some OS"\nID=someos\nID_LIKE=debian\nVERSION_ID=3\n', "", "6.0", "x86_64")
    assert (unknown["distribution"], unknown["os_family"]) == ("Some OS", "Debian")
    # No os-release: nothing, so preflight's setup fallback gathers them.
    assert facts.os_facts("", "", "6.0", "x86_64") == {}
