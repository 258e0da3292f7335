"""Bad input is refused before anything on a host changes, with the variable and the reason named.

The real playbooks run with ansible-playbook against this machine (local connection, --check as a second line
of defence) with wrong values: each run must fail, name every wrong variable, change nothing and run no task but
the input checks (the require_group and check_input plays, the roles' argument spec validation and their
tasks/validate.yml). Positive controls run the same checks on the shipped stacks' generated inventories and the
on-prem example, which must pass. Inventories that do not parse, are empty, or have no GPU nodes fail too.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from gpuinfra.boot import INSTANCE_STORE_MODEL
from gpuinfra.contract import host_constants

from tests.rigs.ansible_run import ANSIBLE_DIR, REPO, PlaybookRun

BIN = REPO / ".venv" / "bin"
ROLES = ANSIBLE_DIR / "roles"
PLAYBOOKS = ANSIBLE_DIR / "playbooks"
# Building blocks: the checks every layer imports, and each layer's play (<layer>_play.yml, which the layer and
# site.yml import after the checks).
PARTS = {"require_group.yml", "check_input.yml", *(p.name for p in PLAYBOOKS.glob("*_play.yml"))}
LAYERS = sorted(p.name for p in PLAYBOOKS.glob("*.yml") if p.name not in PARTS)
ALL_ROLES = sorted(p.name for p in ROLES.iterdir() if p.is_dir())
STACKS = sorted(p.name.removeprefix("Pulumi.").removesuffix(".yaml") for p in (REPO / "stacks").glob("Pulumi.*.yaml"))
HEADER = re.compile(r"^(PLAY|TASK) \[(.*)\] \*+$", re.M)
FAILED = re.compile(r"^(fatal|failed): \[", re.M)


@functools.cache
def software() -> dict:
    done = subprocess.run([str(BIN / "gpuinfra"), "catalog", "software", "--json"], capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout)


@functools.cache
def hardware() -> dict:
    """This machine's facts from the real gather of gpuinfra_hw_facts, read once, so preflight (which reads
    the same) is not rerun by every case."""
    spec = importlib.util.spec_from_file_location("gpuinfra_hw", ANSIBLE_DIR / "module_utils" / "gpuinfra_hw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.gather(INSTANCE_STORE_MODEL)


def task_names(path: Path) -> set[str]:
    names: set[str] = set()

    def walk(items):
        for item in items or []:
            if not isinstance(item, dict):
                continue
            if "name" in item and "hosts" not in item:
                names.add(item["name"])
            for key in ("tasks", "pre_tasks", "post_tasks", "block", "rescue", "always"):
                walk(item.get(key))

    walk(yaml.safe_load(path.read_text()))
    return names


def validation_tasks(role: str) -> set[str]:
    return {f"{role} : {name}" for name in task_names(ROLES / role / "tasks" / "validate.yml")}


def is_input_check(task: str) -> bool:
    """A task that only reads variables: the check plays' own tasks, argument spec validation, validate.yml,
    and preflight (read-only facts), which check_input runs first on a host without facts."""
    role, _, name = task.partition(" : ")
    if not name:
        return task in task_names(PLAYBOOKS / "require_group.yml") | task_names(PLAYBOOKS / "check_input.yml")
    return (name.startswith("Validating arguments against arg spec") or task in validation_tasks(role)
            or role == "preflight")


def inventory(tmp_path: Path, group_vars: dict, *, with_hardware: bool = True) -> Path:
    host = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    # Like a generated inventory: the contract's software stack and constants (gpuinfra inventory writes both).
    variables = {"ansible_become": False, "preflight_cpu_only": True, "gpuinfra_software": software(),
                 "gpuinfra_constants": host_constants(),
                 "preflight_gpuinfra_cli": str(BIN / "gpuinfra"), **group_vars}
    if with_hardware:
        variables["gpuinfra_hardware"] = hardware()
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {"hosts": {"node1": host},
                                                                      "vars": variables}}}}))
    return path


def ansible_playbook(tmp_path: Path, playbook: Path, inventory_path: Path, extra_vars: dict | None = None,
                     *extra: str) -> PlaybookRun:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}
    argv = [str(BIN / "ansible-playbook"), "-i", str(inventory_path), str(playbook), "--check", *extra]
    if extra_vars is not None:
        values = tmp_path / "extra-vars.json"
        values.write_text(json.dumps(extra_vars))
        argv += ["-e", f"@{values}"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env, cwd=ANSIBLE_DIR)
    return PlaybookRun(done.returncode, done.stdout + done.stderr, 0.0)


def headers(run: PlaybookRun, kind: str) -> list[str]:
    return [name for found, name in HEADER.findall(run.output) if found == kind]


def failing_task(run: PlaybookRun) -> str:
    """The task whose failure stopped the run (the last TASK header before the first failure)."""
    first_failure = FAILED.search(run.output)
    assert first_failure, run.tail()
    return [name for found, name in HEADER.findall(run.output[:first_failure.start()]) if found == "TASK"][-1]


def flat(text: str) -> str:
    return " ".join(text.split())


PLAN = {"engine": "vllm", "hf_repo": "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        "served_model_name": "deepseek-r1-distill-llama-70b", "tensor_parallel": 4, "pipeline_parallel": 1,
        "data_parallel": 1, "expert_parallel": 1, "enable_expert_parallel": False, "replicas_per_node": 2, "nodes": 1,
        "max_model_len": 32768, "max_num_seqs": 64, "gpu_memory_utilization": 0.9, "max_num_batched_tokens": 8192,
        "quantization": None, "kv_cache_dtype": "auto", "port": 8000}

# (playbook, the role whose checks must refuse it, wrong values, what the error must say about each).
# Argument spec errors (types, choices, unknown keys) and range errors of one role are separate runs: the
# argument spec stops the role before its range checks (they compare values of the right type only). The
# other roles' checks still run: every role's wrong values are reported at once.
CASES = {
    "host_tuning types and choices": ("host.yml", "host_tuning", {
        "host_tuning_hugepages": "lots", "host_tuning_hugepages_count": "many", "host_tuning_cpu_governor": "turbo",
        "host_tuning_boot_config": "sometimes"}, [
        "value of host_tuning_hugepages must be one of: auto, none, efa, explicit, got: lots",
        "argument 'host_tuning_hugepages_count' is of type",
        "value of host_tuning_cpu_governor must be one of",
        "argument 'host_tuning_boot_config' is of type"]),
    "host_tuning ranges": ("host.yml", "host_tuning", {
        "host_tuning_hugepages": "explicit", "host_tuning_hugepages_count": 0, "host_tuning_memlock": "lots",
        "host_tuning_sysctl": {"vm.nr_hugepages": 512}}, [
        "host_tuning_hugepages_count must be 1 or more pages under host_tuning_hugepages explicit (is 0)",
        "host_tuning_memlock must be unlimited or a number of KiB above 0 (is 'lots')",
        "host_tuning_sysctl names must be sysctl keys such as vm.swappiness, and not vm.nr_hugepages"]),
    "nvme_raid ranges": ("host.yml", "nvme_raid", {
        "nvme_raid_chunk_kib": 6, "nvme_raid_label": "gpuinfra-nvme-raid", "nvme_raid_mount": "mnt/nvme",
        "nvme_raid_devices": ["nvme1n1"]}, [
        "nvme_raid_chunk_kib must be 4 KiB or more and a multiple of 4 (is 6)",
        "nvme_raid_label must be an XFS label of 1-12 letters",
        "nvme_raid_mount must be an absolute path other than / (is 'mnt/nvme')",
        "nvme_raid_devices must be device paths (/dev/...), not nvme1n1"]),
    "node_expiry formats": ("host.yml", "node_expiry", {
        "node_expiry_at": "tomorrow", "node_expiry_grace_minutes": -5, "node_expiry_check_every": "5 minutes",
        "node_expiry_action": "halt"}, [
        "value of node_expiry_action must be one of: poweroff, log, got: halt"]),
    "node_expiry ranges": ("expiry.yml", "node_expiry", {
        "node_expiry_at": "2020-01-01T00:00:00Z", "node_expiry_grace_minutes": -5,
        "node_expiry_check_every": "5 minutes"}, [
        "node_expiry_at 2020-01-01T00:00:00Z has passed: the environment is expired",
        "node_expiry_grace_minutes must be 0 or more (is -5)",
        "node_expiry_check_every must be a systemd time span like 30s, 5min or 1h (is '5 minutes')"]),
    "nvidia_repository formats": ("drivers.yml", "nvidia_repository", {
        "nvidia_repository_key_fingerprint": "eb693b3035cd5710e231e123a4b469963bf863cc",
        "nvidia_repository_url": "https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/"}, [
        "nvidia_repository_key_fingerprint must be 40 upper-case hex digits",
        "nvidia_repository_url must be an https://, http:// or file:// URL ending in / with a {distribution}"]),
    "nvidia_driver types and choices": ("drivers.yml", "nvidia_driver", {
        "nvidia_driver_open_kernel_modules": "sometimes", "nvidia_driver_fabric_manager": "maybe",
        "nvidia_driver_reboot_timeout": "soon"}, [
        "value of nvidia_driver_open_kernel_modules must be one of: auto, true, false, got: sometimes",
        "value of nvidia_driver_fabric_manager must be one of: auto, true, false, got: maybe",
        "argument 'nvidia_driver_reboot_timeout' is of type"]),
    "nvidia_driver ranges": ("drivers.yml", "nvidia_driver", {
        "nvidia_driver_version": "570.124.06", "nvidia_driver_reboot_timeout": 0}, [
        "nvidia_driver_version 570.124.06 does not belong to nvidia_driver_branch 580",
        "nvidia_driver_reboot_timeout must be 60 or more seconds (is 0)"]),
    "cuda_toolkit formats": ("drivers.yml", "cuda_toolkit", {"cuda_toolkit_version": "12.8.1"}, [
        "cuda_toolkit_version must be a CUDA release major.minor such as 12.8 (is '12.8.1')"]),
    "fabric types and choices": ("fabric.yml", "fabric", {
        "fabric_kind": "infiniband", "fabric_rdma_link": "ethernet", "fabric_expected_devices": "all"}, [
        "value of fabric_kind must be one of: efa, rdma, none, got: infiniband",
        "value of fabric_rdma_link must be one of: infiniband, roce, got: ethernet",
        "argument 'fabric_expected_devices' is of type"]),
    "fabric ranges": ("fabric.yml", "fabric", {
        "fabric_expected_devices": -1, "fabric_rdma_gid_index": 256, "fabric_efa_installer_sha256": "deadbeef",
        "fabric_nccl_extra_env": {"LD_LIBRARY_PATH": "/opt/lib"}}, [
        "fabric_expected_devices must be 0 or more devices (is -1)",
        "fabric_rdma_gid_index must be a GID index in 0-255 (is 256)",
        "fabric_efa_installer_sha256 must be a SHA-256 of 64 hex digits (is 'deadbeef')",
        "fabric_nccl_extra_env may only set NCCL_* and FI_* variables, not LD_LIBRARY_PATH"]),
    "container_runtime formats": ("containers.yml", "container_runtime", {
        "container_runtime_nvidia_toolkit_version": "latest"}, [
        "container_runtime_nvidia_toolkit_version must be a release such as 1.17.8 (is 'latest')"]),
    "inference_server types, choices and plan keys": ("serve.yml", "inference_server", {
        "inference_server_engine": "tgi", "inference_server_plan": {**PLAN, "tensor_paralel": 8},
        "inference_server_stage_workers": "eight"}, [
        "value of inference_server_engine must be one of: vllm, sglang, got: tgi",
        "inference_server_plan.tensor_paralel. Supported parameters include",
        "argument 'inference_server_stage_workers' is of type"]),
    "inference_server plan of the wrong type": ("serve.yml", "inference_server", {"inference_server_plan": "tp8"}, [
        "argument 'inference_server_plan' is of type str and we were unable to convert to dict"]),
    "inference_server ranges": ("serve.yml", "inference_server", {
        "inference_server_port": 70000, "inference_server_master_port": 0, "inference_server_stage_workers": 0,
        "inference_server_health_timeout_s": -5, "inference_server_env": {"NCCL_DEBUG": "INFO"},
        "inference_server_plan": {**PLAN, "tensor_parallel": 0, "gpu_memory_utilization": 1.5}}, [
        "inference_server_port must be a port in 1-65535 (is 70000)",
        "inference_server_master_port must be a port in 1-65535 (is 0)",
        "inference_server_stage_workers must be 1-256 parallel downloads (is 0)",
        "inference_server_health_timeout_s must be 1 or more seconds (is -5)",
        "inference_server_env must not set NCCL_DEBUG",
        "inference_server_plan: tensor_parallel must be 1 or more",
        "inference_server_plan.gpu_memory_utilization must be a fraction in (0, 1] (is 1.5)"]),
    "node_validation load test and SLA": ("serve.yml", "node_validation", {
        "node_validation_load_concurrency": 0, "node_validation_load_requests": 0,
        "node_validation_load_max_tokens": -1,
        "node_validation_sla": {"error_rate": 2, "ttft_p99_s": 0, "min_stream_tokens_per_s": 0}}, [
        "node_validation_load_concurrency must be 1 or more streams (is 0)",
        "node_validation_load_requests must be 1 or more requests (is 0)",
        "node_validation_load_max_tokens must be 1 or more tokens (is -1)",
        "node_validation_sla.error_rate must be a share in [0, 1] (is 2)",
        "node_validation_sla.ttft_p99_s must be above 0 seconds (is 0)",
        "node_validation_sla.min_stream_tokens_per_s must be above 0 tokens/s (is 0)"]),
    "monitoring ranges": ("monitoring.yml", "monitoring", {
        "monitoring_node_exporter_port": 0, "monitoring_dcgm_exporter_port": 65536,
        "monitoring_gpu_memory_alert_ratio": 1.2, "monitoring_prometheus_retention": "two weeks",
        "monitoring_dcgm_exporter_image": "nvcr.io/nvidia/k8s/dcgm-exporter:latest"}, [
        "monitoring_node_exporter_port must be a port in 1-65535 (is 0)",
        "monitoring_dcgm_exporter_port must be a port in 1-65535 (is 65536)",
        "monitoring_gpu_memory_alert_ratio must be a fraction in (0, 1] (is 1.2)",
        "monitoring_prometheus_retention must be a Prometheus duration such as 15d or 12h (is 'two weeks')",
        "monitoring_dcgm_exporter_image must name a pinned image"]),
    # site.yml checks every layer's roles before the first layer: a bad value for the last layer stops it.
    "site.yml refuses a monitoring value before the first layer": ("site.yml", "monitoring", {
        "monitoring_gpu_temperature_alert_c": 0}, [
        "monitoring_gpu_temperature_alert_c must be 1-120 degrees C (is 0)"]),
    "site.yml refuses a serving value before the first layer": ("site.yml", "inference_server", {
        "inference_server_log_lines": 0}, [
        "inference_server_log_lines must be 1 or more lines (is 0)"]),
}
# The request is checked by preflight, which check_input runs on a host without facts (before it gathers any).
PREFLIGHT_CASES = {
    "preflight request of the wrong type": ("site.yml", "preflight", {"gpuinfra_request": ["deepseek-r1"]}, [
        "argument 'preflight_request' is of type list and we were unable to convert to dict"]),
    "preflight request types and choices": ("validate.yml", "preflight", {
        "gpuinfra_request": {"model": "deepseek-r1-distill-qwen-7b", "precision": "fp4", "concurency": 8}}, [
        "value of precision must be one of: bf16, fp16, fp8, int8, int4-awq, int4-gptq, got: fp4 found in "
        "preflight_request",
        "preflight_request.concurency. Supported parameters include"]),
    "preflight ranges": ("site.yml", "preflight", {
        "gpuinfra_nodes_per_copy": 0,
        "gpuinfra_request": {"model": "deepseek-r1-distill-qwen-7b", "concurrency": 0, "gpu_memory_utilization": 0}}, [
        "preflight_nodes_per_copy must be 1-64 nodes (is 0)",
        "preflight_request.concurrency must be 1 or more sequences (is 0)",
        "preflight_request.gpu_memory_utilization must be a fraction in (0, 1] (is 0)"]),
}


def assert_refused_by_the_checks(run: PlaybookRun, role: str, messages: list[str]) -> None:
    output = flat(run.output)
    assert run.returncode == 2, run.tail()
    for message in messages:
        assert message in output, f"missing {message!r}:\n{run.tail(60)}"
    # The layers' and site.yml's one check task files each message under its role.
    assert f"[{role}] " in output, run.tail(60)
    assert is_input_check(failing_task(run)), failing_task(run)
    ran = headers(run, "TASK")
    assert [task for task in ran if not is_input_check(task)] == [], ran
    assert set(headers(run, "PLAY")) <= {"Require hosts in the groups this playbook configures",
                                         "Check the input of the roles before anything changes"}, headers(run, "PLAY")
    assert run.changed() == {"node1": 0}, run.tail()


def test_the_cases_cover_more_than_sixteen_wrong_values_in_every_role():
    cases = {**CASES, **PREFLIGHT_CASES}
    assert sum(len(values) for _, _, values, _ in cases.values()) >= 16 * 2
    assert {role for _, role, _, _ in cases.values()} == set(ALL_ROLES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_wrong_values_are_refused_before_anything_changes(tmp_path, case):
    playbook, role, values, messages = CASES[case]
    run = ansible_playbook(tmp_path, PLAYBOOKS / playbook, inventory(tmp_path, {}), values)
    assert_refused_by_the_checks(run, role, messages)
    if playbook == "site.yml":
        assert "Host tuning and local NVMe" not in headers(run, "PLAY")


def test_site_reports_the_wrong_values_of_every_role_in_one_run(tmp_path):
    """One run names every wrong value of every role (types of one, ranges of others), not the first role's."""
    values = {"host_tuning_cpu_governor": "turbo", "nvme_raid_chunk_kib": 6, "fabric_rdma_gid_index": 256,
              "inference_server_port": 70000, "monitoring_gpu_temperature_alert_c": 0}
    run = ansible_playbook(tmp_path, PLAYBOOKS / "site.yml", inventory(tmp_path, {}), values)
    output = flat(run.output)
    assert run.returncode == 2, run.tail()
    for role, message in [("host_tuning", "value of host_tuning_cpu_governor must be one of"),
                          ("nvme_raid", "nvme_raid_chunk_kib must be 4 KiB or more and a multiple of 4 (is 6)"),
                          ("fabric", "fabric_rdma_gid_index must be a GID index in 0-255 (is 256)"),
                          ("inference_server", "inference_server_port must be a port in 1-65535 (is 70000)"),
                          ("monitoring", "monitoring_gpu_temperature_alert_c must be 1-120 degrees C (is 0)")]:
        assert f"[{role}] {message}" in output, (role, run.tail(60))
    assert [task for task in headers(run, "TASK") if not is_input_check(task)] == [], headers(run, "TASK")
    assert run.changed() == {"node1": 0}, run.tail()


