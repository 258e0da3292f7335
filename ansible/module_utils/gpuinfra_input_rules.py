"""The ranges and formats of each role's input that an argument spec cannot express, as pure functions.

Runs on the controller only (loaded by action_plugins/gpuinfra_check_input.py, after the role's argument spec
has checked the types, the choices and the nested keys): each function takes the role's option values as the
argument spec validated them, and a way to read a contract variable (gpuinfra_software, gpuinfra_constants),
and yields one message per wrong value, naming the variable (its full path inside a dict) and the reason.

They were Jinja asserts in each role's tasks/validate.yml; ansible-core compiles every Jinja expression again in
every forked worker (hundreds per host and run), which made the input checks the largest part of a no-op rerun.
Values are only compared, matched and shown: never evaluated or templated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

Values = Mapping[str, Any]
Contract = Callable[[str], Any]
Messages = Iterator[str]

LINE_BREAK = re.compile(r"[\r\n]")
PLAIN_VERSION = r"^[0-9]+[.][0-9]+[.][0-9]+$"  # 1.41.0
HTTP_URL = r"^https?://[^/ ]+"
ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
UNIT_NAME = r"^[A-Za-z0-9:_.@-]+$"
UTC_TIME = "%Y-%m-%dT%H:%M:%SZ"


def shown(value: Any) -> str:
    """A value as a message shows it: strings quoted, a whole float as the whole number an inventory most
    likely wrote (the argument spec turns 2 into 2.0 for a float option), everything else as Python prints it."""
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def was(values: Values, name: str) -> str:
    """The end of a message: the value the variable has."""
    return f"(is {shown(values.get(name))})"


def number(value: Any) -> float | None:
    """The value as a number, None when it is not one (the argument spec has already refused most of those)."""
    if isinstance(value, bool):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def whole(value: Any) -> int | None:
    found = number(value)
    return int(found) if found is not None and found == int(found) else None


def at_least(value: Any, low: float) -> bool:
    found = number(value)
    return found is not None and found >= low


def above(value: Any, low: float) -> bool:
    found = number(value)
    return found is not None and found > low


def between(value: Any, low: float, high: float) -> bool:
    """low <= value <= high, for whole numbers (ports, counts)."""
    found = whole(value)
    return found is not None and low <= found <= high


def fraction(value: Any) -> bool:
    """In (0, 1]."""
    found = number(value)
    return found is not None and 0 < found <= 1


def share(value: Any) -> bool:
    """In [0, 1]."""
    found = number(value)
    return found is not None and 0 <= found <= 1


def matches(value: Any, pattern: str) -> bool:
    return value is not None and re.match(pattern, str(value)) is not None


def absolute(value: Any) -> bool:
    return value is not None and os.path.isabs(str(value))


def text(value: Any) -> str:
    return "" if value is None else str(value)


def _optional(values: Values, name: str) -> Mapping[str, Any]:
    """A dict option that may be unset or null: its keys, or none."""
    found = values.get(name)
    return found if isinstance(found, Mapping) else {}


def _port(values: Values, name: str) -> Messages:
    if not between(values.get(name), 1, 65535):
        yield f"{name} must be a port in 1-65535 (is {shown(values.get(name))})"


def _sla(prefix: str, sla: Mapping[str, Any], rates: tuple[str, ...]) -> Messages:
    """The SLA keys node_validation and monitoring share; each may be unset (null)."""
    for key in ("ttft_p99_s", "e2e_p99_s"):
        if sla.get(key) is not None and not above(sla[key], 0):
            yield f"{prefix}.{key} must be above 0 seconds (is {shown(sla[key])})"
    if sla.get("error_rate") is not None and not share(sla["error_rate"]):
        yield f"{prefix}.error_rate must be a share in [0, 1] (is {shown(sla['error_rate'])})"
    for key in rates:
        if sla.get(key) is not None and not above(sla[key], 0):
            yield f"{prefix}.{key} must be above 0 tokens/s (is {shown(sla[key])})"


def preflight(values: Values, contract: Contract) -> Messages:
    if not between(values.get("preflight_nodes_per_copy"), 1, 64):
        yield f"preflight_nodes_per_copy must be 1-64 nodes {was(values, 'preflight_nodes_per_copy')}"
    request = _optional(values, "preflight_request")
    for key, what in (("context_tokens", "tokens"), ("concurrency", "sequences")):
        if request.get(key) is not None and not at_least(request[key], 1):
            yield f"preflight_request.{key} must be 1 or more {what} (is {shown(request[key])})"
    if request.get("gpu_memory_utilization") is not None and not fraction(request["gpu_memory_utilization"]):
        yield ("preflight_request.gpu_memory_utilization must be a fraction in (0, 1] "
               f"(is {shown(request['gpu_memory_utilization'])})")
    hardware = _optional(values, "preflight_expected_hardware")
    if hardware.get("gpu_count") is not None and not at_least(hardware["gpu_count"], 1):
        yield f"preflight_expected_hardware.gpu_count must be 1 or more GPUs (is {shown(hardware['gpu_count'])})"
    if hardware.get("gpu_memory_gib") is not None and not above(hardware["gpu_memory_gib"], 0):
        yield f"preflight_expected_hardware.gpu_memory_gib must be above 0 GiB (is {shown(hardware['gpu_memory_gib'])})"
    if hardware.get("efa_devices") is not None and not at_least(hardware["efa_devices"], 0):
        yield f"preflight_expected_hardware.efa_devices must be 0 or more (is {shown(hardware['efa_devices'])})"
    if not text(values.get("preflight_gpuinfra_cli")):
        yield "preflight_gpuinfra_cli must name the gpuinfra command (is empty)"


def host_tuning(values: Values, contract: Contract) -> Messages:
    count = values.get("host_tuning_hugepages_count")
    if values.get("host_tuning_hugepages") == "explicit":
        if not at_least(count, 1):
            yield ("host_tuning_hugepages_count must be 1 or more pages under host_tuning_hugepages explicit "
                   f"(is {shown(count)})")
    elif not at_least(count, 0):
        yield f"host_tuning_hugepages_count must be 0 or more pages (is {shown(count)})"
    if not at_least(values.get("host_tuning_hugepages_per_core"), 1):
        yield f"host_tuning_hugepages_per_core must be 1 or more pages {was(values, 'host_tuning_hugepages_per_core')}"
    if not at_least(values.get("host_tuning_efa_devices"), 0):
        yield f"host_tuning_efa_devices must be 0 or more devices {was(values, 'host_tuning_efa_devices')}"
    if not matches(values.get("host_tuning_memlock"), r"^(unlimited|[1-9][0-9]*)$"):
        yield f"host_tuning_memlock must be unlimited or a number of KiB above 0 {was(values, 'host_tuning_memlock')}"
    sysctl = _optional(values, "host_tuning_sysctl")
    bad_names = [str(name) for name in sysctl
                 if not matches(name, r"^[a-z0-9_-]+([./][A-Za-z0-9_*-]+)+$")
                 or str(name) in ("vm.nr_hugepages", "vm/nr_hugepages")]
    if bad_names:
        yield ("host_tuning_sysctl names must be sysctl keys such as vm.swappiness, and not vm.nr_hugepages (set by "
               f"host_tuning_hugepages): {', '.join(bad_names)}")
    bad_values = [str(name) for name, value in sysctl.items()
                  if not isinstance(value, (str, int, float)) or (isinstance(value, str) and LINE_BREAK.search(value))]
    if bad_values:
        yield f"host_tuning_sysctl values must be one-line strings or numbers, not those of {', '.join(bad_values)}"


def nvme_raid(values: Values, contract: Contract) -> Messages:
    for name in ("nvme_raid_devices", "nvme_raid_force_devices"):
        bad = [str(device) for device in values.get(name) or [] if not matches(device, r"^/dev/[^ ]+$")]
        if bad:
            yield f"{name} must be device paths (/dev/...), not {', '.join(bad)}"
    if not values.get("nvme_raid_devices") and not text(values.get("nvme_raid_model")):
        yield "nvme_raid_model must name the drives' model when nvme_raid_devices is empty (is empty)"
    mount = values.get("nvme_raid_mount")
    if not absolute(mount) or text(mount) == "/":
        yield f"nvme_raid_mount must be an absolute path other than / (is {shown(mount)})"
    if not matches(values.get("nvme_raid_name"), r"^[A-Za-z0-9_.-]+$"):
        yield f"nvme_raid_name must be an md array name of letters, digits, _ . - {was(values, 'nvme_raid_name')}"
    if not matches(values.get("nvme_raid_label"), r"^[A-Za-z0-9_-]{1,12}$"):
        yield ("nvme_raid_label must be an XFS label of 1-12 letters, digits, _ or - "
               f"{was(values, 'nvme_raid_label')}")
    chunk = whole(values.get("nvme_raid_chunk_kib"))
    if chunk is None or chunk < 4 or chunk % 4:
        yield f"nvme_raid_chunk_kib must be 4 KiB or more and a multiple of 4 {was(values, 'nvme_raid_chunk_kib')}"


def node_expiry(values: Values, contract: Contract) -> Messages:
    at = text(values.get("node_expiry_at"))
    if at and not matches(at, r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$"):
        yield f"node_expiry_at must be a UTC time as YYYY-MM-DDTHH:MM:SSZ, or empty (is {shown(at)})"
    elif at:
        try:
            passed = datetime.strptime(at, UTC_TIME).replace(tzinfo=UTC) <= datetime.now(UTC)
        except ValueError:  # the right shape, not a date (month 13)
            yield f"node_expiry_at must be a UTC time as YYYY-MM-DDTHH:MM:SSZ, or empty (is {shown(at)})"
        else:
            if passed:
                yield (f"node_expiry_at {at} has passed: the environment is expired; `gpuinfra env extend` it "
                       "before configuring its nodes")
    if not at_least(values.get("node_expiry_grace_minutes"), 0):
        yield f"node_expiry_grace_minutes must be 0 or more {was(values, 'node_expiry_grace_minutes')}"
    if not matches(values.get("node_expiry_check_every"), r"^[0-9]+(s|min|h)$"):
        yield ("node_expiry_check_every must be a systemd time span like 30s, 5min or 1h "
               f"{was(values, 'node_expiry_check_every')}")


def nvidia_repository(values: Values, contract: Contract) -> Messages:
    url = values.get("nvidia_repository_url")
    if not matches(url, r"^(https?|file)://[^ ]+/$") or "{distribution}" not in text(url):
        yield ("nvidia_repository_url must be an https://, http:// or file:// URL ending in / with a {distribution} "
               f"placeholder (is {shown(url)})")
    if not matches(values.get("nvidia_repository_key_file"), r"^[A-Za-z0-9_.+-]+$"):
        yield ("nvidia_repository_key_file must be a file name in the repository directory "
               f"{was(values, 'nvidia_repository_key_file')}")
    if not matches(values.get("nvidia_repository_key_fingerprint"), r"^[0-9A-F]{40}$"):
        yield ("nvidia_repository_key_fingerprint must be 40 upper-case hex digits, as gpg --with-colons prints it "
               f"{was(values, 'nvidia_repository_key_fingerprint')}")
    distributions = _optional(values, "nvidia_repository_distributions")
    if not distributions:
        yield "nvidia_repository_distributions must map at least one <os>-<version> to its directory (is empty)"
    bad_names = [str(name) for name in distributions if not matches(name, r"^(debian|ubuntu)-[0-9]+([.][0-9]+)?$")]
    if bad_names:
        yield ("nvidia_repository_distributions keys must be <os>-<version> (debian-12, ubuntu-24.04), not "
               f"{', '.join(bad_names)}")
    bad_dirs = [str(directory) for directory in distributions.values() if not matches(directory, r"^[a-z0-9_.-]+$")]
    if bad_dirs:
        yield ("nvidia_repository_distributions values must be directory names (debian12, ubuntu2404), not "
               f"{', '.join(bad_dirs)}")
    if not absolute(values.get("nvidia_repository_keyring")):
        yield f"nvidia_repository_keyring must be an absolute path {was(values, 'nvidia_repository_keyring')}"


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def nvidia_driver(values: Values, contract: Contract) -> Messages:
    branch, version = text(values.get("nvidia_driver_branch")), text(values.get("nvidia_driver_version"))
    cuda = text(values.get("nvidia_driver_cuda_version"))
    if not matches(branch, r"^[0-9]{3,4}$"):
        yield f"nvidia_driver_branch must be a driver branch such as 580 (is {shown(branch)})"
    version_ok = matches(version, r"^[0-9]+[.][0-9]+([.][0-9]+)?$")
    if not version_ok:
        yield f"nvidia_driver_version must be a driver version such as 580.95.05 (is {shown(version)})"
    if not version.startswith(branch + "."):
        yield f"nvidia_driver_version {version} does not belong to nvidia_driver_branch {branch}"
    known = _optional(values, "nvidia_driver_cuda_min_driver")
    needs = text(known.get(cuda))
    if not needs:
        yield (f"nvidia_driver_cuda_version {cuda} is not in nvidia_driver_cuda_min_driver "
               f"({', '.join(str(release) for release in known)} are known)")
    elif version_ok and matches(needs, r"^[0-9]+([.][0-9]+)*$") and _release(version) < _release(needs):
        yield f"nvidia_driver_version {version} is too old for CUDA {cuda}, which needs {needs} or newer"
    if not matches(values.get("nvidia_driver_open_modules_from"), r"^[0-9]+[.][0-9]+$"):
        yield ("nvidia_driver_open_modules_from must be a compute capability such as 9.0 "
               f"{was(values, 'nvidia_driver_open_modules_from')}")
    capability = text(values.get("nvidia_driver_compute_capability"))
    if capability and not matches(capability, r"^[0-9]+[.][0-9]+$"):
        yield ("nvidia_driver_compute_capability must be empty or a compute capability such as 9.0 "
               f"(is {shown(capability)})")
    if not at_least(values.get("nvidia_driver_reboot_timeout"), 60):
        yield f"nvidia_driver_reboot_timeout must be 60 or more seconds {was(values, 'nvidia_driver_reboot_timeout')}"


def cuda_toolkit(values: Values, contract: Contract) -> Messages:
    if not matches(values.get("cuda_toolkit_version"), r"^[0-9]+[.][0-9]+$"):
        yield ("cuda_toolkit_version must be a CUDA release major.minor such as 12.8 "
               f"{was(values, 'cuda_toolkit_version')}")
    if not matches(values.get("cuda_toolkit_nccl_version"), PLAIN_VERSION):
        yield ("cuda_toolkit_nccl_version must be an NCCL version such as 2.26.2 "
               f"{was(values, 'cuda_toolkit_nccl_version')}")
    if not matches(values.get("cuda_toolkit_cudnn_version"), r"^[0-9]+([.][0-9]+){1,3}$"):
        yield ("cuda_toolkit_cudnn_version must be a cuDNN version such as 9.8.0.87 "
               f"{was(values, 'cuda_toolkit_cudnn_version')}")


def fabric(values: Values, contract: Contract) -> Messages:
    if not at_least(values.get("fabric_expected_devices"), 0):
        yield f"fabric_expected_devices must be 0 or more devices {was(values, 'fabric_expected_devices')}"
    if not matches(values.get("fabric_efa_installer_version"), PLAIN_VERSION):
        yield ("fabric_efa_installer_version must be a release such as 1.41.0 "
               f"{was(values, 'fabric_efa_installer_version')}")
    if not matches(values.get("fabric_efa_installer_url"), r"^(https?|file)://[^ ]+$"):
        yield ("fabric_efa_installer_url must be an https://, http:// or file:// URL "
               f"{was(values, 'fabric_efa_installer_url')}")
    if not matches(values.get("fabric_efa_installer_sha256"), r"^[0-9a-fA-F]{64}$"):
        yield ("fabric_efa_installer_sha256 must be a SHA-256 of 64 hex digits "
               f"{was(values, 'fabric_efa_installer_sha256')}")
    bad_args = [str(arg) for arg in values.get("fabric_efa_installer_args") or [] if not matches(arg, "^-")]
    if bad_args:
        yield f"fabric_efa_installer_args must be flags starting with - (not {', '.join(bad_args)})"
    if not between(values.get("fabric_rdma_gid_index"), 0, 255):
        yield f"fabric_rdma_gid_index must be a GID index in 0-255 {was(values, 'fabric_rdma_gid_index')}"
    if not matches(values.get("fabric_nccl_socket_ifname"), r"^[^ ]+$"):
        yield ("fabric_nccl_socket_ifname must be an NCCL_SOCKET_IFNAME value without spaces "
               f"{was(values, 'fabric_nccl_socket_ifname')}")
    env = _optional(values, "fabric_nccl_extra_env")
    bad_names = [str(name) for name in env if not matches(name, r"^(NCCL|FI)_[A-Z0-9_]+$")]
    if bad_names:
        yield f"fabric_nccl_extra_env may only set NCCL_* and FI_* variables, not {', '.join(bad_names)}"
    bad_values = [str(name) for name, value in env.items()
                  if isinstance(value, (Mapping, list, tuple, set))
                  or (isinstance(value, str) and LINE_BREAK.search(value))]
    if bad_values:
        yield f"fabric_nccl_extra_env values must be one-line strings or numbers, not those of {', '.join(bad_values)}"


def container_runtime(values: Values, contract: Contract) -> Messages:
    if not matches(values.get("container_runtime_nvidia_toolkit_version"), PLAIN_VERSION):
        yield ("container_runtime_nvidia_toolkit_version must be a release such as 1.17.8 "
               f"{was(values, 'container_runtime_nvidia_toolkit_version')}")


# The plan's sizes that must be 1 or more where present and not null.
PLAN_SIZES = ("tensor_parallel", "pipeline_parallel", "data_parallel", "expert_parallel", "replicas_per_node", "nodes",
              "max_model_len", "max_num_seqs", "max_num_batched_tokens")


def _serving_plan(plan: Mapping[str, Any]) -> Messages:
    small = {key: whole(plan[key]) or 0 for key in PLAN_SIZES
             if plan.get(key) is not None and not at_least(plan[key], 1)}
    if small:
        yield f"inference_server_plan: {', '.join(small)} must be 1 or more (is {small})"
    if plan.get("nodes") is not None and at_least(plan["nodes"], 1) and not between(plan["nodes"], 1, 64):
        yield f"inference_server_plan.nodes must be 1-64 nodes (is {shown(plan['nodes'])})"
    if plan.get("gpu_memory_utilization") is not None and not fraction(plan["gpu_memory_utilization"]):
        yield ("inference_server_plan.gpu_memory_utilization must be a fraction in (0, 1] "
               f"(is {shown(plan['gpu_memory_utilization'])})")
    if plan.get("port") is not None and not between(plan["port"], 1, 65535):
        yield f"inference_server_plan.port must be a port in 1-65535 (is {shown(plan['port'])})"


def _serving_engine(values: Values, contract: Contract) -> Messages:
    engines = (contract("gpuinfra_software") or {}).get("inference_engines") or {}
    engine = values.get("inference_server_engine")
    if engine not in engines:
        yield (f"inference_server_engine {engine} has no pinned version in the catalog "
               f"(gpuinfra_software.inference_engines: {', '.join(map(str, engines))})")
    if not text(values.get("inference_server_engine_package")):
        yield "inference_server_engine_package must name the engine's pip requirement (is empty)"
    if not matches(values.get("inference_server_engine_version"), r"^[0-9]+([.][0-9A-Za-z+-]+)*$"):
        yield ("inference_server_engine_version must be a pinned version, digits and dot-separated parts (the catalog "
               f"pins one per engine) {was(values, 'inference_server_engine_version')}")


def _serving_environment(values: Values, contract: Contract) -> Messages:
    env_names = [str(name) for name in _optional(values, "inference_server_env")]
    bad = [name for name in env_names if not matches(name, ENV_NAME)]
    if bad:
        yield f"inference_server_env keys must be environment variable names (not {', '.join(bad)})"
    fabric_owned = [name for name in env_names if matches(name, "^(NCCL|FI)_")]
    if fabric_owned:
        env_file = (contract("gpuinfra_constants") or {}).get("nccl_env_file")
        yield (f"inference_server_env must not set {', '.join(fabric_owned)}: NCCL_* and FI_* belong to the fabric "
               f"role (fabric_nccl_extra_env, {env_file})")
    bad = [str(name) for name in _optional(values, "inference_server_pip_env") if not matches(name, ENV_NAME)]
    if bad:
        yield f"inference_server_pip_env keys must be environment variable names (not {', '.join(bad)})"


def inference_server(values: Values, contract: Contract) -> Messages:
    yield from _serving_plan(_optional(values, "inference_server_plan"))
    yield from _port(values, "inference_server_port")
    yield from _port(values, "inference_server_master_port")
    if whole(values.get("inference_server_master_port")) == whole(values.get("inference_server_port")):
        yield ("inference_server_master_port must differ from inference_server_port "
               f"(both are {shown(values.get('inference_server_port'))})")
    yield from _serving_engine(values, contract)
    for name in ("inference_server_venv", "inference_server_models_dir", "inference_server_model_dir"):
        if not absolute(values.get(name)):
            yield f"{name} must be an absolute path (is {shown(values.get(name))})"
    if not matches(values.get("inference_server_service"), UNIT_NAME):
        yield ("inference_server_service must be a systemd unit name without .service "
               f"{was(values, 'inference_server_service')}")
    if not matches(values.get("inference_server_user"), r"^[a-z_][a-z0-9_-]{0,31}$"):
        yield ("inference_server_user must be a system user name (lower case, at most 32 characters) "
               f"{was(values, 'inference_server_user')}")
    yield from _serving_environment(values, contract)
    if not text(values.get("inference_server_weights_revision")):
        yield "inference_server_weights_revision must name a revision (a commit SHA, a tag or main; is empty)"
    if not matches(values.get("inference_server_hf_endpoint"), HTTP_URL):
        yield ("inference_server_hf_endpoint must be an http:// or https:// URL "
               f"{was(values, 'inference_server_hf_endpoint')}")
    s3 = text(values.get("inference_server_s3_endpoint_url"))
    if s3 and not matches(s3, HTTP_URL):
        yield f"inference_server_s3_endpoint_url must be empty or an http:// or https:// URL (is {shown(s3)})"
    if not between(values.get("inference_server_stage_workers"), 1, 256):
        yield ("inference_server_stage_workers must be 1-256 parallel downloads "
               f"{was(values, 'inference_server_stage_workers')}")
    for name, what in (("inference_server_health_timeout_s", "seconds"),
                       ("inference_server_smoke_max_tokens", "tokens"), ("inference_server_log_lines", "lines")):
        if not at_least(values.get(name), 1):
            yield f"{name} must be 1 or more {what} (is {shown(values.get(name))})"


def _acceptance_thresholds(thresholds: Mapping[str, Any]) -> Messages:
    for key in ("hbm_copy_fraction", "bf16_matmul_fraction", "nccl_busbw_fraction"):
        if thresholds.get(key) is not None and not fraction(thresholds[key]):
            yield f"node_validation_thresholds.{key} must be a fraction in (0, 1] (is {shown(thresholds[key])})"
    for key in ("h2d_min_gbs", "nccl_min_busbw_gbs"):
        if thresholds.get(key) is not None and not above(thresholds[key], 0):
            yield f"node_validation_thresholds.{key} must be above 0 GB/s (is {shown(thresholds[key])})"


def node_validation(values: Values, contract: Contract) -> Messages:
    if not matches(values.get("node_validation_min_driver"), r"^[0-9]+([.][0-9]+){1,2}$"):
        yield ("node_validation_min_driver must be a driver version such as 570.26 "
               f"{was(values, 'node_validation_min_driver')}")
    if not text(values.get("node_validation_python")):
        yield "node_validation_python must name a Python on the node (is empty)"
    yield from _acceptance_thresholds(_optional(values, "node_validation_thresholds"))
    raid_mount = text(values.get("node_validation_raid_mount"))
    if raid_mount and not absolute(raid_mount):
        yield f"node_validation_raid_mount must be empty or an absolute path (is {shown(raid_mount)})"
    if not at_least(values.get("node_validation_min_hugepages"), 0):
        yield f"node_validation_min_hugepages must be 0 or more pages {was(values, 'node_validation_min_hugepages')}"
    if not absolute(values.get("node_validation_work_dir")):
        yield f"node_validation_work_dir must be an absolute path {was(values, 'node_validation_work_dir')}"
    if not matches(values.get("node_validation_serving_service"), UNIT_NAME):
        yield ("node_validation_serving_service must be a systemd unit name "
               f"{was(values, 'node_validation_serving_service')}")
    if not matches(values.get("node_validation_load_url"), HTTP_URL):
        yield f"node_validation_load_url must be an http:// or https:// URL {was(values, 'node_validation_load_url')}"
    for name, what in (("node_validation_load_concurrency", "streams"), ("node_validation_load_requests", "requests"),
                       ("node_validation_load_max_seconds", "seconds"), ("node_validation_load_max_tokens", "tokens")):
        if not at_least(values.get(name), 1):
            yield f"{name} must be 1 or more {what} (is {shown(values.get(name))})"
    yield from _sla("node_validation_sla", _optional(values, "node_validation_sla"),
                    ("min_output_tokens_per_s", "min_stream_tokens_per_s"))
    hardware = _optional(values, "node_validation_expected_hardware")
    if hardware.get("gpu_count") is not None and not at_least(hardware["gpu_count"], 1):
        yield f"node_validation_expected_hardware.gpu_count must be 1 or more GPUs (is {shown(hardware['gpu_count'])})"


def monitoring(values: Values, contract: Contract) -> Messages:
    for name in ("monitoring_node_exporter_port", "monitoring_dcgm_exporter_port"):
        yield from _port(values, name)
    if whole(values.get("monitoring_dcgm_exporter_port")) == whole(values.get("monitoring_node_exporter_port")):
        yield ("monitoring_dcgm_exporter_port must differ from monitoring_node_exporter_port "
               f"(both are {shown(values.get('monitoring_node_exporter_port'))})")
    yield from _port(values, "monitoring_inference_port")
    image = values.get("monitoring_dcgm_exporter_image")
    pinned = r"^[^ :@]+(/[^ :@]+)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})$"
    if not matches(image, pinned) or text(image).endswith(":latest"):
        yield ("monitoring_dcgm_exporter_image must name a pinned image (registry/name:tag other than latest, or "
               f"@sha256:digest) (is {shown(image)})")
    if not matches(values.get("monitoring_prometheus_retention"), r"^([0-9]+(ms|s|m|h|d|w|y))+$"):
        yield ("monitoring_prometheus_retention must be a Prometheus duration such as 15d or 12h "
               f"{was(values, 'monitoring_prometheus_retention')}")
    if not fraction(values.get("monitoring_gpu_memory_alert_ratio")):
        yield ("monitoring_gpu_memory_alert_ratio must be a fraction in (0, 1] "
               f"{was(values, 'monitoring_gpu_memory_alert_ratio')}")
    if not between(values.get("monitoring_gpu_temperature_alert_c"), 1, 120):
        yield ("monitoring_gpu_temperature_alert_c must be 1-120 degrees C "
               f"{was(values, 'monitoring_gpu_temperature_alert_c')}")
    yield from _sla("monitoring_sla", _optional(values, "monitoring_sla"), ("min_stream_tokens_per_s",))


RULES: dict[str, Callable[[Values, Contract], Messages]] = {
    rules.__name__: rules
    for rules in (preflight, host_tuning, nvme_raid, node_expiry, nvidia_repository, nvidia_driver, cuda_toolkit,
                  fabric, container_runtime, inference_server, node_validation, monitoring)
}
