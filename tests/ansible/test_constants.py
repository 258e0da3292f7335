"""Constants the hosts need are defined once (gpuinfra.boot, gpuinfra.contract) and exported as the contract's
`gpuinfra_constants`. Where that one definition cannot reach, a copy is kept equal here: the preflight role's
copy for inventories that do not carry the contract, and the boot-time RAID script's defaults."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from gpuinfra.boot import (
    DEFAULT_MOUNT,
    INSTANCE_STORE_MODEL,
    RAID_ENV_PATH,
    RAID_SCRIPT_PATH,
    RAID_UNIT_NAME,
    asset,
    raid_environment,
)
from gpuinfra.contract import HOST_CONFIG_DIR, host_constants

from .task_files import steps

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "ansible" / "roles"


def test_the_preflight_copy_is_the_contract():
    copy = yaml.safe_load((ROLES / "preflight" / "vars" / "main.yml").read_text())["__preflight_constants"]
    assert copy == host_constants()


def test_the_raid_script_defaults_are_the_boot_constants():
    script = asset("instance-store-raid.sh")
    assert re.search(r"^model=\$\{GPUINFRA_RAID_MODEL:-(.+)\}$", script, re.M)[1] == INSTANCE_STORE_MODEL
    assert re.search(r"^mount_point=\$\{GPUINFRA_RAID_MOUNT:-(.+)\}$", script, re.M)[1] == DEFAULT_MOUNT
    assert f'GPUINFRA_RAID_MODEL="{INSTANCE_STORE_MODEL}"' in raid_environment()


def test_no_role_or_module_repeats_a_constant():
    """The literals live only in the copy above; roles, playbooks and modules read gpuinfra_constants."""
    literals = [INSTANCE_STORE_MODEL, DEFAULT_MOUNT, "0.97", ":8000", "default(8000)", HOST_CONFIG_DIR,
                RAID_SCRIPT_PATH, RAID_UNIT_NAME, RAID_ENV_PATH]
    allowed = {ROLES / "preflight" / "vars" / "main.yml"}
    found = []
    for path in (ROOT / "ansible").rglob("*"):
        skipped = path in allowed or {"reports", "inventories"} & set(path.parts)
        if path.is_file() and path.suffix in {".yml", ".j2", ".py"} and not skipped:
            text = path.read_text(errors="replace")
            found += [f"{path.relative_to(ROOT)}: {literal}" for literal in literals if literal in text]
    assert found == []


def test_facts_read_again_use_the_nvme_model_preflight_read_them_with():
    """A role that reads the hardware facts again (after a driver or tuning change) must filter the NVMe drives as
    preflight did: an inventory may override preflight_nvme_model for its own drives."""
    calls = {}
    for path in ROLES.glob("*/tasks/*.yml"):
        for task in steps(yaml.safe_load(path.read_text()) or []):
            if "gpuinfra_hw_facts" in task:
                calls[str(path.relative_to(ROLES))] = task["gpuinfra_hw_facts"]["nvme_model"]
    assert calls.pop("preflight/tasks/main.yml") == "{{ preflight_nvme_model }}"
    assert len(calls) >= 3
    assert set(calls.values()) == {"{{ gpuinfra_nvme_model | default(gpuinfra_constants.instance_store_model) }}"}
