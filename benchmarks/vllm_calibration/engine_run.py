"""One vLLM engine configuration in this process: memory figures, then the speed workloads its spec names.

Runs on the device machine (vLLM 0.26.0 carried to /tmp/site), started by run_all.py once per configuration so each
memory figure comes from a fresh CUDA context:

    PYTHONPATH=/tmp/site python3 engine_run.py --spec SPEC.json --out RESULT.json

Weights are random (`load_format="dummy"` on a folder holding only the config.json); prompts are random token ids,
distinct per request, so prefix caching never hits. The engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0)
and is driven through `LLMEngine.add_request` / `step()`, the loop `LLM.generate` itself runs; every timestamp is
taken in this process after `step()` returns, i.e. what a streaming client beside the engine would see.
The result JSON is rewritten after every workload, so a run stopped by its timeout keeps what it finished.
`--dry-run` checks the spec and prints what would run, without importing vLLM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

GiB = 1 << 30
MODEL_ROOT = Path(os.environ.get("CALIB_MODEL_ROOT", "/tmp/calib/models"))

ENGINE_KEYS = ("dtype", "quantization", "kv_cache_dtype", "enforce_eager", "gpu_memory_utilization",
               "max_model_len", "max_num_batched_tokens", "max_num_seqs", "enable_prefix_caching",
               "compilation_config", "async_scheduling", "tensor_parallel_size", "seed")


def engine_kwargs(spec: dict) -> dict:
    kwargs = {key: spec[key] for key in ENGINE_KEYS if spec.get(key) is not None}
    kwargs.setdefault("seed", 0)
    return kwargs


def prepare_model_dir(spec: dict, repo: Path) -> Path:
    model_dir = MODEL_ROOT / spec["name"]
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(repo / spec["model_config"], model_dir / "config.json")
    return model_dir


def random_prompts(rng: random.Random, count: int, length: int, vocab: int) -> list[list[int]]:
    return [[rng.randrange(100, vocab - 100) for _ in range(length)] for _ in range(count)]


class Driver:
    """Submits a batch of requests at once and steps the engine until all finish, timing every token."""

    def __init__(self, llm, vocab: int):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.engine = llm.llm_engine
        self.vocab = vocab
        self.rng = random.Random(1234)
        self.counter = 0
        self.SamplingParams, self.DELTA = SamplingParams, RequestOutputKind.DELTA

    def run(self, count: int, prompt_len: int, max_tokens: int) -> dict:
        prompts = random_prompts(self.rng, count, prompt_len, self.vocab)
        params = self.SamplingParams(max_tokens=max_tokens, ignore_eos=True, temperature=0.0,
                                     output_kind=self.DELTA, detokenize=False)
        ids = []
        started = time.perf_counter()
        for prompt in prompts:
            self.counter += 1
            rid = f"r{self.counter}"
            self.engine.add_request(rid, {"prompt_token_ids": prompt}, params)
            ids.append(rid)
        submitted = time.perf_counter()
        state = {rid: {"first": None, "last": None, "tokens": 0, "done": None, "metrics": None} for rid in ids}
        steps = []  # (seconds since start, requests with new tokens, new tokens)
        while self.engine.has_unfinished_requests():
            outputs = self.engine.step()
            now = time.perf_counter()
            with_tokens = new_tokens = 0
            for out in outputs:
                request = state.get(out.request_id) or state.get(str(out.request_id).rsplit("-", 1)[0])
                if request is None:
                    continue
                got = len(out.outputs[0].token_ids) if out.outputs else 0
                if got:
                    with_tokens += 1
                    new_tokens += got
                    if request["first"] is None:
                        request["first"] = now
                    request["last"] = now
                    request["tokens"] += got
                if out.finished:
                    request["done"] = now
                    metrics = getattr(out, "metrics", None)
                    if metrics is not None and hasattr(metrics, "first_token_latency"):
                        request["metrics"] = {"first_token_latency": metrics.first_token_latency,
                                              "decode_s": metrics.last_token_ts - metrics.first_token_ts,
                                              "num_generation_tokens": metrics.num_generation_tokens}
            steps.append((now - started, with_tokens, new_tokens))
        finished = time.perf_counter()
        return summarize_batch(state, steps, started, submitted, finished, count, prompt_len, max_tokens)


def repeated_batch(driver: Driver, concurrency: int, input_len: int, output_len: int, repeats: int) -> dict:
    """The closed batch REPEATS times: the repeat of median wall time, with every repeat's TTFT p99, mean ITL
    and output tokens/s beside it (their spread is the measurement's noise)."""
    runs = [driver.run(concurrency, input_len, output_len) for _ in range(repeats)]
    row = dict(sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2])
    if repeats > 1:
        row["repeats"] = [{"wall_s": r["wall_s"], "ttft_p99_s": r["ttft_s"]["p99"], "itl_mean_s": r["itl_s"]["mean"],
                           "output_tokens_per_s": r["output_tokens_per_s"]} for r in runs]
    return row


