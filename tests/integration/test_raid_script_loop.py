"""The instance-store RAID script on real block devices (loop devices on this kernel): format, mount,
idempotent rerun, reboot-style remount, and refusal of disks that hold someone else's data.

The multi-disk mdadm path needs an md driver, which this kernel lacks; the QEMU guest test covers it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from gpuinfra.boot import asset

pytestmark = pytest.mark.slow
TOOLS = ("losetup", "mkfs.xfs", "blkid", "wipefs", "mount", "umount", "mountpoint", "findmnt", "sfdisk")


def sh(*argv: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=check, env=env)


@pytest.fixture
def rig(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("loop devices need root")
    missing = [t for t in TOOLS if not shutil.which(t)]
    assert not missing, f"scripts/bootstrap.sh should have installed {missing}"
    script = tmp_path / "instance-store-raid.sh"
    script.write_text(asset("instance-store-raid.sh"))
    script.chmod(0o755)
    image = tmp_path / "disk.img"
    with image.open("wb") as handle:
        handle.truncate(320 * 2**20)
    attach = sh("losetup", "--find", "--show", str(image), check=False)
    if attach.returncode != 0:
        pytest.skip(f"no loop device support here: {attach.stderr.strip()}")
    device = attach.stdout.strip()
    mount_point = tmp_path / "mnt"
    try:
        yield {"script": script, "device": device, "mount": mount_point}
    finally:
        while sh("mountpoint", "-q", str(mount_point), check=False).returncode == 0:
            sh("umount", str(mount_point))
        sh("losetup", "-d", device)


def run_script(rig, **extra) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "GPUINFRA_RAID_DEVICES": rig["device"],
           "GPUINFRA_RAID_MOUNT": str(rig["mount"]), **extra}
    return sh("bash", str(rig["script"]), check=False, env=env)


def test_formats_mounts_and_is_idempotent(rig):
    first = run_script(rig)
    assert first.returncode == 0, first.stderr
    assert "formatted" in first.stderr
    assert sh("blkid", "-p", "-s", "LABEL", "-o", "value", rig["device"]).stdout.strip() == "gpuinfranvme"
    (rig["mount"] / "weights.safetensors").write_text("kept")
    again = run_script(rig)
    assert again.returncode == 0 and "already mounted" in again.stderr and "formatted" not in again.stderr
    sh("umount", str(rig["mount"]))  # a reboot: the disk keeps our filesystem
    after_reboot = run_script(rig)
    assert after_reboot.returncode == 0 and "formatted" not in after_reboot.stderr
    assert (rig["mount"] / "weights.safetensors").read_text() == "kept"


def test_disk_wiped_by_stop_start_is_formatted_again(rig):
    assert run_script(rig).returncode == 0
    sh("umount", str(rig["mount"]))
    sh("wipefs", "-a", rig["device"])  # what a stop/start does to instance store
    result = run_script(rig)
    assert result.returncode == 0 and "formatted" in result.stderr


@pytest.mark.parametrize("make_foreign, what", [
    (lambda dev, tmp: sh("mkfs.ext4", "-q", "-F", dev), "ext4"),
    (lambda dev, tmp: sh("mkfs.xfs", "-q", "-f", "-L", "scratch", dev), "xfs (label scratch)"),
    (lambda dev, tmp: subprocess.run(["sfdisk", "-q", dev], input="label: gpt\n,\n", text=True, check=True,
                                     capture_output=True), "partition"),
])
def test_refuses_a_disk_holding_foreign_data_and_leaves_it_intact(rig, tmp_path, make_foreign, what):
    make_foreign(rig["device"], tmp_path)
    before = sh("blkid", "-p", rig["device"], check=False).stdout
    result = run_script(rig)
    assert result.returncode == 1
    assert "refusing to touch disks holding data this tool did not create" in result.stderr
    assert what in result.stderr
    assert sh("blkid", "-p", rig["device"], check=False).stdout == before
    assert sh("mountpoint", "-q", str(rig["mount"]), check=False).returncode != 0


def test_a_file_on_a_foreign_filesystem_survives(rig, tmp_path):
    sh("mkfs.ext4", "-q", "-F", rig["device"])
    other = tmp_path / "other"
    other.mkdir()
    sh("mount", rig["device"], str(other))
    (other / "precious.txt").write_text("customer data")
    sh("umount", str(other))
    assert run_script(rig).returncode == 1
    sh("mount", "-o", "ro", rig["device"], str(other))
    try:
        assert (other / "precious.txt").read_text() == "customer data"
    finally:
        sh("umount", str(other))


def test_force_overwrites_only_the_listed_device(rig):
    sh("mkfs.ext4", "-q", "-F", rig["device"])
    result = run_script(rig, GPUINFRA_RAID_FORCE=rig["device"])
    assert result.returncode == 0 and "overwriting because it is in GPUINFRA_RAID_FORCE" in result.stderr
    assert sh("blkid", "-p", "-s", "TYPE", "-o", "value", rig["device"]).stdout.strip() == "xfs"


def test_no_devices_is_a_clean_no_op(tmp_path):
    script = Path(tmp_path / "s.sh")
    script.write_text(asset("instance-store-raid.sh"))
    env = {"PATH": os.environ["PATH"], "GPUINFRA_RAID_MODEL": "No Such Model", "GPUINFRA_RAID_MOUNT": str(tmp_path)}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0 and "nothing to do" in result.stderr
