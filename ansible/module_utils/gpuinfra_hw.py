"""The host's real hardware and operating system, read-only: the gather behind the gpuinfra_hw_facts module and
its action plugin (which sends this file to the host's Python as a plain program over the pipelined connection,
without Ansible's module wrapper, as it does for the state probe). Standard library only.

GPUs come from `nvidia-smi --query-gpu=... --format=csv,noheader,nounits`; CPU, RAM, NVMe, RDMA, HugePages,
memlock, kernel and Fabric Manager from /proc, /sys and systemctl; the operating system from /etc/os-release.
The parsers are plain functions so the test suite checks them against output recorded on real GPU machines.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess

ARGUMENT_SPEC: dict = {
    # The instance-store NVMe model (the contract's gpuinfra_constants.instance_store_model).
    "nvme_model": {"type": "str", "required": True},
}

GPU_FIELDS = ("index", "name", "memory.total", "driver_version", "compute_cap", "ecc.mode.current",
              "mig.mode.current", "pci.bus_id", "persistence_mode", "retired_pages.pending",
              "clocks.max.sm", "power.limit", "temperature.gpu")


def parse_gpu_csv(text: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=<GPU_FIELDS> --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) != len(GPU_FIELDS):
            continue
        row = dict(zip(GPU_FIELDS, values, strict=True))
        gpus.append({
            "index": int(row["index"]),
            "name": row["name"],
            "memory_mib": _int(row["memory.total"]),
            "memory_gib": round(_int(row["memory.total"]) / 1024, 2) if _int(row["memory.total"]) else None,
            "driver_version": row["driver_version"],
            "compute_capability": row["compute_cap"],
            "ecc_enabled": row["ecc.mode.current"] == "Enabled",
            "ecc_mode": row["ecc.mode.current"],
            "mig_enabled": row["mig.mode.current"] == "Enabled",
            "pci_bus_id": row["pci.bus_id"],
            "persistence_mode": row["persistence_mode"] == "Enabled",
            "retired_pages_pending": row["retired_pages.pending"] not in ("No", "[N/A]", "N/A", ""),
            "max_sm_clock_mhz": _int(row["clocks.max.sm"]),
            "power_limit_w": _float(row["power.limit"]),
            "temperature_c": _int(row["temperature.gpu"]),
        })
    return gpus


def parse_remapped_rows(text: str) -> dict[str, dict]:
    """`nvidia-smi --query-remapped-rows=gpu_bus_id,remapped_rows.pending,remapped_rows.failure
    --format=csv,noheader`: per bus id, whether a row remap is pending or has failed."""
    rows = {}
    for line in text.strip().splitlines():
        values = [v.strip() for v in line.split(",")]
        if len(values) == 3:
            rows[values[0]] = {"pending": values[1].lower() in ("yes", "1", "true"),
                               "failure": values[2].lower() in ("yes", "1", "true")}
    return rows


def parse_meminfo(text: str) -> dict:
    values = {}
    for line in text.splitlines():
        match = re.match(r"^(\w+):\s+(\d+)", line)
        if match:
            values[match.group(1)] = int(match.group(2))
    return {
        "ram_gib": round(values.get("MemTotal", 0) / 2**20, 1),
        "hugepages_total": values.get("HugePages_Total", 0),
        "hugepage_size_kib": values.get("Hugepagesize", 0),
    }


def xid_events(kernel_log: str) -> list[str]:
    return [line.strip() for line in kernel_log.splitlines() if "NVRM: Xid" in line]


def _int(value: str) -> int | None:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _float(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _run(argv: list[str]) -> tuple[int, str]:
    if not shutil.which(argv[0]):
        return 127, ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 1, ""
    return done.returncode, done.stdout


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return ""


def nvme_devices(model: str) -> list[dict]:
    devices = []
    base = "/sys/block"
    for name in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if not re.match(r"^nvme\d+n\d+$", name):
            continue
        found = _read(f"{base}/{name}/device/model").strip()
        sectors = _read(f"{base}/{name}/size").strip()
        devices.append({"device": f"/dev/{name}", "model": found, "instance_store": found == model,
                        "size_gb": round(int(sectors) * 512 / 1e9, 1) if sectors.isdigit() else None})
    return devices


def rdma_devices() -> list[str]:
    base = "/sys/class/infiniband"
    return sorted(os.listdir(base)) if os.path.isdir(base) else []


NVIDIA_VENDOR = "0x10de"


def classify_pci(devices: list[tuple[str, str]]) -> dict:
    """(vendor, class) pairs from sysfs -> NVIDIA GPUs and NVSwitches, visible before any driver is loaded."""
    gpus = sum(1 for vendor, cls in devices if vendor == NVIDIA_VENDOR and cls[:6] in ("0x0300", "0x0302"))
    switches = sum(1 for vendor, cls in devices if vendor == NVIDIA_VENDOR and cls[:6] == "0x0680")
    return {"pci_gpu_count": gpus, "pci_nvswitch_count": switches}


def pci_devices() -> list[tuple[str, str]]:
    base = "/sys/bus/pci/devices"
    names = sorted(os.listdir(base)) if os.path.isdir(base) else []
    return [(_read(f"{base}/{n}/vendor").strip(), _read(f"{base}/{n}/class").strip()) for n in names]


def parse_cpulist(text: str) -> int:
    count = 0
    for part in filter(None, text.strip().split(",")):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def numa_nodes() -> list[dict]:
    base = "/sys/devices/system/node"
    names = sorted(n for n in os.listdir(base) if re.match(r"^node\d+$", n)) if os.path.isdir(base) else []
    return [{"node": int(n[4:]), "cpus": parse_cpulist(_read(f"{base}/{n}/cpulist"))} for n in names]


def container_kind() -> str:
    """systemd's answer to "am I in a container" (nspawn, docker, lxc, ...), or "" on a VM or metal."""
    return _read("/run/systemd/container").strip()


