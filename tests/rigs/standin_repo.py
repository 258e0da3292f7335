"""STAND-IN package sources for the test hosts, which have no internet.

- `debian/`: a local mirror of exactly the Debian packages the roles install (downloaded here with apt from
  the real Debian mirror, dependencies included) standing in for deb.debian.org.
- `nvidia/<distribution>/x86_64/`: a flat repository with the same layout, package names and versions as
  NVIDIA's CUDA repository (driver, Fabric Manager, CUDA, NCCL, cuDNN, container toolkit). Its packages are
  empty stand-ins built here: they install nothing but a marker, so the roles' repository, pinning, hold and
  version logic runs for real while no kernel module is loaded.
- `efa/`: a stand-in EFA installer tarball (the real one is fetched from efa-installer.amazonaws.com).
- `wheels/`: a pip find-links directory standing in for PyPI, holding the stand-in `vllm` wheel at the
  catalog's pinned version (tests/rigs/standin_engine.py).

Both repositories are signed with a throwaway key made for the test; the roles verify it by fingerprint,
exactly as they verify NVIDIA's key.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.rigs import standin_engine
from tests.rigs.common import CACHE, MIRROR, SUITE, RigError, build_once, fingerprint, scratch_dir, sh

STANDIN_MARK = "gpuinfra test STAND-IN package: installs no driver, library or binary"

# What the roles install from the distribution on a Debian 12 host.
DEBIAN_PACKAGES = (
    "gnupg", "mdadm", "xfsprogs", "pciutils", "numactl", "rdma-core", "ibverbs-providers", "ibverbs-utils",
    "infiniband-diags", "containerd", "ca-certificates", "python3-debian", "python3-venv", "python3-packaging",
    "prometheus-node-exporter", "prometheus",
)


@dataclass(frozen=True)
class StandinRepos:
    root: Path
    key_fingerprint: str
    nvidia_distribution: str

    def nvidia_url(self, mount: str) -> str:
        return f"file://{mount}/nvidia/{{distribution}}/x86_64/"

    def efa_tarball(self) -> Path:
        return self.root / "efa" / "aws-efa-installer-standin.tar.gz"

    def efa_sha256(self) -> str:
        return (self.root / "efa" / "aws-efa-installer-standin.tar.gz.sha256").read_text().split()[0]


def _gpg(home: Path, *args: str, **kwargs):
    return sh("gpg", "--homedir", home, "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "",
              *args, **kwargs)


def _signing_key(home: Path) -> str:
    home.mkdir(mode=0o700)
    _gpg(home, "--quick-gen-key", "gpuinfra test stand-in repository <standin@gpuinfra.invalid>", "rsa3072",
         "sign", "never")
    listing = _gpg(home, "--with-colons", "--list-keys").stdout
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def _finalize(home: Path, directory: Path, label: str) -> None:
    """Packages, Release and InRelease for a flat repository (`deb URL /`), like NVIDIA's."""
    packages = sh("apt-ftparchive", "packages", ".", cwd=directory).stdout
    (directory / "Packages").write_text(packages)
    release = sh("apt-ftparchive", "-o", f"APT::FTPArchive::Release::Origin={label}",
                 "-o", f"APT::FTPArchive::Release::Label={label}", "release", ".", cwd=directory).stdout
    (directory / "Release").write_text(release)
    _gpg(home, "--clearsign", "-o", str(directory / "InRelease"), str(directory / "Release"))


def _debian_packages(rootfs: Path, target: Path) -> None:
    """Resolve and download what DEBIAN_PACKAGES need on top of the base rootfs, from the real mirror."""
    archives = rootfs / "var/cache/apt/archives"
    sh("cp", "/etc/resolv.conf", rootfs / "etc/resolv.conf")
    (rootfs / "etc/apt/sources.list").write_text(f"deb {MIRROR} {SUITE} main\n")
    try:
        sh("chroot", rootfs, "apt-get", "update", "-qq", timeout=600)
        sh("chroot", rootfs, "apt-get", "install", "-y", "-qq", "--download-only", "--no-install-recommends",
           *DEBIAN_PACKAGES, timeout=900)
        for deb in archives.glob("*.deb"):
            sh("mv", deb, target / deb.name)
    finally:
        sh("chroot", rootfs, "apt-get", "clean", check=False)
        sh("rm", "-rf", rootfs / "var/lib/apt/lists", check=False)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)


def _deb(target: Path, name: str, version: str, *, depends: str = "", files: dict[str, str] | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "DEBIAN").mkdir()
        control = [f"Package: {name}", f"Version: {version}", "Architecture: amd64",
                   "Maintainer: gpuinfra tests <standin@gpuinfra.invalid>", f"Description: {STANDIN_MARK}"]
        if depends:
            control.insert(3, f"Depends: {depends}")
        (root / "DEBIAN" / "control").write_text("\n".join(control) + "\n")
        marker = root / "usr/share/doc" / name / "STANDIN"
        marker.parent.mkdir(parents=True)
        marker.write_text(STANDIN_MARK + "\n")
        for path, content in (files or {}).items():
            dest = root / path.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(content)
        sh("dpkg-deb", "--root-owner-group", "--build", root, target / f"{name}_{version}_amd64.deb")


