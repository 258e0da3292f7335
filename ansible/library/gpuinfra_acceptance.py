#!/usr/bin/python
"""Ansible module: accept or reject a node from its facts and measurements (read-only).

Every check becomes {name, status: pass|fail|skip, observed, expected}; thresholds are relative to the
catalog's specs for the GPU (HBM bandwidth, dense BF16 throughput, NVLink) or absolute where the catalog
has no figure (host-to-device). The module fails with every failed figure at once.
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpuinfra_acceptance
short_description: Judge gpuinfra node facts and measurements against the catalog's expectations
options:
  hardware: {description: The gpuinfra_hardware fact., type: dict, required: true}
  expected: {description: Expected hardware (catalog) for the node., type: dict, default: {}}
  measurements: {description: gpu_acceptance.py output, empty when skipped., type: dict, default: {}}
  thresholds: {description: Fractions of spec and absolute floors., type: dict, default: {}}
  min_driver: {description: Lowest acceptable driver version., type: str, default: "0"}
  gpu_memory_tolerance:
    description: >-
      Fraction of the expected GPU memory a GPU must show
      (the contract's gpuinfra_constants.gpu_memory_tolerance).
    type: float
    required: true
  raid_mount: {description: Mount point that must be mounted, empty to skip., type: str, default: ""}
  raid_mounted: {description: Whether raid_mount is a mount point., type: bool, default: false}
  min_hugepages: {description: HugePages that must be reserved., type: int, default: 0}
  require_memlock_unlimited: {description: Whether memlock must be unlimited., type: bool, default: false}
"""

DEFAULT_THRESHOLDS = {
    "hbm_copy_fraction": 0.70,  # of the catalog's HBM bandwidth (device copy reaches ~80-90 % on healthy parts)
    "bf16_matmul_fraction": 0.55,  # of dense BF16 peak (8k GEMMs reach ~60-75 % of peak)
    "h2d_min_gbs": 10.0,  # PCIe Gen4 x16 pinned copies reach ~25 GB/s, Gen5 ~50; below 10 means a bad link
    "nccl_busbw_fraction": 0.50,  # of the NVLink per-direction bandwidth (bidirectional / 2)
    "nccl_min_busbw_gbs": 5.0,  # floor where the catalog has no NVLink figure (PCIe-only nodes)
}


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in str(text).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _check(name: str, ok: bool | None, observed, expected) -> dict:
    status = "skip" if ok is None else "pass" if ok else "fail"
    return {"name": name, "status": status, "observed": observed, "expected": expected}


def evaluate(hardware: dict, expected: dict, measurements: dict, thresholds: dict, *, gpu_memory_tolerance: float,
             min_driver: str = "0",
             raid_mount: str = "", raid_mounted: bool = False, min_hugepages: int = 0,
             require_memlock_unlimited: bool = False) -> list[dict]:
    limits = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    gpus = hardware.get("gpus") or []
    checks = []
    want_count = expected.get("gpu_count")
    checks.append(_check("gpu-count", None if want_count is None else hardware.get("gpu_count") == want_count,
                         hardware.get("gpu_count"), want_count))
    want_name = expected.get("gpu_name_smi") or expected.get("gpu")
    if want_name:
        from_catalog = expected.get("gpu_aliases") or [want_name]
        names = {g["name"] for g in gpus}
        checks.append(_check("gpu-model", bool(names) and all(n.lower() in (a.lower() for a in from_catalog)
                                                                for n in names), sorted(names), want_name))
    want_memory = expected.get("gpu_memory_gib")
    smallest = hardware.get("gpu_memory_gib")
    checks.append(_check("gpu-memory", None if not want_memory or smallest is None
                         else smallest >= gpu_memory_tolerance * want_memory, smallest,
                         f">= {gpu_memory_tolerance * want_memory:.1f} GiB"
                         if want_memory else None))
    driver = hardware.get("driver_version")
    checks.append(_check("driver", None if not driver else version_tuple(driver) >= version_tuple(min_driver),
                         driver, f">= {min_driver}"))
    if expected.get("nvswitch"):
        state = hardware.get("fabric_manager")
        checks.append(_check("fabric-manager", None if state == "no-systemd" else state == "active", state,
                             "active"))
    checks.append(_check("ecc", all(g["ecc_enabled"] for g in gpus) if gpus else None,
                         [g["ecc_mode"] for g in gpus], "Enabled"))
    bad_pages = [g["index"] for g in gpus if g.get("retired_pages_pending") or g.get("remapped_rows_pending")
                 or g.get("remapped_rows_failure")]
    checks.append(_check("memory-retirement", not bad_pages if gpus else None, bad_pages or "none", "none"))
    xids = hardware.get("xid_events") or []
    checks.append(_check("xid-errors", not xids, xids[-3:] or "none", "none"))
    want_rdma = expected.get("efa_devices")
    if want_rdma:
        checks.append(_check("rdma-devices", len(hardware.get("rdma_devices") or []) >= want_rdma,
                             len(hardware.get("rdma_devices") or []), f">= {want_rdma}"))
    if raid_mount:
        checks.append(_check("nvme-raid-mounted", raid_mounted, raid_mount if raid_mounted else "not mounted",
                             raid_mount))
    if min_hugepages:
        checks.append(_check("hugepages", hardware.get("hugepages_total", 0) >= min_hugepages,
                             hardware.get("hugepages_total", 0), f">= {min_hugepages}"))
    if require_memlock_unlimited:
        checks.append(_check("memlock", bool(hardware.get("memlock_unlimited")),
                             "unlimited" if hardware.get("memlock_unlimited") else "limited", "unlimited"))
    checks += measurement_checks(expected, measurements, limits)
    return checks