def fabric_manager_state() -> str:
    if not os.path.isdir("/run/systemd/system"):
        return "no-systemd"
    _, out = _run(["systemctl", "is-active", "nvidia-fabricmanager"])
    return out.strip() or "unknown"


def gather(nvme_model: str) -> dict:
    rc, out = _run(["nvidia-smi", f"--query-gpu={','.join(GPU_FIELDS)}", "--format=csv,noheader,nounits"])
    gpus = parse_gpu_csv(out) if rc == 0 else []
    _, remap = _run(["nvidia-smi", "--query-remapped-rows=gpu_bus_id,remapped_rows.pending,remapped_rows.failure",
                     "--format=csv,noheader"])
    remapped = parse_remapped_rows(remap)
    for gpu in gpus:
        state = remapped.get(gpu["pci_bus_id"], {})
        gpu["remapped_rows_pending"] = state.get("pending", False)
        gpu["remapped_rows_failure"] = state.get("failure", False)
    _, kernel_log = _run(["dmesg", "--level=err,warn"])
    memlock = resource.getrlimit(resource.RLIMIT_MEMLOCK)[0]
    facts = {
        "nvidia_smi": rc == 0,
        "gpu_count": len(gpus),
        "gpus": gpus,
        "gpu_name": gpus[0]["name"] if gpus else None,
        "gpu_memory_gib": min((g["memory_gib"] for g in gpus if g["memory_gib"]), default=None),
        "driver_version": gpus[0]["driver_version"] if gpus else None,
        "cpu_count": os.cpu_count(),
        "nvme": nvme_devices(nvme_model),
        "rdma_devices": rdma_devices(),
        "kernel": os.uname().release,
        "fabric_manager": fabric_manager_state(),
        "xid_events": xid_events(kernel_log),
        "memlock_unlimited": memlock == resource.RLIM_INFINITY,
        **classify_pci(pci_devices()),
        "numa_nodes": numa_nodes(),
        "cpu_governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor").strip() or None,
        "container": container_kind(),
        "nr_hugepages": _int(_read("/proc/sys/vm/nr_hugepages").strip()),
        **parse_meminfo(_read("/proc/meminfo")),
    }
    facts["nvme_instance_store"] = [d["device"] for d in facts["nvme"] if d["instance_store"]]
    return facts


# /etc/os-release's ID -> the name Ansible's setup module gives the distribution (ansible_distribution), and the
# family it files it under (ansible_os_family), for the systems GPU hosts run; another ID keeps os-release's NAME.
DISTRIBUTION_NAMES = {"ubuntu": "Ubuntu", "debian": "Debian", "rhel": "RedHat", "rocky": "Rocky",
                      "almalinux": "AlmaLinux", "centos": "CentOS", "fedora": "Fedora", "amzn": "Amazon",
                      "sles": "SLES", "opensuse-leap": "openSUSE Leap"}
OS_FAMILIES = {"debian": "Debian", "ubuntu": "Debian", "rhel": "RedHat", "centos": "RedHat", "fedora": "RedHat",
               "rocky": "RedHat", "almalinux": "RedHat", "amzn": "RedHat", "sles": "Suse", "suse": "Suse",
               "opensuse-leap": "Suse"}


def parse_os_release(text: str) -> dict[str, str]:
    """`KEY=value` lines of os-release(5), quotes removed."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key and not key.startswith("#"):
            values[key] = value.strip().strip("\"'")
    return values


def os_facts(os_release: str, debian_version: str, kernel: str, machine: str) -> dict:
    """The facts of Ansible's setup module that the roles read (ansible_distribution*, ansible_os_family,
    ansible_kernel, ...), with setup's names and meaning, from what the host's files say; empty when os-release
    names no system (then setup gathers them: the fallback in preflight)."""
    release = parse_os_release(os_release)
    ident = release.get("ID", "").lower()
    if not ident:
        return {}
    version = release.get("VERSION_ID", "")
    if ident == "debian" and debian_version[:1].isdigit():
        version = debian_version.strip()  # setup's Debian version is the point release (12.11), not "12"
    like = release.get("ID_LIKE", "").lower().split()
    family = OS_FAMILIES.get(ident) or next((OS_FAMILIES[i] for i in like if i in OS_FAMILIES), None)
    name = DISTRIBUTION_NAMES.get(ident, release.get("NAME", ident))
    return {"distribution": name, "distribution_version": version,
            "distribution_major_version": version.split(".")[0] if version else "",
            "distribution_release": release.get("VERSION_CODENAME") or release.get("UBUNTU_CODENAME", ""),
            "os_family": family or name, "kernel": kernel, "architecture": machine, "system": "Linux"}


def answer(params: dict) -> dict:
    """The module's answer: `gpuinfra_hardware`, and the operating system's facts under setup's names."""
    uname = os.uname()
    system = os_facts(_read("/etc/os-release") or _read("/usr/lib/os-release"), _read("/etc/debian_version"),
                      uname.release, uname.machine)
    # Prefixed as setup returns them: a module's facts become variables under the names it gives them.
    return {"changed": False, "ansible_facts": {"gpuinfra_hardware": gather(params["nvme_model"]),
                                                **{f"ansible_{name}": value for name, value in system.items()}}}