@pytest.mark.parametrize("case", sorted(PREFLIGHT_CASES))
def test_a_wrong_request_is_refused_before_preflight_gathers_anything(tmp_path, case):
    playbook, role, values, messages = PREFLIGHT_CASES[case]
    run = ansible_playbook(tmp_path, PLAYBOOKS / playbook, inventory(tmp_path, values, with_hardware=False))
    output = flat(run.output)
    assert run.returncode == 2, run.tail()
    for message in messages:
        assert message in output, f"missing {message!r}:\n{run.tail(60)}"
    assert failing_task(run).startswith("preflight : ") and is_input_check(failing_task(run)), failing_task(run)
    assert not any(task.startswith("preflight : Gather") for task in headers(run, "TASK")), headers(run, "TASK")
    assert "Host tuning and local NVMe" not in headers(run, "PLAY")


# One wrong value per role, each role run on its own (its tasks/main.yml, as a playbook of someone else's
# would): every role refuses it in its first tasks, before its first change (nvidia_driver, cuda_toolkit and
# container_runtime before the NVIDIA repository they include is configured).
STANDALONE = {
    "preflight": ({"preflight_nodes_per_copy": 0}, "preflight_nodes_per_copy must be 1-64 nodes"),
    "host_tuning": ({"host_tuning_hugepages_per_core": 0}, "host_tuning_hugepages_per_core must be 1 or more"),
    "nvme_raid": ({"nvme_raid_chunk_kib": 2}, "nvme_raid_chunk_kib must be 4 KiB or more"),
    "node_expiry": ({"node_expiry_at": "tomorrow"}, "node_expiry_at must be a UTC time as YYYY-MM-DDTHH:MM:SSZ"),
    "nvidia_repository": ({"nvidia_repository_keyring": "keyring.asc"}, "nvidia_repository_keyring must be an "
                                                                          "absolute path"),
    "nvidia_driver": ({"nvidia_driver_branch": "r580"}, "nvidia_driver_branch must be a driver branch"),
    "cuda_toolkit": ({"cuda_toolkit_nccl_version": "2.26"}, "cuda_toolkit_nccl_version must be an NCCL version"),
    "fabric": ({"fabric_nccl_socket_ifname": "eth0 eth1"}, "fabric_nccl_socket_ifname must be an NCCL_SOCKET_IFNAME"),
    "container_runtime": ({"container_runtime_nvidia_toolkit_version": "1.17"},
                          "container_runtime_nvidia_toolkit_version must be a release"),
    "inference_server": ({"inference_server_master_port": 8000, "inference_server_port": 8000},
                         "inference_server_master_port must differ from inference_server_port"),
    "node_validation": ({"node_validation_min_hugepages": -1}, "node_validation_min_hugepages must be 0 or more"),
    "monitoring": ({"monitoring_dcgm_exporter_port": 9100, "monitoring_node_exporter_port": 9100},
                   "monitoring_dcgm_exporter_port must differ from monitoring_node_exporter_port"),
}


