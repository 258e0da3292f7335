#!/usr/bin/env python3
"""Measure a GPU node with PyTorch: HBM bandwidth (device-to-device copy), dense BF16 matmul throughput,
host-to-device bandwidth (pinned), and NCCL all-reduce bus bandwidth across the node's GPUs.

Prints one JSON document (also written to --output). Bounded: fixed sizes and iteration counts.
Copy bandwidth counts the bytes read plus the bytes written, as nvbandwidth and STREAM do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _timed(fn, iters: int, device) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize(device)
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize(device)
    return start.elapsed_time(end) / 1000.0


def measure_gpu(index: int, quick: bool) -> dict:
    import torch

    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    size = (256 if quick else 1024) * 2**20
    src = torch.empty(size, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    iters = 10 if quick else 40
    seconds = _timed(lambda: dst.copy_(src), iters, device)
    hbm = 2 * size * iters / seconds / 1e9
    n = 4096 if quick else 8192
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    iters = 10 if quick else 50
    seconds = _timed(lambda: torch.matmul(a, b), iters, device)
    tflops = 2 * n**3 * iters / seconds / 1e12
    host = torch.empty(size, dtype=torch.uint8).pin_memory()
    target = torch.empty(size, dtype=torch.uint8, device=device)
    iters = 5 if quick else 20
    seconds = _timed(lambda: target.copy_(host, non_blocking=True), iters, device)
    h2d = size * iters / seconds / 1e9
    torch.cuda.empty_cache()
    return {"index": index, "name": torch.cuda.get_device_name(device), "hbm_copy_gbs": round(hbm, 1),
            "bf16_matmul_tflops": round(tflops, 1), "h2d_gbs": round(h2d, 1)}


def _nccl_worker(rank: int, world: int, size: int, iters: int, port: int, queue) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device("cuda", rank))
    tensor = torch.ones(size // 4, dtype=torch.float32, device="cuda")
    for _ in range(3):
        dist.all_reduce(tensor)
    torch.cuda.synchronize()
    dist.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(tensor)
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / iters
    if rank == 0:
        algbw = size / seconds / 1e9
        queue.put({"ranks": world, "bytes": size, "algbw_gbs": round(algbw, 1),
                   "busbw_gbs": round(algbw * 2 * (world - 1) / world, 1)})
    dist.destroy_process_group()


def measure_nccl(world: int, quick: bool) -> dict:
    import torch.multiprocessing as mp

    if world < 2:
        return {"skipped": f"needs 2 or more GPUs, this node has {world}"}
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink SHARP needs multicast, off on shared machines
    context = mp.get_context("spawn")
    queue = context.SimpleQueue()
    size = (64 if quick else 512) * 2**20
    mp.start_processes(_nccl_worker, args=(world, size, 5 if quick else 20, 29511, queue), nprocs=world,
                       join=True, start_method="spawn")
    return queue.get()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (CI-sized GPUs, smoke runs)")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print(json.dumps({"error": "PyTorch is not installed on this host"}))
        return 3
    if not torch.cuda.is_available():
        print(json.dumps({"error": "CUDA is not available to PyTorch"}))
        return 3
    count = torch.cuda.device_count()
    started = time.time()
    result = {
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "nccl": ".".join(map(str, torch.cuda.nccl.version())) if count else None,
        "gpus": [measure_gpu(i, args.quick) for i in range(count)],
    }
    result["nccl_all_reduce"] = measure_nccl(count, args.quick)
    result["seconds"] = round(time.time() - started, 1)
    text = json.dumps(result, indent=2)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