def nvidia_packages(software: dict, target: Path) -> None:
    """The package names and versions the roles ask NVIDIA's repository for, as empty stand-ins."""
    driver = software["nvidia_driver"]
    branch, version = driver["branch"], driver["version"]
    cuda = software["cuda"]["version"]
    cuda_dash = cuda.replace(".", "-")
    full = f"{version}-1"
    _deb(target, f"nvidia-open-{branch}", full)
    _deb(target, f"cuda-drivers-{branch}", full)
    _deb(target, f"nvidia-fabricmanager-{branch}", full, files={
        "/usr/lib/systemd/system/nvidia-fabricmanager.service":
            "[Unit]\nDescription=STAND-IN nvidia-fabricmanager\n[Service]\nExecStart=/bin/true\n"})
    # An older and a newer build on the same branch: the pins must keep both away.
    major, minor, *_ = version.split(".")
    _deb(target, f"nvidia-open-{branch}", f"{major}.{int(minor) - 1}.01-1")
    _deb(target, f"nvidia-fabricmanager-{branch}", f"{major}.{int(minor) + 1}.01-1")
    _deb(target, f"cuda-toolkit-{cuda_dash}", f"{cuda}.1-1")
    nccl = software["cuda"]["nccl"]
    _deb(target, "libnccl2", f"{nccl}-1+cuda{cuda}")
    _deb(target, "libnccl-dev", f"{nccl}-1+cuda{cuda}", depends=f"libnccl2 (= {nccl}-1+cuda{cuda})")
    cudnn_major = software["cuda"]["cudnn"].split(".")[0]
    _deb(target, f"cudnn{cudnn_major}-cuda-{cuda.split('.')[0]}", f"{software['cuda']['cudnn']}-1")
    toolkit = software["nvidia_container_toolkit"]["version"]
    _deb(target, "nvidia-container-toolkit-base", f"{toolkit}-1")
    _deb(target, "nvidia-container-toolkit", f"{toolkit}-1", depends=f"nvidia-container-toolkit-base (= {toolkit}-1)")


EFA_STANDIN_INSTALLER = """#!/bin/bash
# STAND-IN for AWS's efa_installer.sh: records what the real installer records, installs nothing.
set -euo pipefail
mkdir -p /opt/amazon/efa/bin /opt/amazon/aws-ofi-nccl/lib /opt/amazon/efa/lib
printf '# EFA installer version: %s\\n# STAND-IN\\n' "{version}" > /opt/amazon/efa_installed_packages
printf '#!/bin/sh\\n# STAND-IN fi_info: no EFA device on a test host\\nexit 61\\n' > /opt/amazon/efa/bin/fi_info
chmod 0755 /opt/amazon/efa/bin/fi_info
: > /opt/amazon/aws-ofi-nccl/lib/libnccl-net-ofi.so
echo "STAND-IN EFA installer $@"
"""


def efa_tarball(version: str, target: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = EFA_STANDIN_INSTALLER.replace("{version}", version).encode()
        info = tarfile.TarInfo("aws-efa-installer/efa_installer.sh")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        archive.addfile(info, io.BytesIO(data))
    path = target / "aws-efa-installer-standin.tar.gz"
    path.write_bytes(buffer.getvalue())
    digest = sh("sha256sum", path).stdout.split()[0]
    (target / (path.name + ".sha256")).write_text(f"{digest}  {path.name}\n")


def build(base_rootfs: Path, software: dict, distribution: str = "debian12") -> StandinRepos:
    key = fingerprint(json.dumps(software, sort_keys=True), " ".join(DEBIAN_PACKAGES), SUITE, MIRROR, "repo-v3",
                      Path(standin_engine.__file__).read_text())
    directory = CACHE / f"standin-repo-{key}"

    def populate(root: Path) -> None:
        home = root / "gnupg"
        key_fingerprint = _signing_key(home)
        (root / "fingerprint").write_text(key_fingerprint)
        public_key = _gpg(home, "--armor", "--export", key_fingerprint).stdout
        debian = root / "debian"
        debian.mkdir()
        work = scratch_dir("standin-work-")
        try:
            sh("cp", "-a", f"{base_rootfs}/.", work)
            _debian_packages(work, debian)
        finally:
            sh("rm", "-rf", "--one-file-system", work)
        if not any(debian.glob("*.deb")):
            raise RigError("no Debian package was downloaded for the stand-in mirror")
        _finalize(home, debian, "gpuinfra-standin-debian")
        (root / "debian" / "standin-key.asc").write_text(public_key)
        nvidia = root / "nvidia" / distribution / "x86_64"
        nvidia.mkdir(parents=True)
        nvidia_packages(software, nvidia)
        _finalize(home, nvidia, "gpuinfra-standin-nvidia")
        (nvidia / software["nvidia_repository"]["key_file"]).write_text(public_key)
        (root / "efa").mkdir()
        efa_tarball(software["efa_installer"]["version"], root / "efa")
        standin_engine.build_wheel(root / "wheels", software["inference_engines"]["vllm"]["version"])
        os.chmod(root, 0o755)

    build_once(directory, populate)
    return StandinRepos(directory, (directory / "fingerprint").read_text().strip(), distribution)