def test_every_role_refuses_a_wrong_value_in_its_first_tasks(tmp_path):
    assert set(STANDALONE) == set(ALL_ROLES)
    hosts = {f"node_{role}": {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                              "gpuinfra_role_under_test": role, **values}
             for role, (values, _) in STANDALONE.items()}
    path = tmp_path / "inventory.yml"
    path.write_text(yaml.safe_dump({"all": {"children": {"gpu_nodes": {"hosts": hosts, "vars": {
        "ansible_become": False, "gpuinfra_software": software(), "gpuinfra_constants": host_constants(),
        "gpuinfra_hardware": hardware(), "preflight_cpu_only": True}}}}}))
    book = tmp_path / "roles.yml"
    book.write_text(yaml.safe_dump([{"name": "Each role on its own", "hosts": "gpu_nodes", "gather_facts": False,
                                     "tasks": [{"name": "Run the role", "ansible.builtin.include_role": {
                                         "name": "{{ gpuinfra_role_under_test }}"}}]}]))
    run = ansible_playbook(tmp_path, book, path)
    assert run.returncode == 2, run.tail()
    assert {host: counts["failed"] for host, counts in run.recap.items()} == {host: 1 for host in hosts}, run.tail()
    assert all(counts["changed"] == 0 for counts in run.recap.values()), run.tail()
    for role, (_, message) in STANDALONE.items():
        failure = re.search(rf"^(?:fatal|failed): \[node_{role}\]: FAILED! =>(.*?)(?=^\S)", run.output, re.M | re.S)
        assert failure and message in flat(failure.group(1)), f"{role}: {message!r}\n{run.tail(80)}"
    ran = [task for task in headers(run, "TASK") if task != "Run the role"]
    assert [task for task in ran if not is_input_check(task) or task.startswith("preflight : Gather")] == [], ran


