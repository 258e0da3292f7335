"""The calibration queue: every engine configuration in its own subprocess, within one device call's time budget.

On the device machine (vLLM carried to /tmp/site, see /work/shared/tools/vllm-on-device/README.md):

    PYTHONPATH=/tmp/site python3 benchmarks/vllm_calibration/run_all.py --budget 500 --out $OUT

Runs the pending specs in priority order (SPECS below) while their estimated time fits the budget; each one gets
a timeout (its own, cut to what is left), a log (stdout + stderr) and a result JSON. State lives in /tmp/calib,
which survives between calls while the machine stays warm, so the next call goes on where this one stopped.
Each call writes to --out: results.json (every result so far), logs-<n>.tar.xz (this call's logs and raw
result files), env.txt (machine and versions, first call) and summary.txt.
`--dry-run` runs each spec's engine_run.py --dry-run (no vLLM, no GPU) and prints the plan.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STATE = Path(os.environ.get("CALIB_STATE", "/tmp/calib"))
CFG = "benchmarks/vllm_calibration/configs"

ENV = {"VLLM_USE_FLASHINFER_SAMPLER": "0", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NO_USAGE_STATS": "1",
       "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
       "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}

BASE = {"dtype": "bfloat16", "gpu_memory_utilization": 0.90, "max_model_len": 32768,
        "max_num_batched_tokens": 8192, "max_num_seqs": 256, "enforce_eager": False}

CLOSED = {"concurrency": [1, 32, 128], "input_len": 1024, "output_len": 256}
PREFILL = {"prompt_lens": [512, 1024, 2048, 4096, 8192, 16384], "repeats": 3}


def decode(points: dict, max_prefill_tokens: int) -> dict:
    return {"points": points, "decode_steps": 24, "max_prefill_tokens": max_prefill_tokens}


ALL_B = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def spec(name: str, config: str, est_s: int, timeout_s: int, workloads: dict | None = None, **overrides) -> dict:
    return {"name": name, "model_config": f"{CFG}/{config}.json", **BASE, **overrides,
            "workloads": workloads or {}, "est_s": est_s, "timeout_s": timeout_s}


# Priority order. "s-" specs: CUDA-graph mode (vLLM's default) with the speed workloads; their memory figures are
# the CUDA-graph column. "m-" specs: memory only (a 16-token smoke request), eager unless named "-cg".
SPECS = [
    spec("s-llama-8b", "llama-8b", 150, 290, {
        "closed_batch": CLOSED, "prefill_sweep": PREFILL,
        "decode_sweep": decode({"1024": ALL_B, "8192": [1, 2, 4, 8, 16, 32, 64]}, 600_000)}),
    spec("s-qwen-1.5b", "qwen-1.5b", 110, 240, {
        "closed_batch": CLOSED, "prefill_sweep": PREFILL,
        "decode_sweep": decode({"1024": ALL_B, "8192": [1, 2, 4, 8, 16, 32, 64, 128]}, 1_100_000)}),
    spec("s-qwen-32b", "qwen-32b", 220, 330, {
        "closed_batch": CLOSED, "prefill_sweep": PREFILL,
        "decode_sweep": decode({"1024": [1, 4, 16, 64, 128], "8192": [1, 4, 16]}, 220_000)}),
    spec("s-llama-70b-fp8", "llama-70b", 220, 330, {
        "closed_batch": CLOSED, "prefill_sweep": {"prompt_lens": [1024, 4096, 16384], "repeats": 2},
        "decode_sweep": decode({"1024": [1, 16, 64, 128], "8192": [1, 8]}, 160_000)},
        quantization="fp8", gpu_memory_utilization=0.95),
    {"name": "serve-qwen-7b", "kind": "serve", "est_s": 170, "timeout_s": 280},
    # "t-" specs (second session): the closed batches again, each repeated after a warm-up prompt of the batch's
    # length, and a finer prefill sweep below 4096 tokens, where the 1.5B model ran slower per token than above.
    spec("t-qwen-1.5b", "qwen-1.5b", 100, 220, {
        "closed_batch": {**CLOSED, "warmup": True, "repeats": 5},
        "prefill_sweep": {"prompt_lens": [256, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144], "repeats": 5}}),
    spec("t-llama-8b", "llama-8b", 130, 260, {
        "closed_batch": {**CLOSED, "warmup": True, "repeats": 3},
        "prefill_sweep": {"prompt_lens": [256, 512, 1024, 2048], "repeats": 5},
        "decode_sweep": decode({"1024": [16, 24, 32, 48], "1280": [32]}, 600_000)}),
    # The launch-bound hypothesis: prefill steps above the largest CUDA-graph size run without graphs. Capturing
    # graphs up to 2048 tokens should bring the 1.5B's 1024-token prefill down if it holds.
    spec("t-qwen-1.5b-cg2048", "qwen-1.5b", 110, 240, {
        "closed_batch": {"concurrency": [1], "input_len": 1024, "output_len": 256, "warmup": True, "repeats": 5},
        "prefill_sweep": {"prompt_lens": [512, 1024, 1536, 2048, 4096], "repeats": 5}},
        compilation_config={"max_cudagraph_capture_size": 2048}),
    # Why a lone request's first token comes ~9 ms after its prefill step: a 2-token answer, and the same batch
    # without async scheduling (the engine returns step N's output after launching step N+1).
    spec("t-qwen-1.5b-out2", "qwen-1.5b", 75, 200, {
        "closed_batch": {"concurrency": [1], "input_len": 1024, "output_len": 2, "warmup": True, "repeats": 7}}),
    spec("t-qwen-1.5b-sync", "qwen-1.5b", 75, 200, {
        "closed_batch": {"concurrency": [1], "input_len": 1024, "output_len": 256, "warmup": True, "repeats": 5},
        "prefill_sweep": {"prompt_lens": [512, 1024], "repeats": 5}}, async_scheduling=False),
    spec("m-llama-8b", "llama-8b", 30, 120, enforce_eager=True),
    spec("m-qwen-1.5b", "qwen-1.5b", 30, 120, enforce_eager=True),
    spec("m-qwen-32b", "qwen-32b", 35, 120, enforce_eager=True),
    spec("m-qwen-7b", "qwen-7b", 30, 120, enforce_eager=True),
    spec("m-qwen-14b", "qwen-14b", 30, 120, enforce_eager=True),
    spec("m-llama-8b-fp8", "llama-8b", 35, 120, enforce_eager=True, quantization="fp8"),
    spec("m-llama-8b-kvfp8", "llama-8b", 30, 120, enforce_eager=True, kv_cache_dtype="fp8"),
    # DeepGEMM JIT-compiles ~2,000 kernels at start ("relax" warm-up): the first MLA run spent > 2 min there.
    spec("m-mla-v3-8l", "deepseek-v3-8l", 70, 200, enforce_eager=True, env={"VLLM_DEEP_GEMM_WARMUP": "skip"}),
    spec("m-llama-8b-mnbt2048", "llama-8b", 30, 120, enforce_eager=True, max_num_batched_tokens=2048),
    spec("m-llama-8b-mnbt16384", "llama-8b", 30, 120, enforce_eager=True, max_num_batched_tokens=16384),
    spec("m-llama-8b-mnbt32768", "llama-8b", 30, 120, enforce_eager=True, max_num_batched_tokens=32768),
    spec("m-llama-8b-mml4096", "llama-8b", 30, 120, enforce_eager=True, max_model_len=4096),
    spec("m-llama-8b-mml131072", "llama-8b", 30, 120, enforce_eager=True, max_model_len=131072),
    spec("m-qwen-32b-fp8", "qwen-32b", 40, 120, enforce_eager=True, quantization="fp8"),
    spec("m-mla-v3-8l-kvfp8", "deepseek-v3-8l", 60, 150, enforce_eager=True, kv_cache_dtype="fp8",
         env={"VLLM_DEEP_GEMM_WARMUP": "skip"}),
    spec("m-llama-70b-fp8", "llama-70b", 45, 150, enforce_eager=True, quantization="fp8",
         gpu_memory_utilization=0.95),
    spec("m-llama-8b-gmu95", "llama-8b", 30, 120, enforce_eager=True, gpu_memory_utilization=0.95),
    # Issue 15, prepared and never run (no multi-GPU kind lent so far): per-rank memory and speed at TP 2/4/8.
    # A spec needing more GPUs than the machine has is skipped, and says so.
    *[spec(f"p-llama-70b-tp{tp}", "llama-70b", 150, 330, {"closed_batch": CLOSED}, tensor_parallel_size=tp)
      for tp in (2, 4, 8)],
    *[spec(f"p-llama-70b-fp8-tp{tp}", "llama-70b", 150, 330, {"closed_batch": CLOSED}, tensor_parallel_size=tp,
           quantization="fp8") for tp in (2, 4, 8)],
    *[spec(f"p-qwen-32b-tp{tp}", "qwen-32b", 120, 300, {"closed_batch": CLOSED}, tensor_parallel_size=tp)
      for tp in (2, 4, 8)],
    *[spec(f"p-mla-v3-8l-tp{tp}", "deepseek-v3-8l", 90, 240, tensor_parallel_size=tp, enforce_eager=True,
           env={"VLLM_DEEP_GEMM_WARMUP": "skip"}) for tp in (2, 4, 8)],
]


def gpus_needed(item: dict) -> int:
    return int(item.get("tensor_parallel_size") or 1)


def gpus_here() -> int:
    """GPUs on this machine (nvidia-smi -L); 0 when there is none."""
    try:
        listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in listed.splitlines() if line.startswith("GPU "))


def load_state() -> dict:
    path = STATE / "state.json"
    return json.loads(path.read_text()) if path.exists() else {"results": {}, "calls": 0}


def save_state(state: dict) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / "state.json").write_text(json.dumps(state, indent=1, default=str))


def capture_env(path: Path) -> None:
    commands = [["nvidia-smi"], ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,pcie.link.gen.max,"
                                  "clocks.max.sm,clocks.max.mem,power.limit,compute_cap", "--format=csv"],
                ["uname", "-a"], ["nproc"], ["free", "-g"],
                [sys.executable, "-c",
                 "import torch,sys; print('python', sys.version.split()[0]); print('torch', torch.__version__, "
                 "'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version()); "
                 "f,t=torch.cuda.mem_get_info(); print('mem_get_info total', t, 'free', f, "
                 "'GiB %.3f' % (t/2**30)); print('device', torch.cuda.get_device_name(0), "
                 "torch.cuda.get_device_capability(0)); import torch.cuda.nccl as n; print('nccl', n.version())"],
                [sys.executable, "-c", "import vllm, transformers, tokenizers, triton; print('vllm', vllm.__version__,"
                 " 'transformers', transformers.__version__, 'tokenizers', tokenizers.__version__, 'triton', "
                 "triton.__version__)"],
                ["ls", "-la", "/usr/bin/python3"]]
    with path.open("w") as handle:
        for command in commands:
            handle.write(f"$ {' '.join(command)}\n")
            try:
                done = subprocess.run(command, capture_output=True, text=True, timeout=90)
                handle.write(done.stdout + done.stderr + "\n")
            except Exception as exc:
                handle.write(f"failed: {exc}\n")


def run_one(item: dict, timeout: float, dry_run: bool) -> dict:
    runs = STATE / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    name = item["name"]
    log, out, spec_file = runs / f"{name}.log", runs / f"{name}.json", runs / f"{name}.spec.json"
    spec_file.write_text(json.dumps(item, indent=1))
    if item.get("kind") == "serve":
        command = [sys.executable, str(HERE / "serve_run.py"), "--out", str(out), "--workdir", str(STATE / "serve"),
                   "--budget", str(int(timeout) - 15)]
    else:
        command = [sys.executable, str(HERE / "engine_run.py"), "--spec", str(spec_file), "--out", str(out)]
    if dry_run:
        command.append("--dry-run")
    env = {**os.environ, **ENV, **item.get("env", {})}
    started = time.monotonic()
    with log.open("w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
        try:
            rc = process.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            rc = process.returncode
    # anything the run left (compile workers; a server in its own session) goes with its process group
    pid_files = [STATE / "serve" / "server.pid"]
    groups = [process.pid] + [int(p.read_text()) for p in pid_files if p.exists()]
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, signal.SIGKILL)
    for p in pid_files:
        p.unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    result = json.loads(out.read_text()) if out.exists() else {"name": name}
    result.update(rc=rc, timed_out=timed_out, elapsed_s=round(elapsed, 1))
    if rc != 0 and result.get("status") not in ("done", "dry-run"):
        tail = log.read_text(errors="replace").splitlines()[-25:]
        result["log_tail"] = tail
    out.write_text(json.dumps(result, indent=1, default=str))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, required=True, help="seconds this call may spend on runs")
    parser.add_argument("--out", required=True)
    parser.add_argument("--only", default="", help="comma-separated spec names (default: all pending)")
    parser.add_argument("--skip", default="", help="comma-separated spec names already measured")
    parser.add_argument("--retry-failed", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state = load_state()
    state["calls"] += 1
    call = state["calls"]
    if not args.dry_run and not (STATE / "env.txt").exists():
        STATE.mkdir(parents=True, exist_ok=True)
        capture_env(STATE / "env.txt")
        (out / "env.txt").write_text((STATE / "env.txt").read_text())
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    ran = []
    gpus = 8 if args.dry_run else gpus_here()
    for item in SPECS:
        name = item["name"]
        if (only and name not in only) or name in skip:
            continue
        if gpus_needed(item) > gpus:
            print(f"-- {name}: needs {gpus_needed(item)} GPUs, this machine has {gpus}", flush=True)
            continue
        previous = state["results"].get(name)
        if previous and (previous.get("status") == "done" or not args.retry_failed):
            continue
        left = deadline - time.monotonic()
        if item["est_s"] > left - 5:
            print(f"-- {name}: est {item['est_s']} s > {left:.0f} s left, later", flush=True)
            continue
        timeout = min(item["timeout_s"], left - 5)
        print(f"== {name} (timeout {timeout:.0f} s)", flush=True)
        result = run_one(item, timeout, args.dry_run)
        state["results"][name] = result
        save_state(state)
        ran.append(name)
        mem = result.get("memory") or {}
        print(f"   {name}: status={result.get('status')} rc={result.get('rc')} {result.get('elapsed_s')} s "
              f"weights={mem.get('weights_bytes')} kv={mem.get('available_kv_cache_memory_bytes')} "
              f"tokens={mem.get('kv_tokens')}", flush=True)
        for line in result.get("log_tail", [])[-8:]:
            print("   |", line[:300], flush=True)
    (out / "results.json").write_text(json.dumps(state, indent=1, default=str))
    with tarfile.open(out / f"logs-{call}.tar.xz", "w:xz") as tar:
        for name in ran:
            for suffix in (".log", ".json", ".spec.json"):
                path = STATE / "runs" / f"{name}{suffix}"
                if path.exists():
                    tar.add(path, arcname=f"runs/{path.name}")
        if (STATE / "serve").exists():
            for path in (STATE / "serve").glob("*"):
                if path.is_file() and path.suffix in (".log", ".json", ".txt"):
                    tar.add(path, arcname=f"serve/{path.name}")
    pending = [i["name"] for i in SPECS if i["name"] not in state["results"] and gpus_needed(i) <= gpus]
    summary = f"call {call}: ran {ran}; pending {pending}\n"
    (out / "summary.txt").write_text(summary)
    print(summary, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