def _stats(values: list[float]) -> dict | None:
    if not values:
        return None
    ordered = sorted(values)
    return {"mean": statistics.fmean(ordered), "p50": ordered[len(ordered) // 2],
            "p99": ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)], "min": ordered[0], "max": ordered[-1]}


def summarize_batch(state: dict, steps: list, started: float, submitted: float, finished: float, count: int,
                    prompt_len: int, max_tokens: int) -> dict:
    requests = list(state.values())
    ttfts = [r["first"] - started for r in requests if r["first"] is not None]
    itls = [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in requests if r["tokens"] > 1]
    engine_ttft = [r["metrics"]["first_token_latency"] for r in requests if r["metrics"]]
    engine_itl = [r["metrics"]["decode_s"] / (r["metrics"]["num_generation_tokens"] - 1)
                  for r in requests if r["metrics"] and r["metrics"]["num_generation_tokens"] > 1]
    output_tokens = sum(r["tokens"] for r in requests)
    wall = finished - started
    # Pure decode steps: every request of the batch got a token in that step (no prefill chunk in it).
    durations = [(steps[i][0] - steps[i - 1][0]) for i in range(1, len(steps)) if steps[i][1] == count
                 and steps[i - 1][1] == count]
    return {
        "requests": count, "prompt_len": prompt_len, "max_tokens": max_tokens,
        "wall_s": wall, "submit_s": submitted - started, "steps": len(steps),
        "output_tokens": output_tokens, "output_tokens_per_s": output_tokens / wall if wall > 0 else None,
        "all_tokens_ok": all(r["tokens"] == max_tokens for r in requests),
        "ttft_s": _stats(ttfts), "itl_s": _stats(itls),
        "engine_ttft_s": _stats(engine_ttft), "engine_itl_s": _stats(engine_itl),
        "pure_decode_step_s": _stats(durations), "pure_decode_steps": len(durations),
    }


def memory_figures(llm) -> dict:
    """What the engine decided, read from its own objects (exact bytes; the log rounds to 0.01 GiB)."""
    import torch

    figures: dict = {}
    config = llm.llm_engine.vllm_config
    cache = config.cache_config
    figures["num_gpu_blocks"] = cache.num_gpu_blocks
    figures["block_size"] = cache.block_size
    if cache.num_gpu_blocks and cache.block_size:
        figures["kv_tokens"] = cache.num_gpu_blocks * cache.block_size
    figures["cache_dtype"] = str(cache.cache_dtype)
    sched = config.scheduler_config
    for key in ("max_num_batched_tokens", "max_num_seqs", "enable_chunked_prefill", "async_scheduling"):
        figures[key] = getattr(sched, key, None)
    figures["max_model_len"] = config.model_config.max_model_len
    figures["enable_prefix_caching"] = getattr(cache, "enable_prefix_caching", None)
    figures["model_dtype"] = str(config.model_config.dtype)
    figures["quantization"] = config.model_config.quantization
    comp = config.compilation_config
    figures["compilation_mode"] = str(getattr(comp, "mode", getattr(comp, "level", None)))
    figures["cudagraph_mode"] = str(getattr(comp, "cudagraph_mode", None))
    sizes = getattr(comp, "cudagraph_capture_sizes", None) or []
    figures["cudagraph_capture_sizes"] = {"count": len(sizes), "max": max(sizes) if sizes else None}
    try:
        worker = llm.llm_engine.engine_core.engine_core.model_executor.driver_worker.worker
        for key in ("peak_activation_memory", "non_torch_memory", "cudagraph_memory_estimate",
                    "available_kv_cache_memory_bytes", "requested_memory"):
            value = getattr(worker, key, None)
            figures[key] = int(value) if value is not None else None
        figures["weights_bytes"] = int(worker.model_runner.model_memory_usage)
        snap = getattr(worker, "init_snapshot", None)
        if snap is not None:
            figures["init_total_bytes"] = int(snap.total_memory)
            figures["init_free_bytes"] = int(snap.free_memory)
    except Exception as exc:  # layout differs between vLLM versions: the log still has the figures
        figures["worker_error"] = f"{type(exc).__name__}: {exc}"
    free, total = torch.cuda.mem_get_info()
    figures["after_init"] = {"free_bytes": free, "total_bytes": total, "used_bytes": total - free,
                             "torch_reserved_bytes": torch.cuda.memory_reserved(),
                             "torch_allocated_bytes": torch.cuda.memory_allocated()}
    return figures