class _InventoryLoader(yaml.SafeLoader):
    """Reads `gpuinfra inventory` output: its strings carry Ansible's !unsafe tag (never templated)."""


_InventoryLoader.add_constructor("!unsafe", lambda loader, node: loader.construct_scalar(node))


@functools.cache
def _contract_vars(stack: str) -> str:
    with tempfile.TemporaryDirectory() as directory:
        subprocess.run([str(BIN / "gpuinfra"), "inventory", stack, "--output", directory], capture_output=True,
                       text=True, check=True)
        return (Path(directory) / "group_vars" / "gpu_nodes.yml").read_text()


def contract_vars(stack: str) -> dict:
    """The group variables `gpuinfra inventory STACK` writes; with several instance types, a host of the first."""
    variables = yaml.load(_contract_vars(stack), Loader=_InventoryLoader)
    variables.setdefault("gpuinfra_instance_type", variables["gpuinfra_instance_types"][0])
    return variables


ONPREM_VARS = yaml.safe_load((ANSIBLE_DIR / "inventories" / "onprem-example" / "group_vars" /
                              "gpu_nodes.yml").read_text())


@pytest.mark.parametrize("source", [*STACKS, "onprem-example"])
def test_the_shipped_inventories_pass_every_check(tmp_path, source):
    """Positive control: the stacks' generated inventory variables (the contract's request, plans, SLA, weights)
    and the on-prem example pass every role's argument spec and range checks with the roles' defaults."""
    group_vars = ONPREM_VARS if source == "onprem-example" else contract_vars(source)
    book = tmp_path / "checked.yml"
    book.write_text(yaml.safe_dump([
        {"ansible.builtin.import_playbook": str(PLAYBOOKS / "check_input.yml")},
        {"name": "Show the checked roles", "hosts": "gpu_nodes", "gather_facts": False,
         "tasks": [{"name": "Checked", "ansible.builtin.debug": {"var": "gpuinfra_checked_roles"}}]}]))
    run = ansible_playbook(tmp_path, book, inventory(tmp_path, {
        k: v for k, v in group_vars.items() if not k.startswith("ansible_")}),
        {"gpuinfra_check_roles": ALL_ROLES})
    assert run.returncode == 0, run.tail(60)
    shown = re.search(r"^ +gpuinfra_checked_roles:\n((?: +- .+\n)+)", run.output, re.M)
    assert shown and set(re.findall(r"- (\S+)", shown.group(1))) == set(ALL_ROLES), run.tail()
    assert run.changed() == {"node1": 0}, run.tail()


