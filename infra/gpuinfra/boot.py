"""What a node runs at boot, shared by the EC2 user data and the Ansible nvme_raid role: the instance-store
RAID script and its systemd unit (package data in gpuinfra/assets)."""

from __future__ import annotations

from importlib import resources

import yaml

RAID_SCRIPT_PATH = "/usr/local/sbin/gpuinfra-instance-store-raid"
RAID_UNIT_NAME = "gpuinfra-instance-store-raid.service"
RAID_ENV_PATH = "/etc/default/gpuinfra-instance-store-raid"
# The one definition of each (assets/instance-store-raid.sh repeats them as its defaults, because a boot-time
# script cannot read Python: tests/unit/test_boot_constants.py fails when they differ). The hosts get them
# through the inventory contract (contract.host_constants -> gpuinfra_constants).
DEFAULT_MOUNT = "/mnt/nvme"
INSTANCE_STORE_MODEL = "Amazon EC2 NVMe Instance Storage"  # what EC2's instance-store NVMe reports as its model


def asset(name: str) -> str:
    return resources.files("gpuinfra.assets").joinpath(name).read_text(encoding="utf-8")


def raid_environment(mount_point: str = DEFAULT_MOUNT, devices: list[str] | None = None) -> str:
    lines = [f"GPUINFRA_RAID_MOUNT={mount_point}"]
    if devices:
        lines.append(f"GPUINFRA_RAID_DEVICES=\"{' '.join(devices)}\"")
    else:
        lines.append(f"GPUINFRA_RAID_MODEL=\"{INSTANCE_STORE_MODEL}\"")
    return "\n".join(lines) + "\n"


def cloud_config(*, mount_point: str = DEFAULT_MOUNT, extra_files: list[dict] | None = None) -> str:
    """cloud-init user data: install the RAID unit and start it now; systemd runs it again at every boot,
    which is what brings the array back after a stop/start wiped the instance store."""
    document = {
        "write_files": [
            {"path": RAID_SCRIPT_PATH, "permissions": "0755", "owner": "root:root",
             "content": asset("instance-store-raid.sh")},
            {"path": f"/etc/systemd/system/{RAID_UNIT_NAME}", "permissions": "0644", "owner": "root:root",
             "content": asset("instance-store-raid.service")},
            {"path": RAID_ENV_PATH, "permissions": "0644", "owner": "root:root",
             "content": raid_environment(mount_point)},
            *(extra_files or []),
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", RAID_UNIT_NAME],
        ],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)
