"""The inference server's command line, from the sizing engine's serving plan (one place for both engines).

`serve_argv` turns the plan (`gpuinfra_node_plans[type].serving`, or `gpuinfra_sizing.serving` on-prem) into
the argv of `vllm serve` or SGLang's launch_server for one node of a copy; `systemd_exec` quotes it for an
ExecStart= line. Pure functions: tests import them directly.

One file, two users: the inference_server role's filter plugin is a symlink to this module (Ansible loads it
by path, so it needs nothing but the standard library), and the Kubernetes path imports it as
gpuinfra.serving_command for the container's command line.
"""

from __future__ import annotations

try:
    from ansible.errors import AnsibleFilterError
except ImportError:  # imported by tests without Ansible's plugin loader
    AnsibleFilterError = ValueError  # type: ignore[misc,assignment]

REQUIRED = ("served_model_name", "tensor_parallel", "pipeline_parallel", "max_model_len", "max_num_seqs",
            "gpu_memory_utilization", "max_num_batched_tokens", "port")
# SGLang names the FP8 KV cache by its format; vLLM's "fp8" is E4M3.
SGLANG_KV_CACHE = {"fp8": "fp8_e4m3", "fp8_e4m3": "fp8_e4m3", "fp8_e5m2": "fp8_e5m2"}


def serve_argv(plan: dict, engine: str, venv: str, model_dir: str, *, node_rank: int = 0,
               head_address: str = "", master_port: int = 29501, port: int | None = None,
               extra_args: list | None = None) -> list[str]:
    missing = [key for key in REQUIRED if plan.get(key) in (None, "")]
    if missing:
        raise AnsibleFilterError(f"the serving plan lacks {', '.join(missing)}: run preflight or pass "
                                 "inference_server_plan from `gpuinfra size ... --json` (its 'serving' key)")
    nodes = int(plan.get("nodes") or 1)
    data_parallel = int(plan.get("data_parallel") or 1)
    if nodes > 1 and data_parallel > 1:
        raise AnsibleFilterError(f"the plan spans {nodes} nodes with data parallel {data_parallel}: a copy over "
                                 "several nodes is one replica; replicate with more copies instead")
    if nodes > 1 and not head_address:
        raise AnsibleFilterError("a plan over several nodes needs the head node's address")
    if not 0 <= node_rank < nodes:
        raise AnsibleFilterError(f"node rank {node_rank} is outside a copy of {nodes} nodes")
    port = int(port or plan["port"])
    kv_cache = plan.get("kv_cache_dtype") or "auto"
    if engine == "vllm":
        argv = [f"{venv}/bin/vllm", "serve", model_dir, "--served-model-name", plan["served_model_name"],
                "--host", "0.0.0.0", "--port", str(port),
                "--tensor-parallel-size", str(plan["tensor_parallel"]),
                "--pipeline-parallel-size", str(plan["pipeline_parallel"])]
        if data_parallel > 1:
            argv += ["--data-parallel-size", str(data_parallel)]
        if plan.get("enable_expert_parallel"):
            argv += ["--enable-expert-parallel"]
        argv += ["--max-model-len", str(plan["max_model_len"]), "--max-num-seqs", str(plan["max_num_seqs"]),
                 "--max-num-batched-tokens", str(plan["max_num_batched_tokens"]),
                 "--gpu-memory-utilization", str(plan["gpu_memory_utilization"])]
        if plan.get("quantization"):
            argv += ["--quantization", plan["quantization"]]
        if kv_cache != "auto":
            argv += ["--kv-cache-dtype", kv_cache]
        if nodes > 1:
            # vLLM >= 0.18 spans nodes with its own multiprocessing executor: every node runs the same command,
            # rank 0 serves the API, the others join headless.
            argv += ["--distributed-executor-backend", "mp", "--nnodes", str(nodes), "--node-rank", str(node_rank),
                     "--master-addr", head_address, "--master-port", str(master_port)]
            if node_rank > 0:
                argv += ["--headless"]
    elif engine == "sglang":
        argv = [f"{venv}/bin/python", "-m", "sglang.launch_server", "--model-path", model_dir,
                "--served-model-name", plan["served_model_name"], "--host", "0.0.0.0", "--port", str(port),
                "--tp-size", str(plan["tensor_parallel"]), "--pp-size", str(plan["pipeline_parallel"])]
        if data_parallel > 1:
            argv += ["--dp-size", str(data_parallel)]
        if plan.get("enable_expert_parallel"):
            argv += ["--ep-size", str(plan.get("expert_parallel") or plan["tensor_parallel"])]
        argv += ["--context-length", str(plan["max_model_len"]), "--max-running-requests", str(plan["max_num_seqs"]),
                 "--chunked-prefill-size", str(plan["max_num_batched_tokens"]),
                 "--mem-fraction-static", str(plan["gpu_memory_utilization"])]
        if plan.get("quantization"):
            argv += ["--quantization", plan["quantization"]]
        if kv_cache != "auto":
            if kv_cache not in SGLANG_KV_CACHE:
                raise AnsibleFilterError(f"SGLang has no KV cache dtype {kv_cache}")
            argv += ["--kv-cache-dtype", SGLANG_KV_CACHE[kv_cache]]
        if nodes > 1:
            argv += ["--nnodes", str(nodes), "--node-rank", str(node_rank),
                     "--dist-init-addr", f"{head_address}:{master_port}"]
    else:
        raise AnsibleFilterError(f"unknown engine {engine!r}: vllm or sglang")
    return argv + [str(arg) for arg in (extra_args or [])]


def copy_placement(hosts: list[str], host: str, nodes: int) -> dict:
    """Consecutive groups of `nodes` hosts form one copy of the model; the first of each is its head."""
    nodes = max(1, int(nodes))
    if host not in hosts:
        raise AnsibleFilterError(f"{host} is not among the serving hosts {hosts}")
    if len(hosts) % nodes:
        raise AnsibleFilterError(f"{len(hosts)} serving hosts do not split into copies of {nodes} nodes")
    position = hosts.index(host)
    first = position - position % nodes
    return {"rank": position % nodes, "copy": position // nodes, "head": hosts[first],
            "peers": hosts[first:first + nodes]}


def systemd_exec(argv: list[str]) -> str:
    """An ExecStart= value: each word double-quoted, with systemd's specifiers and variables escaped."""
    def quote(word: str) -> str:
        escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
        return f'"{escaped}"'
    return " ".join(quote(str(word)) for word in argv)


class FilterModule:
    def filters(self):
        return {"serve_argv": serve_argv, "systemd_exec": systemd_exec, "copy_placement": copy_placement}
