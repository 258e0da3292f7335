"""systemd-nspawn hosts with real systemd and sshd, each in its own network namespace, joined by a bridge
that lives in a namespace of its own (the machine's own network is never touched). Ansible runs inside the
bridge namespace and reaches the hosts over SSH, exactly as it reaches servers.

Everything `NspawnHosts` starts it stops: the containers by PID, then overlays, namespaces and files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.rigs.common import CACHE, MIRROR, SUITE, RigError, build_once, fingerprint, scratch_dir, sh
from tests.rigs.standin_repo import StandinRepos

BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "python3-apt", "sudo",
                 "iproute2", "kmod", "udev", "procps")
REPO_MOUNT = "/srv/gpuinfra-standin"
REQUIRED_TOOLS = ("debootstrap", "systemd-nspawn", "ssh", "ssh-keygen", "ip", "apt-ftparchive", "gpg", "dpkg-deb")


VOLATILE = ("var/log/", "var/cache/", "var/lib/apt/", "var/lib/systemd/", "var/tmp/", "tmp/", "root/.ansible",
            "root/.ssh", "etc/machine-id", "var/lib/dbus", "var/lib/private", "etc/ld.so.cache")


def written_files(host: Host) -> set[str]:
    """Every path the host has written since it booted (its overlay's upper layer), less logs and caches."""
    upper = host.merged.parent / "upper"
    return {str(p.relative_to(upper)) for p in upper.rglob("*")
            if not str(p.relative_to(upper)).startswith(VOLATILE)}


def missing_tools() -> list[str]:
    return [tool for tool in REQUIRED_TOOLS if not shutil.which(tool)]


def base_rootfs() -> Path:
    """A minimal Debian with systemd and sshd (cached; about a minute to build)."""
    directory = CACHE / f"rootfs-{SUITE}-{fingerprint(*BASE_PACKAGES, MIRROR, 'rootfs-v1')}"

    def populate(root: Path) -> None:
        sh("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE, root, MIRROR,
           timeout=1200)
        (root / "etc/apt/sources.list").write_text("")
        sh("chroot", root, "apt-get", "clean")
        # The hosts are reached by root over SSH with a key; sshd must not wait for DNS.
        (root / "etc/ssh/sshd_config.d/gpuinfra-test.conf").write_text(
            "PermitRootLogin prohibit-password\nUseDNS no\n")
        for unit in ("systemd-timesyncd.service", "apt-daily.timer", "apt-daily-upgrade.timer"):
            sh("chroot", root, "systemctl", "mask", unit, check=False)

    return build_once(directory, populate)


@dataclass
class Host:
    name: str
    address: str
    namespace: str
    merged: Path
    process: subprocess.Popen | None = None


def run_prefix(kind: str = "gpi") -> str:
    """A name prefix of its own for one rig: its namespaces and machine names cannot meet another run's, so two
    `make test` (or a test run and the benchmark) on one machine do not collide. Starts with "gpi" for cleanup."""
    return f"{kind}{secrets.token_hex(2)}"


@dataclass
class NspawnHosts:
    """`count` booted hosts named h1..hN on 10.77.0.0/24, reachable with `ssh_key` as root. Each rig has its own
    name prefix (namespaces, machine names) and its own SSH ControlPath directory (every rig answers on the same
    addresses, and Ansible's default ControlPath is keyed by address, user and port only)."""

    repos: StandinRepos
    count: int = 3
    prefix: str = field(default_factory=run_prefix)
    hosts: list[Host] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def bridge_namespace(self) -> str:
        return f"{self.prefix}-br"

    @property
    def ssh_key(self) -> Path:
        assert self.workdir
        return self.workdir / "id_ed25519"

    def netns_exec(self, *argv: str | os.PathLike) -> list[str]:
        return ["ip", "netns", "exec", self.bridge_namespace, *map(str, argv)]

    def __enter__(self) -> NspawnHosts:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        rootfs = base_rootfs()
        self.workdir = scratch_dir("nspawn-")
        self.control_path_dir.mkdir()
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.ssh_key)
        br = self.bridge_namespace
        sh("ip", "netns", "add", br)
        sh("ip", "-n", br, "link", "set", "lo", "up")
        sh("ip", "-n", br, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", br, "addr", "add", "10.77.0.1/24", "dev", "br0")
        sh("ip", "-n", br, "link", "set", "br0", "up")
        for index in range(1, self.count + 1):
            self.hosts.append(self._prepare(rootfs, index))
        for host in self.hosts:
            host.process = subprocess.Popen(
                ["systemd-nspawn", "-D", str(host.merged), "--boot", f"--machine={self.prefix}-{host.name}",
                 f"--hostname={host.name}", "--register=no", "--keep-unit",
                 f"--network-namespace-path=/run/netns/{host.namespace}", "--console=pipe",
                 f"--bind-ro={self.repos.root}:{REPO_MOUNT}"],
                stdin=subprocess.DEVNULL, stdout=(self.workdir / f"{host.name}.console").open("wb"),
                stderr=subprocess.STDOUT, start_new_session=True)
        self.wait_for_ssh()
        # Like a cloud image's first boot: the package index is current (here: the stand-in mirror's).
        for host in self.hosts:
            self.ssh(host, "apt-get", "update", "-qq")

    def _prepare(self, rootfs: Path, index: int) -> Host:
        assert self.workdir
        name = f"h{index}"
        host = Host(name, f"10.77.0.{10 + index}", f"{self.prefix}-{name}", self.workdir / name / "merged")
        upper, work = self.workdir / name / "upper", self.workdir / name / "work"
        for path in (upper, work, host.merged):
            path.mkdir(parents=True)
        sh("mount", "-t", "overlay", "overlay", "-o", f"lowerdir={rootfs},upperdir={upper},workdir={work}",
           host.merged)
        ssh_dir = host.merged / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        shutil.copy(self.ssh_key.with_suffix(".pub"), ssh_dir / "authorized_keys")
        (host.merged / "etc/hostname").write_text(name + "\n")
        (host.merged / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {name}\n")
        key = f"{REPO_MOUNT}/debian/standin-key.asc"
        (host.merged / "etc/apt/sources.list.d/standin-debian.sources").write_text(
            "# STAND-IN for deb.debian.org: a local mirror of the packages the roles install (tests/rigs)\n"
            f"Types: deb\nURIs: file:{REPO_MOUNT}/debian\nSuites: ./\nSigned-By: {key}\n")
        sh("ip", "netns", "add", host.namespace)
        sh("ip", "-n", self.bridge_namespace, "link", "add", f"v{name}", "type", "veth", "peer", "name", "eth0",
           "netns", host.namespace)
        sh("ip", "-n", self.bridge_namespace, "link", "set", f"v{name}", "master", "br0", "up")
        sh("ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        sh("ip", "-n", host.namespace, "link", "set", "eth0", "up")
        sh("ip", "-n", host.namespace, "link", "set", "lo", "up")
        return host

    @property
    def control_path_dir(self) -> Path:
        assert self.workdir
        return self.workdir / "cp"

    def close_connections(self) -> None:
        """End the multiplexed SSH connections Ansible left open (ControlPersist): the next run connects afresh,
        as an operator's does minutes after the last."""
        for socket in sorted(self.control_path_dir.iterdir()):
            sh("ssh", "-S", str(socket), "-O", "exit", "gpuinfra-rig", check=False, timeout=30)

    def ssh_argv(self, host: Host, *command: str) -> list[str]:
        return self.netns_exec("ssh", "-i", self.ssh_key, "-o", "StrictHostKeyChecking=no", "-o",
                               "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3",
                               "-o", "BatchMode=yes", f"root@{host.address}", *command)

    def ssh(self, host: Host, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh(*self.ssh_argv(host, *command), check=check, timeout=300)

    def wait_for_ssh(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            while True:
                if host.process and host.process.poll() is not None:
                    raise RigError(f"{host.name} exited {host.process.returncode}: {self.console(host)[-2000:]}")
                if self.ssh(host, "systemctl", "is-system-running", "--wait", check=False).returncode in (0, 1):
                    break
                if time.monotonic() > deadline:
                    raise RigError(f"{host.name} did not answer SSH in {timeout:.0f}s: {self.console(host)[-2000:]}")
                time.sleep(1)

    def console(self, host: Host) -> str:
        assert self.workdir
        path = self.workdir / f"{host.name}.console"
        return path.read_text(errors="replace") if path.exists() else ""

    def inventory(self, path: Path, group_vars: dict, host_vars: dict[str, dict] | None = None) -> Path:
        import yaml

        hosts = {h.name: {"ansible_host": h.address, **(host_vars or {}).get(h.name, {})} for h in self.hosts}
        document = {"all": {
            "vars": {"ansible_user": "root", "ansible_ssh_private_key_file": str(self.ssh_key),
                     "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
                     # This rig's own multiplexed connections (see the class docstring).
                     "ansible_control_path_dir": str(self.control_path_dir),
                     "ansible_python_interpreter": "/usr/bin/python3"},
            "children": {"gpu_nodes": {"hosts": hosts, "vars": group_vars}}}}
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def stop(self) -> None:
        for host in self.hosts:
            if host.process and host.process.poll() is None:
                os.kill(host.process.pid, signal.SIGTERM)  # nspawn turns this into an orderly poweroff
        for host in self.hosts:
            if host.process:
                try:
                    host.process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(host.process.pid, signal.SIGKILL)
                    host.process.wait(timeout=30)
        for host in self.hosts:
            if host.merged.exists():
                sh("umount", "--lazy", host.merged, check=False)
            sh("ip", "netns", "delete", host.namespace, check=False)
        sh("ip", "netns", "delete", self.bridge_namespace, check=False)
        if self.workdir and self.workdir.exists():
            sh("rm", "-rf", "--one-file-system", self.workdir, check=False)
        self.hosts.clear()