def decode_points(spec: dict, kv_tokens: int) -> list[tuple[int, int]]:
    sweep = spec["workloads"].get("decode_sweep") or {}
    points, budget = [], sweep.get("max_prefill_tokens", 1 << 40)
    for context, batches in sweep.get("points", {}).items():
        for batch in batches:
            points.append((int(context), int(batch)))
    chosen = []
    for context, batch in points:
        need = batch * (context + sweep.get("decode_steps", 24) + batch * context // spec["max_num_batched_tokens"]
                        + 8)
        if need > 0.95 * kv_tokens or batch * context > budget:
            chosen.append((context, batch, False))
        else:
            chosen.append((context, batch, True))
    return chosen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", required=True, help="a JSON file holding one spec (see run_all.py)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    spec = json.loads(Path(args.spec).read_text())
    repo = Path(args.repo)
    out = Path(args.out)
    result: dict = {"name": spec["name"], "spec": spec, "engine_kwargs": engine_kwargs(spec), "status": "started"}

    def save() -> None:
        out.write_text(json.dumps(result, indent=1, default=str))

    if args.dry_run:
        config = json.loads((repo / spec["model_config"]).read_text())
        result["status"] = "dry-run"
        result["vocab_size"] = config["vocab_size"]
        result["decode_points"] = decode_points(spec, kv_tokens=10**7) if spec.get("workloads") else []
        save()
        print(json.dumps(result["engine_kwargs"]), result["decode_points"])
        return 0

    import torch

    free, total = torch.cuda.mem_get_info()
    result["before_init"] = {"free_bytes": free, "total_bytes": total, "device": torch.cuda.get_device_name(0)}
    model_dir = prepare_model_dir(spec, repo)
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    save()

    import vllm
    from vllm import LLM

    result["vllm_version"] = vllm.__version__
    result["torch_version"] = torch.__version__
    result["cuda_version"] = torch.version.cuda
    started = time.perf_counter()
    llm = LLM(model=str(model_dir), load_format="dummy", skip_tokenizer_init=True, disable_log_stats=False,
              **engine_kwargs(spec))
    result["init_s"] = time.perf_counter() - started
    result["memory"] = memory_figures(llm)
    result["status"] = "initialised"
    save()
    print("MEMORY", json.dumps(result["memory"], default=str), flush=True)

    driver = Driver(llm, vocab)
    workloads = spec.get("workloads") or {}
    result["workloads"] = {}
    # A small warm-up request: the first step after start pays one-off costs.
    result["workloads"]["smoke"] = driver.run(1, 128, 16)
    save()
    kv_tokens = result["memory"].get("kv_tokens") or 0

    if cb := workloads.get("closed_batch"):
        rows = []
        if cb.get("warmup"):
            # The first prompt of a new length pays one-off costs (compile buckets, allocator growth): measured
            # once, it is kept apart from the batches.
            result["workloads"]["closed_batch_warmup"] = driver.run(1, cb["input_len"], 8)
        for concurrency in cb["concurrency"]:
            row = repeated_batch(driver, concurrency, cb["input_len"], cb["output_len"], cb.get("repeats", 1))
            row["fits_kv"] = concurrency * (cb["input_len"] + cb["output_len"]) <= kv_tokens
            rows.append(row)
            print("CLOSED", concurrency, round(row["wall_s"], 3), flush=True)
            result["workloads"]["closed_batch"] = rows
            save()

    if ps := workloads.get("prefill_sweep"):
        rows = []
        for length in ps["prompt_lens"]:
            reps = [driver.run(1, length, 1) for _ in range(ps.get("repeats", 3))]
            ttfts = [r["ttft_s"]["p50"] for r in reps]
            rows.append({"prompt_len": length, "ttft_s": ttfts, "ttft_median_s": statistics.median(ttfts),
                         "prefill_tokens_per_s": length / statistics.median(ttfts)})
            print("PREFILL", length, round(statistics.median(ttfts), 4), flush=True)
            result["workloads"]["prefill_sweep"] = rows
            save()

    if ds := workloads.get("decode_sweep"):
        rows = []
        steps = ds.get("decode_steps", 24)
        for context, batch, run in decode_points(spec, kv_tokens):
            if not run:
                rows.append({"context": context, "batch": batch, "skipped": "KV capacity or prefill budget"})
                continue
            pre = math.ceil(batch * context / spec["max_num_batched_tokens"]) + 2
            row = driver.run(batch, context, pre + steps)
            row.update(context=context, batch=batch)
            rows.append(row)
            step = row["pure_decode_step_s"]
            print("DECODE", context, batch, step and round(step["p50"] * 1000, 3), flush=True)
            result["workloads"]["decode_sweep"] = rows
            save()

    result["status"] = "done"
    save()
    sys.stdout.flush()
    os._exit(0)  # skip the engine's teardown: the process ends and the driver starts the next one


if __name__ == "__main__":
    sys.exit(main())
