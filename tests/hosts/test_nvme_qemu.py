"""host.yml (host_tuning + nvme_raid) in a QEMU guest with four emulated NVMe drives and a real kernel:
RAID0 + stripe-aligned XFS + nofail mount + HugePages applied live; idempotent rerun; a reboot keeps the data;
a stop/start (drives wiped) gets the array rebuilt at boot by the unit; a drive holding someone else's
filesystem is refused (the file on it survives) until that one device is forced."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.hosts.conftest import GPUINFRA
from tests.rigs import qemu
from tests.rigs.ansible_run import run_playbook
from tests.rigs.common import sh

pytestmark = pytest.mark.slow
MOUNT = "/mnt/nvme"


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("building the guest image (debootstrap, chroot) needs root (CI runs as root)")
    missing = qemu.missing_tools()
    assert not missing, f"scripts/bootstrap.sh should have installed {missing}"
    with qemu.QemuGuest(drives=4) as vm:
        yield vm


def inventory(guest, tmp_path):
    return guest.inventory(tmp_path / "hosts.yml", {
        "preflight_cpu_only": True, "preflight_gpuinfra_cli": str(GPUINFRA),
        "preflight_nvme_model": qemu.NVME_MODEL, "nvme_raid_model": qemu.NVME_MODEL,
        "host_tuning_hugepages": "explicit", "host_tuning_hugepages_count": 64,
        "gpuinfra_expected_hardware": {"efa_devices": 0}})


def host_yml(guest, tmp_path, *extra):
    return run_playbook("host.yml", inventory(guest, tmp_path), *extra)


def mounted_array(guest) -> dict:
    source = guest.ssh("findmnt", "-n", "-o", "SOURCE,FSTYPE", MOUNT, check=False).stdout.split()
    mdstat = guest.ssh("cat", "/proc/mdstat").stdout
    return {"source": source, "raid0_members": sum(line.count("nvme") for line in mdstat.splitlines()
                                                   if "raid0" in line)}


@pytest.fixture(scope="module")
def converged(guest, tmp_path_factory):
    path = tmp_path_factory.mktemp("qemu")
    first = host_yml(guest, path)
    second = host_yml(guest, path)
    return {"first": first, "second": second, "path": path}


def test_raid0_xfs_mount_and_hugepages_applied_live(guest, converged):
    first = converged["first"]
    assert first.returncode == 0, first.tail()
    state = mounted_array(guest)
    assert state["raid0_members"] == 4 and state["source"][1] == "xfs", state
    xfs = guest.ssh("xfs_info", MOUNT).stdout
    assert "sunit=128" in xfs and "swidth=512 blks" in xfs, xfs  # 512 KiB chunk x 4 drives, 4 KiB blocks
    assert "LABEL=gpuinfranvme /mnt/nvme xfs noatime,nofail" in guest.ssh("cat", "/etc/fstab").stdout
    assert "HugePages_Total:      64" in guest.ssh("cat", "/proc/meminfo").stdout
    assert guest.ssh("systemctl", "is-enabled", "gpuinfra-instance-store-raid.service").stdout.strip() == "enabled"


def test_second_run_changes_nothing(converged):
    second = converged["second"]
    assert second.returncode == 0, second.tail()
    assert second.changed() == {"qemu-nvme": 0}, second.tail()


def test_reboot_keeps_the_array_and_its_data(guest, converged):
    guest.ssh(f"echo kept > {MOUNT}/marker && sync")
    guest.reboot()
    assert mounted_array(guest)["raid0_members"] == 4
    assert guest.ssh("cat", f"{MOUNT}/marker").stdout.strip() == "kept"
    assert "HugePages_Total:      64" in guest.ssh("cat", "/proc/meminfo").stdout


def test_stop_start_with_wiped_drives_rebuilds_the_array_at_boot(guest, converged):
    guest.reboot(wipe_drives=True)
    state = mounted_array(guest)
    assert state["raid0_members"] == 4 and state["source"][1] == "xfs", (state, guest.ssh(
        "journalctl", "-b", "-u", "gpuinfra-instance-store-raid", "--no-pager", check=False).stdout)
    assert guest.ssh("test", "-e", f"{MOUNT}/marker", check=False).returncode == 1
    assert guest.ssh("systemctl", "is-active", "gpuinfra-instance-store-raid.service").stdout.strip() == "active"


def test_a_drive_holding_a_foreign_filesystem_is_refused_and_its_file_survives(guest, converged, tmp_path):
    guest.power_off()
    guest.wipe_drives()
    content = tmp_path / "content"
    content.mkdir()
    (content / "precious.txt").write_text("customer data\n")
    foreign = guest.drive(3)
    sh("mkfs.ext4", "-q", "-F", "-L", "precious", "-d", content, foreign)
    guest.boot()
    # At boot the unit refuses too: no array, nothing written.
    assert guest.ssh("systemctl", "is-failed", "gpuinfra-instance-store-raid.service",
                     check=False).stdout.strip() == "failed"
    device = guest.ssh("blkid", "-t", "LABEL=precious", "-o", "device").stdout.strip()
    refused = host_yml(guest, converged["path"])
    assert refused.returncode != 0
    assert f"refusing to touch disks holding data this tool did not create: {device} (ext4 (label precious))" in \
        " ".join(refused.output.split()), refused.tail()
    assert guest.ssh("blkid", "-s", "LABEL", "-o", "value", device).stdout.strip() == "precious"
    guest.power_off()
    survived = subprocess.run(["debugfs", "-R", "cat /precious.txt", str(foreign)], capture_output=True,
                              text=True, timeout=60)
    assert survived.stdout == "customer data\n"
    guest.boot()
    forced = host_yml(guest, converged["path"], "-e", f'{{"nvme_raid_force_devices": ["{device}"]}}')
    assert forced.returncode == 0, forced.tail()
    assert mounted_array(guest)["raid0_members"] == 4