def suboptions(role: str, option: str) -> set[str]:
    spec = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    return set(spec["main"]["options"][option]["options"])


def test_the_nested_options_are_the_inventory_contract_key_for_key():
    """The shapes the argument specs enforce (unknown keys are refused) are those `gpuinfra inventory` writes."""
    group_vars = contract_vars("prod-r1")
    plan = next(iter(group_vars["gpuinfra_node_plans"].values()))
    assert suboptions("inference_server", "inference_server_plan") == set(plan["serving"])
    assert suboptions("preflight", "preflight_request") == set(group_vars["gpuinfra_request"])
    assert suboptions("preflight", "preflight_expected_hardware") == set(plan["hardware"])
    assert suboptions("node_validation", "node_validation_expected_hardware") == set(plan["hardware"])
    assert suboptions("node_validation", "node_validation_sla") == set(group_vars["gpuinfra_sla"])
    assert suboptions("monitoring", "monitoring_sla") == set(group_vars["gpuinfra_sla"])


def options_of(options: dict, prefix: str = ""):
    for name, option in options.items():
        yield prefix + name, option
        yield from options_of(option.get("options") or {}, f"{prefix}{name}.")


@pytest.mark.parametrize("role", ALL_ROLES)
def test_every_role_checks_its_input_first_and_offers_a_validate_entry_point(role):
    specs = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    assert specs["validate"]["options"] == specs["main"]["options"]
    assert [name for name, option in options_of(specs["main"]["options"]) if option.get("type", "str") == "raw"] == []
    tasks_files = {p.stem for p in (ROLES / role / "tasks").glob("*.yml")}
    used_as_entry_points = {m for p in [*PLAYBOOKS.glob("*.yml"), *ROLES.glob("*/tasks/*.yml")]
                            for m in re.findall(rf"name: {role}\n\s+tasks_from: (\w+)", p.read_text())}
    assert used_as_entry_points <= set(specs), used_as_entry_points - set(specs)
    assert used_as_entry_points <= tasks_files
    main = yaml.safe_load((ROLES / role / "tasks" / "main.yml").read_text())
    assert {key: main[0][key] for key in ("name", "ansible.builtin.import_tasks")} == {
        "name": "Check the input before anything runs", "ansible.builtin.import_tasks": "validate.yml"}
    # The only condition: check_input.yml has checked this role already in this run.
    assert set(main[0]) <= {"name", "ansible.builtin.import_tasks", "when", "tags"}
    if role != "preflight":
        assert main[0]["when"] == f"'{role}' not in gpuinfra_checked_roles | default([])"
    meta = yaml.safe_load((ROLES / role / "meta" / "main.yml").read_text())
    assert meta["dependencies"] == [], "a dependency would run before this role's input checks"


