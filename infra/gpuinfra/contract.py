"""The contract between provisioning and host configuration: what each node should have (from the
catalog) and how it should serve (from the sizing engine). Stack outputs carry it; `gpuinfra inventory`
turns it into Ansible variables; the Ansible roles read it instead of re-deriving anything."""

from __future__ import annotations

from typing import Any

from gpuinfra.boot import DEFAULT_MOUNT, INSTANCE_STORE_MODEL, RAID_ENV_PATH, RAID_SCRIPT_PATH, RAID_UNIT_NAME
from gpuinfra.catalog import InstanceType, find_gpu
from gpuinfra.config import DEFAULT_SERVING_PORT, ResolvedCluster
from gpuinfra.efa import efa_interfaces
from gpuinfra.request import ServingRequest
from gpuinfra.sizing import Evaluation, Precision, SizingRequest

# vLLM's --quantization for weights stored in another precision than the checkpoint's.
VLLM_QUANTIZATION = {Precision.FP8: "fp8", Precision.INT4_AWQ: "awq", Precision.INT4_GPTQ: "gptq"}
NODE_GROUP = "gpu_nodes"
# A GPU shows a little less memory than its catalog size (ECC, the driver's reservation): preflight and
# node acceptance accept this fraction of it.
GPU_MEMORY_TOLERANCE = 0.97
# Where the roles keep the files they share: the fabric role writes the NCCL environment there, and the
# inference server's unit reads it.
HOST_CONFIG_DIR = "/etc/gpuinfra"


def host_constants() -> dict[str, Any]:
    """The constants the hosts need, defined once on this side and exported as `gpuinfra_constants` (the
    preflight role carries a copy for inventories that do not: tests/ansible/test_constants.py keeps it equal)."""
    return {
        "gpu_memory_tolerance": GPU_MEMORY_TOLERANCE,
        "instance_store_model": INSTANCE_STORE_MODEL,
        "raid_mount": DEFAULT_MOUNT,
        "serving_port": DEFAULT_SERVING_PORT,
        "config_dir": HOST_CONFIG_DIR,
        "nccl_env_file": f"{HOST_CONFIG_DIR}/nccl.env",
        # The boot-time RAID of the instance store: EC2 user data installs the same script and unit.
        "raid_script": RAID_SCRIPT_PATH,
        "raid_unit": RAID_UNIT_NAME,
        "raid_settings": RAID_ENV_PATH,
    }


def expected_hardware(instance: InstanceType) -> dict[str, Any]:
    gpu = find_gpu(instance.gpu)
    return {
        "instance_type": instance.name,
        "gpu": gpu.name,
        "gpu_aliases": [gpu.name, *gpu.aliases],
        "gpu_count": instance.gpus,
        "gpu_memory_gib": gpu.memory_gib,
        "compute_capability": gpu.compute_capability,
        "memory_bandwidth_gbs": gpu.memory_bandwidth_gbs,
        "bf16_dense_tflops": gpu.bf16_dense_tflops,
        "nvlink_gbs_bidir": gpu.nvlink_gbs_bidir,
        "nvswitch": instance.nvswitch,
        "vcpus": instance.vcpus,
        "ram_gib": instance.ram_gib,
        "nvme_count": instance.nvme.count,
        "nvme_gb_each": instance.nvme.gb_each,
        "efa_devices": sum(1 for spec in efa_interfaces(instance) if spec.interface_type != "interface"),
    }


def serving_plan(request: SizingRequest, evaluation: Evaluation, *, port: int, hf_repo: str | None) -> dict[str, Any]:
    native = request.model.architecture.native_precision
    precision = request.effective_precision
    return {
        "engine": "vllm",
        "hf_repo": hf_repo,
        "served_model_name": request.model.name,
        "tensor_parallel": evaluation.tensor_parallel,
        "pipeline_parallel": evaluation.pipeline_parallel,
        "data_parallel": evaluation.data_parallel,
        "expert_parallel": evaluation.expert_parallel,
        "enable_expert_parallel": evaluation.expert_parallel > 1,
        "replicas_per_node": max(1, evaluation.replicas // max(1, evaluation.nodes)),
        "nodes": evaluation.nodes,
        "max_model_len": request.context_tokens,
        "max_num_seqs": evaluation.max_num_seqs,
        "gpu_memory_utilization": request.gpu_memory_utilization,
        "max_num_batched_tokens": evaluation.max_num_batched_tokens,
        "quantization": VLLM_QUANTIZATION.get(precision) if precision.value != native else None,
        "kv_cache_dtype": request.kv_cache_dtype,
        "port": port,
    }


def requirements(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "gpus_per_node": evaluation.gpus_per_node,
        "gpus_needed_per_node": min(evaluation.gpus_per_node, evaluation.tensor_parallel
                                    * evaluation.pipeline_parallel * evaluation.data_parallel
                                    // max(1, evaluation.nodes)),
        "weights_gib_per_gpu": evaluation.per_gpu.weights_gib,
        "kv_cache_gib_per_gpu": evaluation.per_gpu.kv_cache_gib,
        "host_ram_gib": evaluation.host_ram_gib_required,
        "nvme_gib": evaluation.nvme_gib_required,
        "vcpus": evaluation.host.vcpus_required,
        "rdma": evaluation.needs_rdma,
    }


def node_plans(cluster: ResolvedCluster) -> dict[str, dict[str, Any]]:
    """Per launchable instance type: expected hardware, requirements and the serving plan."""
    from gpuinfra.catalog import find_model

    hf_repo = find_model(cluster.config.model).hf_repo
    return {
        instance.name: {
            "hardware": expected_hardware(instance),
            "requirements": requirements(evaluation),
            "serving": serving_plan(cluster.request, evaluation, port=cluster.config.endpoint.port, hf_repo=hf_repo),
        }
        for instance, evaluation in zip(cluster.instance_types, cluster.evaluations, strict=True)
    }


def stack_contract(cluster: ResolvedCluster) -> dict[str, Any]:
    """Everything the outputs carry that does not depend on a created resource."""
    config = cluster.config
    return {
        "stack": cluster.stack,
        "region": config.region,
        "node_tag": {"gpuinfra:stack": cluster.stack},
        "nodes": config.nodes,
        "nodes_per_copy": cluster.nodes_per_copy,
        "copies": cluster.copies,
        "capacity": config.capacity.type,
        "instance_types": [i.name for i in cluster.instance_types],
        "request": ServingRequest.of(cluster.request).to_dict(),
        "weights": {"source": config.weights.source, "revision": config.weights.revision,
                    "local_dir": f"{DEFAULT_MOUNT}/models"},
        "node_plans": node_plans(cluster),
        "sla": config.sla.model_dump(mode="json"),
    }
