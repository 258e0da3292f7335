"""The package state a role reads once (module_utils/gpuinfra_dpkg.py, run by the gpuinfra_package_facts module
and its action plugin) and the filters that decide from it whether an apt or dpkg_selections task has anything to
do (filter_plugins/gpuinfra_packages.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ANSIBLE = Path(__file__).resolve().parents[2] / "ansible"


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


facts = load(ANSIBLE / "module_utils" / "gpuinfra_dpkg.py")
filters = load(ANSIBLE / "filter_plugins" / "gpuinfra_packages.py")

DPKG = ("containerd\t1.6.20~ds1-1+b1\tinstall\tinstalled\n"
        "libnccl2\t2.26.2-1+cuda12.8\thold\tinstalled\n"
        "nvidia-open-580\t580.95.05-1\thold\tinstalled\n"
        "rdma-core\t44.0-2\tdeinstall\tconfig-files\n"
        "\n")


def test_only_installed_packages_are_listed_with_version_and_selection():
    packages = facts.parse_dpkg_query(DPKG)
    assert packages == {"containerd": "1.6.20~ds1-1+b1 install", "libnccl2": "2.26.2-1+cuda12.8 hold",
                        "nvidia-open-580": "580.95.05-1 hold"}


def test_apt_requests_are_matched_by_name_and_version_glob():
    packages = facts.parse_dpkg_query(DPKG)
    missing = filters.packages_missing
    assert missing(["containerd", "libnccl2=2.26.2-*+cuda12.8", "nvidia-open-580=580.95.05-*"], packages) == []
    assert missing(["nvidia-open-580=580.105.08-*"], packages) == ["nvidia-open-580=580.105.08-*"]
    assert missing(["libnccl2=2.26.2-*+cuda12.9"], packages) == ["libnccl2=2.26.2-*+cuda12.9"]
    assert missing(["rdma-core", "gnupg"], packages) == ["rdma-core", "gnupg"]


def test_holds_are_read_from_the_selection():
    packages = facts.parse_dpkg_query(DPKG)
    assert filters.packages_not_held(["libnccl2", "containerd", "rdma-core"], packages) == ["containerd", "rdma-core"]