def test_every_layer_checks_before_its_play_and_site_runs_the_plays_after_one_check():
    """A layer playbook is its checks, then its play (<layer>_play.yml); site.yml runs the checks once for every
    layer, then the layers' plays, not the layer playbooks (whose checks would run again, as empty plays)."""
    def imports(playbook: str) -> list[str]:
        entries = yaml.safe_load((PLAYBOOKS / playbook).read_text())
        return [entry["ansible.builtin.import_playbook"] for entry in entries]
    plays = set()
    for layer in [layer for layer in LAYERS if layer != "site.yml"]:
        *checks, play = imports(layer)
        assert checks in (["require_group.yml", "check_input.yml"], ["require_group.yml"]), layer
        assert play == layer.replace(".yml", "_play.yml"), layer
        plays.add(play)
    site = imports("site.yml")
    assert site[:2] == ["require_group.yml", "check_input.yml"]
    assert set(site[2:]) == plays - {"expiry_play.yml"}, "expiry.yml's role runs in host_play.yml"
    assert {p.name for p in PLAYBOOKS.glob("*_play.yml")} == plays


def test_site_checks_the_roles_of_every_layer():
    site = yaml.safe_load((PLAYBOOKS / "site.yml").read_text())
    checked = {role for entry in site if entry.get("ansible.builtin.import_playbook") == "check_input.yml"
               for role in entry["vars"]["gpuinfra_check_roles"]}
    assert checked == set(ALL_ROLES) - {"preflight"}, "preflight checks its own input when check_input runs it"