def measurement_checks(expected: dict, measurements: dict, limits: dict) -> list[dict]:
    if not measurements:
        return [_check("measurements", None, "skipped", "gpu_acceptance.py")]
    if "error" in measurements or not measurements.get("gpus"):
        why = measurements.get("error") or "no GPU was measured"
        return [_check("measurements", False, why, "gpu_acceptance.py measured every GPU")]
    checks = []
    hbm_spec, bf16_spec = expected.get("memory_bandwidth_gbs"), expected.get("bf16_dense_tflops")
    for gpu in measurements.get("gpus") or []:
        tag = f"gpu{gpu['index']}"
        if hbm_spec:
            floor = limits["hbm_copy_fraction"] * hbm_spec
            checks.append(_check(f"{tag}-hbm-bandwidth", gpu["hbm_copy_gbs"] >= floor, f"{gpu['hbm_copy_gbs']} GB/s",
                                 f">= {floor:.0f} GB/s ({limits['hbm_copy_fraction']:.0%} of {hbm_spec:g})"))
        if bf16_spec:
            floor = limits["bf16_matmul_fraction"] * bf16_spec
            checks.append(_check(f"{tag}-bf16-matmul", gpu["bf16_matmul_tflops"] >= floor,
                                 f"{gpu['bf16_matmul_tflops']} TFLOPS",
                                 f">= {floor:.0f} TFLOPS ({limits['bf16_matmul_fraction']:.0%} of {bf16_spec:g})"))
        checks.append(_check(f"{tag}-h2d-bandwidth", gpu["h2d_gbs"] >= limits["h2d_min_gbs"], f"{gpu['h2d_gbs']} GB/s",
                             f">= {limits['h2d_min_gbs']:g} GB/s"))
    nccl = measurements.get("nccl_all_reduce") or {}
    if "busbw_gbs" in nccl:
        nvlink = expected.get("nvlink_gbs_bidir")
        floor = limits["nccl_busbw_fraction"] * nvlink / 2 if nvlink else limits["nccl_min_busbw_gbs"]
        checks.append(_check("nccl-all-reduce", nccl["busbw_gbs"] >= floor, f"{nccl['busbw_gbs']} GB/s bus "
                             f"({nccl['ranks']} ranks)", f">= {floor:.0f} GB/s"))
    else:
        checks.append(_check("nccl-all-reduce", None, nccl.get("skipped", "not measured"), "2+ GPUs"))
    return checks


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    spec = {
        "hardware": {"type": "dict", "required": True},
        "expected": {"type": "dict", "default": {}},
        "measurements": {"type": "dict", "default": {}},
        "thresholds": {"type": "dict", "default": {}},
        "min_driver": {"type": "str", "default": "0"},
        "gpu_memory_tolerance": {"type": "float", "required": True},
        "raid_mount": {"type": "str", "default": ""},
        "raid_mounted": {"type": "bool", "default": False},
        "min_hugepages": {"type": "int", "default": 0},
        "require_memlock_unlimited": {"type": "bool", "default": False},
    }
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    checks = evaluate(p["hardware"], p["expected"], p["measurements"], p["thresholds"], min_driver=p["min_driver"],
                      gpu_memory_tolerance=p["gpu_memory_tolerance"],
                      raid_mount=p["raid_mount"], raid_mounted=p["raid_mounted"], min_hugepages=p["min_hugepages"],
                      require_memlock_unlimited=p["require_memlock_unlimited"])
    failed = [c for c in checks if c["status"] == "fail"]
    report = {"passed": not failed, "checks": checks}
    if failed:
        module.fail_json(msg="node rejected: " + "; ".join(f"{c['name']}: {c['observed']} (needs {c['expected']})"
                                                            for c in failed), report=report)
    module.exit_json(changed=False, report=report)


if __name__ == "__main__":
    main()
