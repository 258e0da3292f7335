"""A QEMU guest under software emulation (TCG) with four emulated NVMe drives: a real kernel for mdadm RAID0,
XFS, mounts, HugePages applied live and reboots, which this build machine's kernel cannot offer.

The guest is reached over SSH on a loopback port (user-mode networking with restrict=on: no route out).
A stop/start of an EC2 instance is played by powering the guest off and replacing the NVMe backing files
with empty ones. Everything started is stopped by PID; the overlay and drive files are removed.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.rigs.common import CACHE, MIRROR, SUITE, RigError, build_once, fingerprint, scratch_dir, sh
from tests.rigs.nspawn import BASE_PACKAGES, base_rootfs

GUEST_PACKAGES = ("linux-image-amd64", "initramfs-tools", "mdadm", "xfsprogs", "systemd-resolved", "e2fsprogs")
NVME_MODEL = "QEMU NVMe Ctrl"
REQUIRED_TOOLS = ("qemu-system-x86_64", "qemu-img", "mkfs.ext4", "debugfs", "ssh")


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]


def guest_image() -> Path:
    """Debian with a kernel, mdadm and XFS tools in a raw ext4 image, plus its kernel, initrd and SSH key."""
    directory = CACHE / f"qemu-{SUITE}-{fingerprint(*BASE_PACKAGES, *GUEST_PACKAGES, MIRROR, 'qemu-v1')}"

    def populate(out: Path) -> None:
        root = out / "root"
        sh("cp", "-a", f"{base_rootfs()}/.", root)
        sh("cp", "/etc/resolv.conf", root / "etc/resolv.conf")
        (root / "etc/apt/sources.list").write_text(f"deb {MIRROR} {SUITE} main\n")
        try:
            sh("chroot", root, "apt-get", "update", "-qq", timeout=600)
            sh("chroot", root, "env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-qq",
               "--no-install-recommends", *GUEST_PACKAGES, timeout=1800)
        finally:
            sh("chroot", root, "apt-get", "clean", check=False)
            (root / "etc/apt/sources.list").write_text("")
            sh("rm", "-rf", root / "var/lib/apt/lists", check=False)
            (root / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        (root / "etc/hostname").write_text("qemu-nvme\n")
        (root / "etc/hosts").write_text("127.0.0.1 localhost\n127.0.1.1 qemu-nvme\n")
        (root / "etc/fstab").write_text("/dev/vda / ext4 defaults 0 1\n")
        (root / "etc/systemd/network/20-wired.network").write_text(
            "[Match]\nName=en* eth*\n\n[Network]\nAddress=10.0.2.15/24\nGateway=10.0.2.2\n")
        sh("chroot", root, "systemctl", "enable", "systemd-networkd", check=False)
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", out / "id_ed25519")
        ssh_dir = root / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(out / "id_ed25519.pub", ssh_dir / "authorized_keys")
        kernel = sorted((root / "boot").glob("vmlinuz-*"))[-1]
        initrd = sorted((root / "boot").glob("initrd.img-*"))[-1]
        shutil.copy(kernel, out / "vmlinuz")
        shutil.copy(initrd, out / "initrd.img")
        sh("mkfs.ext4", "-q", "-L", "guestroot", "-d", root, out / "root.img", "3G", timeout=900)
        sh("rm", "-rf", "--one-file-system", root)

    return build_once(directory, populate)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class QemuGuest:
    """One guest with `drives` emulated NVMe drives of `drive_mib` MiB each."""

    drives: int = 4
    drive_mib: int = 256
    memory_mib: int = 3072
    workdir: Path | None = None
    port: int = 0
    process: subprocess.Popen | None = None
    boots: list[float] = field(default_factory=list)

    @property
    def image(self) -> Path:
        return guest_image()

    @property
    def ssh_key(self) -> Path:
        return self.image / "id_ed25519"

    def drive(self, index: int) -> Path:
        assert self.workdir
        return self.workdir / f"nvme{index}.img"

    def __enter__(self) -> QemuGuest:
        try:
            self.workdir = scratch_dir("qemu-")
            sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", self.image / "root.img", "-F", "raw",
               self.workdir / "root.qcow2")
            self.wipe_drives()
            self.boot()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wipe_drives(self) -> None:
        """Empty backing files: what instance-store disks look like after a stop/start."""
        for index in range(self.drives):
            path = self.drive(index)
            path.unlink(missing_ok=True)
            with path.open("wb") as handle:
                handle.truncate(self.drive_mib * 2**20)

    def boot(self, timeout: float = 420) -> None:
        assert self.workdir and self.process is None
        self.port = free_port()
        argv = ["qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-m", str(self.memory_mib),
                "-smp", "2", "-kernel", str(self.image / "vmlinuz"), "-initrd", str(self.image / "initrd.img"),
                "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 systemd.show_status=0",
                "-drive", f"file={self.workdir / 'root.qcow2'},if=virtio,format=qcow2",
                "-netdev", f"user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:{self.port}-:22",
                "-device", "virtio-net-pci,netdev=net0", "-display", "none", "-monitor", "none",
                "-serial", f"file:{self.workdir / 'console.log'}", "-no-reboot"]
        for index in range(self.drives):
            argv += ["-drive", f"file={self.drive(index)},if=none,id=nvme{index},format=raw",
                     "-device", f"nvme,serial=gpuinfra{index:04d},drive=nvme{index}"]
        started = time.monotonic()
        self.process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=(self.workdir / "qemu.stderr").open("wb"), start_new_session=True)
        deadline = started + timeout
        while True:
            if self.process.poll() is not None:
                raise RigError(f"qemu exited {self.process.returncode}: {self.console()[-3000:]}")
            if self.ssh("systemctl", "is-system-running", "--wait", check=False, timeout=60).returncode in (0, 1):
                break
            if time.monotonic() > deadline:
                raise RigError(f"guest did not answer SSH in {timeout:.0f}s: {self.console()[-3000:]}")
            time.sleep(2)
        self.boots.append(time.monotonic() - started)

    def ssh_argv(self, *command: str) -> list[str]:
        return ["ssh", "-i", str(self.ssh_key), "-p", str(self.port), "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                "-o", "BatchMode=yes", "root@127.0.0.1", *command]

    def ssh(self, *command: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return sh(*self.ssh_argv(*command), check=check, timeout=timeout)

    def console(self) -> str:
        path = self.workdir / "console.log" if self.workdir else None
        return path.read_text(errors="replace") if path and path.exists() else ""

    def power_off(self, timeout: float = 180) -> None:
        """A clean shutdown (-no-reboot makes QEMU exit when the guest powers off or reboots)."""
        if self.process is None:
            return
        self.ssh("systemctl", "poweroff", check=False, timeout=30)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None

    def reboot(self, *, wipe_drives: bool = False) -> None:
        self.power_off()
        if wipe_drives:
            self.wipe_drives()
        self.boot()

    def inventory(self, path: Path, group_vars: dict) -> Path:
        import yaml

        host = {"ansible_host": "127.0.0.1", "ansible_port": self.port, "ansible_user": "root",
                "ansible_ssh_private_key_file": str(self.ssh_key),
                "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                "ansible_python_interpreter": "/usr/bin/python3"}
        path.write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {
            "hosts": {"qemu-nvme": host}, "vars": group_vars}}}}, sort_keys=False))
        return path

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        self.process = None
        if self.workdir and self.workdir.exists():
            sh("rm", "-rf", "--one-file-system", self.workdir, check=False)