# ---------------------------------------------------------------------------------------------- inventories


def test_an_unparsable_inventory_fails(tmp_path):
    path = tmp_path / "hosts.yml"
    path.write_text("all:\n  children:\n    gpu_nodes:\n      hosts:\n        node1: {ansible_host: 10.0.0.1\n")
    run = ansible_playbook(tmp_path, PLAYBOOKS / "site.yml", path)
    assert run.returncode != 0, run.tail()
    assert f"Completely failed to parse inventory source {path}" in run.output, run.tail()
    assert headers(run, "PLAY") == []


def test_a_missing_inventory_fails(tmp_path):
    run = ansible_playbook(tmp_path, PLAYBOOKS / "site.yml", tmp_path / "no-such-hosts.yml")
    assert run.returncode != 0, run.tail()
    assert "Completely failed to parse inventory source" in run.output, run.tail()
    assert headers(run, "PLAY") == []


NO_GPU_NODES = {"empty file": ("", "no such group"),
                "empty group": ("all:\n  children:\n    gpu_nodes:\n      hosts: {}\n", "the group is empty"),
                "no such group": ("all:\n  hosts:\n    other: {ansible_connection: local}\n", "no such group")}


def refused_for_no_gpu_nodes(tmp_path: Path, playbook: str, content: str, why: str) -> None:
    path = tmp_path / "hosts.yml"
    path.write_text(content)
    run = ansible_playbook(tmp_path, PLAYBOOKS / playbook, path)
    assert run.returncode == 2, run.tail()
    assert f"the inventory has no hosts in group gpu_nodes ({why}; inventory: {path})" in flat(run.output), run.tail()
    assert headers(run, "PLAY") == ["Require hosts in the groups this playbook configures"], run.tail()


@pytest.mark.parametrize("inventory_case", sorted(NO_GPU_NODES))
def test_site_without_gpu_nodes_fails_with_a_clear_message(tmp_path, inventory_case):
    refused_for_no_gpu_nodes(tmp_path, "site.yml", *NO_GPU_NODES[inventory_case])


@pytest.mark.parametrize("layer", [layer for layer in LAYERS if layer != "site.yml"])
def test_every_layer_with_an_empty_gpu_nodes_group_fails_with_a_clear_message(tmp_path, layer):
    refused_for_no_gpu_nodes(tmp_path, layer, *NO_GPU_NODES["empty group"])
