"""The roles' range and format rules (ansible/module_utils/gpuinfra_input_rules.py), as pure functions.

tests/ansible/test_bad_input.py runs them for real through the playbooks; these call them directly, on the
edges a playbook run would be slow to cover one by one.
"""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"
RULES_FILE = ANSIBLE / "module_utils" / "gpuinfra_input_rules.py"
_spec = importlib.util.spec_from_file_location("gpuinfra_input_rules", RULES_FILE)
rules = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rules)

CONTRACT = {"gpuinfra_software": {"inference_engines": {"vllm": {}, "sglang": {}}},
            "gpuinfra_constants": {"nccl_env_file": "/etc/gpuinfra/nccl.env"}}


def messages(role: str, **values) -> list[str]:
    return list(rules.RULES[role](values, CONTRACT.get))


def test_every_role_has_rules_and_every_rule_a_role():
    assert set(rules.RULES) == {p.name for p in (ANSIBLE / "roles").iterdir() if p.is_dir()}


@pytest.mark.parametrize(("value", "shown"), [("lots", "'lots'"), (0, "0"), (2.0, "2"), (1.5, "1.5"), (None, "None"),
                                               ({"nodes": 0}, "{'nodes': 0}")])
def test_values_are_shown_as_the_inventory_wrote_them(value, shown):
    assert rules.shown(value) == shown


def test_the_chunk_size_is_a_multiple_of_four_of_at_least_four():
    base = {"nvme_raid_devices": ["/dev/nvme1n1"], "nvme_raid_mount": "/mnt/nvme", "nvme_raid_name": "md0",
            "nvme_raid_label": "nvme"}
    assert messages("nvme_raid", **base, nvme_raid_chunk_kib=512) == []
    for wrong in (0, 2, 6, "x"):
        assert messages("nvme_raid", **base, nvme_raid_chunk_kib=wrong) == [
            f"nvme_raid_chunk_kib must be 4 KiB or more and a multiple of 4 (is {rules.shown(wrong)})"]
    assert messages("nvme_raid", **base | {"nvme_raid_mount": "/"}, nvme_raid_chunk_kib=4) == [
        "nvme_raid_mount must be an absolute path other than / (is '/')"]


def _expiry(at: str) -> list[str]:
    return messages("node_expiry", node_expiry_at=at, node_expiry_grace_minutes=0, node_expiry_check_every="5min")


def test_the_expiry_is_empty_or_a_future_utc_time():
    future = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert _expiry("") == [] and _expiry(future) == []
    assert _expiry("2020-01-01T00:00:00Z")[0].startswith("node_expiry_at 2020-01-01T00:00:00Z has passed")
    assert _expiry("2031-13-01T00:00:00Z")[0].startswith("node_expiry_at must be a UTC time")  # no month 13
    assert _expiry("tomorrow")[0].startswith("node_expiry_at must be a UTC time")


def test_the_driver_must_belong_to_its_branch_and_be_new_enough_for_cuda():
    base = {"nvidia_driver_branch": "580", "nvidia_driver_cuda_version": "12.8",
            "nvidia_driver_cuda_min_driver": {"12.8": "570.26"}, "nvidia_driver_open_modules_from": "9.0",
            "nvidia_driver_compute_capability": "", "nvidia_driver_reboot_timeout": 600}
    assert messages("nvidia_driver", **base, nvidia_driver_version="580.95.05") == []
    old = base | {"nvidia_driver_branch": "560"}
    assert messages("nvidia_driver", **old, nvidia_driver_version="560.35.03") == [
        "nvidia_driver_version 560.35.03 is too old for CUDA 12.8, which needs 570.26 or newer"]
    unknown = base | {"nvidia_driver_cuda_version": "11.0"}
    assert messages("nvidia_driver", **unknown, nvidia_driver_version="580.95.05") == [
        "nvidia_driver_cuda_version 11.0 is not in nvidia_driver_cuda_min_driver (12.8 are known)"]


def test_the_nccl_environment_takes_one_line_scalars_of_nccl_and_fi_names_only():
    base = {"fabric_expected_devices": 0, "fabric_efa_installer_version": "1.41.0",
            "fabric_efa_installer_url": "https://example.com/efa.tar.gz", "fabric_efa_installer_sha256": "a" * 64,
            "fabric_efa_installer_args": ["-y"], "fabric_rdma_gid_index": 3, "fabric_nccl_socket_ifname": "eth0"}
    assert messages("fabric", **base, fabric_nccl_extra_env={"NCCL_DEBUG": "WARN", "FI_EFA_FORK_SAFE": 1}) == []
    assert messages("fabric", **base, fabric_nccl_extra_env={
        "LD_PRELOAD": "x", "NCCL_A": ["list"], "NCCL_B": {"k": 1}, "NCCL_C": "two\nlines"}) == [
        "fabric_nccl_extra_env may only set NCCL_* and FI_* variables, not LD_PRELOAD",
        "fabric_nccl_extra_env values must be one-line strings or numbers, not those of NCCL_A, NCCL_B, NCCL_C"]


def test_the_serving_plan_names_each_size_below_one_and_the_environment_the_fabric_owns():
    plan = {"tensor_parallel": 0, "nodes": 65, "max_num_seqs": None}
    found = messages("inference_server", inference_server_plan=plan, inference_server_env={"NCCL_DEBUG": "INFO"})
    assert "inference_server_plan: tensor_parallel must be 1 or more (is {'tensor_parallel': 0})" in found
    assert "inference_server_plan.nodes must be 1-64 nodes (is 65)" in found
    assert ("inference_server_env must not set NCCL_DEBUG: NCCL_* and FI_* belong to the fabric role "
            "(fabric_nccl_extra_env, /etc/gpuinfra/nccl.env)") in found
    assert not any("max_num_seqs" in message for message in found)  # null: not set, not wrong
