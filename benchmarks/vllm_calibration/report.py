"""Turn the calibration runs' raw JSON (and logs) into Markdown tables, beside the sizing engine's prediction.

    python benchmarks/vllm_calibration/report.py                       # print the tables
    python benchmarks/vllm_calibration/report.py --readme docs/validation/h200-x1-vllm-0.26/README.md
        # rewrite the part of that README between <!-- tables:begin --> and <!-- tables:end -->

Reads docs/validation/h200-x1-vllm-0.26/results.json (run_all.py's state: every run's result) and the run logs in
raw/runs/ (for figures only the log holds: CUDA-graph capture memory, torch.compile time, attention backend, and
the memory of runs that stopped before writing them). Predictions come from `gpuinfra size --json` for the same
config.json, precision, KV dtype, gpu_memory_utilization, max_model_len and max_num_batched_tokens on one
H200-SXM-141GB, from the engine as committed at --engine-rev (default HEAD, exported with git archive, so edits in
progress in the working tree do not leak in); --no-predict leaves them out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "docs" / "validation" / "h200-x1-vllm-0.26"
GiB = 1 << 30
BEGIN, END = "<!-- tables:begin -->", "<!-- tables:end -->"

LOG_PATTERNS = {
    "log_weights_gib": r"Model loading took ([\d.]+) GiB",
    "log_kv_gib": r"Available KV cache memory: ([\d.]+) GiB",
    "log_kv_tokens": r"GPU KV cache size: ([\d,]+) tokens",
    "log_graph_gib": r"Graph capturing finished in \d+ secs, took ([\d.-]+) GiB",
    "log_graph_s": r"Graph capturing finished in (\d+) secs",
    "log_compile_s": r"torch.compile took ([\d.]+) s in total",
    "log_init_engine_s": r"init engine \(profile, create kv cache, warmup model\) took ([\d.]+) s",
    "log_attention": r"Using (\w+) attention backend",
    "log_moe_backend": r"Using (\w+) Fp8 MoE backend",
    "log_linear_kernel": r"Selected (\w+) for (\w+)",
    "log_runner": r"\[(\w+)\.py:\d+\] Model loading took",
}


def parse_log(path: Path) -> dict:
    if not path.exists():
        return {}
    text = path.read_text(errors="replace")
    found = {}
    for key, pattern in LOG_PATTERNS.items():
        match = re.search(pattern, text)
        if match:
            value = match.group(1).replace(",", "")
            try:
                found[key] = float(value) if "." in value or key.endswith(("_gib", "_s", "tokens")) else value
            except ValueError:
                found[key] = value
    if "log_runner" in found:
        found["log_runner"] = {"model_runner": "V2 (v1/worker/gpu/model_runner.py)",
                               "gpu_model_runner": "V1 (v1/worker/gpu_model_runner.py)"}.get(found["log_runner"],
                                                                                          found["log_runner"])
    return found


ENGINE = {"rev": None, "root": None}  # the sizing engine the predictions come from (--engine-rev)


def use_engine(rev: str) -> str:
    """Export `rev`'s infra/ (git archive, read-only) so predictions do not follow edits in the working tree."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], capture_output=True, text=True,
                            check=True).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix=f"gpuinfra-{commit}-"))
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "infra"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    ENGINE.update(rev=commit, root=root / "infra")
    return commit


def predict(spec: dict, *, context: int | None = None, concurrency: int = 1) -> dict | None:
    config = json.loads((REPO / spec["model_config"]).read_text())
    native_fp8 = (config.get("quantization_config") or {}).get("quant_method") == "fp8"
    precision = "fp8" if spec.get("quantization") == "fp8" or native_fp8 else "bf16"
    args = ["size", "--model-config", str(REPO / spec["model_config"]), "--precision", precision,
            "--kv-cache-dtype", "fp8" if spec.get("kv_cache_dtype") == "fp8" else "auto",
            "--gpu", "H200-SXM-141GB", "--gpus-per-node", "1",
            "--context", str(context or spec["max_model_len"]), "--concurrency", str(concurrency),
            "--max-num-batched-tokens", str(spec["max_num_batched_tokens"]),
            "--gpu-memory-utilization", str(spec["gpu_memory_utilization"]), "--json"]
    env = dict(os.environ)
    if ENGINE["root"]:
        env["PYTHONPATH"] = f"{ENGINE['root']}{os.pathsep}{env.get('PYTHONPATH', '')}"
    command = [sys.executable, "-c", "import sys; from gpuinfra.cli import main; sys.exit(main())", *args]
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())
    try:
        return json.loads(done.stdout)
    except ValueError:
        raise SystemExit(f"gpuinfra size failed for {spec['name']}: {done.stderr[-800:]}") from None


def gib(value) -> str:
    return "" if value is None else f"{value / GiB:.2f}"


def num(value, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def pct(measured, predicted) -> str:
    if not measured or predicted is None:
        return ""
    return f"{(predicted - measured) / measured * 100:+.1f} %"


def label(spec: dict) -> str:
    model = Path(spec["model_config"]).stem
    parts = [model]
    if spec.get("quantization"):
        parts.append(f"{spec['quantization']} weights")
    if spec.get("kv_cache_dtype") and spec["kv_cache_dtype"] != "auto":
        parts.append(f"{spec['kv_cache_dtype']} KV")
    return ", ".join(parts)


def memory_table(results: dict, runs: Path, with_prediction: bool) -> list[str]:
    lines = ["| run | model | mode | gmu | max_model_len | max_num_batched_tokens | weights GiB | peak activation GiB |"
             " non-torch GiB | CUDA graphs GiB | KV GiB | KV tokens | used after start GiB | engine: weights / "
             "overhead / KV GiB, tokens | engine KV tokens vs measured |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for name, result in results.items():
        spec = result.get("spec") or {}
        if not spec or spec.get("kind") == "serve":
            continue
        log = parse_log(runs / f"{name}.log")
        mem = result.get("memory") or {}
        mode = "eager" if spec.get("enforce_eager") else "CUDA graphs + torch.compile"
        weights = mem.get("weights_bytes") or (log.get("log_weights_gib", 0) * GiB or None)
        kv = mem.get("available_kv_cache_memory_bytes") or (log.get("log_kv_gib", 0) * GiB or None)
        tokens = mem.get("kv_tokens") or (int(log["log_kv_tokens"]) if "log_kv_tokens" in log else None)
        graphs = log.get("log_graph_gib")
        used = (mem.get("after_init") or {}).get("used_bytes")
        note = ""
        if result.get("status") != "done":
            note = f" ({result.get('status')}, rc {result.get('rc')}: figures from the log)"
        engine = diff = ""
        if with_prediction and (p := predict(spec)):
            per = p["per_gpu"]
            engine = (f"{per['weights_gib']:.2f} / {per['overhead_gib']:.2f} / {per['kv_cache_gib']:.2f}, "
                      f"{p['max_tokens_in_flight']:,}")
            diff = pct(tokens, p["max_tokens_in_flight"])
        lines.append(
            f"| `{name}`{note} | {label(spec)} | {mode} | {spec['gpu_memory_utilization']} |"
            f" {spec['max_model_len']:,} | {spec['max_num_batched_tokens']:,} | {gib(weights)} |"
            f" {gib(mem.get('peak_activation_memory'))} |"
            f" {gib(mem.get('non_torch_memory'))} | {'' if graphs is None else f'{graphs:.2f}'} | {gib(kv)} |"
            f" {num(tokens)} | {gib(used)} | {engine} | {diff} |")
    return lines


def exact_table(results: dict) -> list[str]:
    lines = ["| run | weights bytes | peak activation bytes | non-torch bytes | KV bytes | GPU blocks x 16 |"
             " KV bytes / token | requested (gmu x total) bytes | total (mem_get_info) bytes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, result in results.items():
        mem = result.get("memory") or {}
        if not mem.get("weights_bytes"):
            continue
        per_token = mem["available_kv_cache_memory_bytes"] / mem["kv_tokens"] if mem.get("kv_tokens") else None
        lines.append(f"| `{name}` | {mem['weights_bytes']:,} | {mem['peak_activation_memory']:,} | "
                     f"{mem['non_torch_memory']:,} | {mem['available_kv_cache_memory_bytes']:,} | "
                     f"{mem['num_gpu_blocks']:,} x {mem['block_size']} | {num(per_token, 0)} | "
                     f"{mem['requested_memory']:,} | {mem.get('init_total_bytes', 0):,} |")
    return lines


def startup_table(results: dict, runs: Path) -> list[str]:
    lines = ["| run | model runner | attention | linear kernel | engine init s (whole LLM()) | torch.compile s |"
             " graph capture s | init engine s |", "|---|---|---|---|---:|---:|---:|---:|"]
    for name, result in results.items():
        spec = result.get("spec") or {}
        if not spec or spec.get("kind") == "serve":
            continue
        log = parse_log(runs / f"{name}.log")
        lines.append(f"| `{name}` | {log.get('log_runner', '')} | {log.get('log_attention', '')} |"
                     f" {log.get('log_linear_kernel', '')} | {num(result.get('init_s'))} |"
                     f" {num(log.get('log_compile_s'))} | {num(log.get('log_graph_s'), 0)} |"
                     f" {num(log.get('log_init_engine_s'))} |")
    return lines


def speed_runs(results: dict) -> list[tuple[str, dict]]:
    return [(n, r) for n, r in results.items() if (r.get("workloads") or {}).get("closed_batch")]


def closed_table(results: dict, with_prediction: bool) -> list[str]:
    lines = ["| run | C | N in | M out | wall s | output tok/s (C x M / wall) | TTFT mean / p50 / p99 s |"
             " ITL per request mean ms | pure-decode step p50 ms | engine TTFT mean s (vLLM metrics) |"
             " engine decode bound tok/s (100 % HBM) | measured / bound |",
             "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, result in speed_runs(results):
        spec = result["spec"]
        for row in result["workloads"]["closed_batch"]:
            c, n, m = row["requests"], row["prompt_len"], row["max_tokens"]
            ttft, itl, step = row["ttft_s"], row["itl_s"], row["pure_decode_step_s"]
            bound = ratio = ""
            if with_prediction and (p := predict(spec, context=n + m, concurrency=c)):
                value = p.get("aggregate_decode_tokens_per_s_bound")
                bound = num(value)
                ratio = f"{row['output_tokens_per_s'] / value:.2f}" if value else ""
            eng = (row.get("engine_ttft_s") or {}).get("mean")
            step_ms = f"{step['p50'] * 1e3:.2f}" if step else ""
            eng_s = f"{eng:.4f}" if eng is not None else ""
            lines.append(f"| `{name}` | {c} | {n} | {m} | {row['wall_s']:.3f} | {row['output_tokens_per_s']:,.1f} |"
                         f" {ttft['mean']:.4f} / {ttft['p50']:.4f} / {ttft['p99']:.4f} | {itl['mean'] * 1e3:.2f} |"
                         f" {step_ms} | {eng_s} | {bound} | {ratio} |")
    return lines


def prefill_table(results: dict) -> list[str]:
    runs = speed_runs(results)
    lengths = sorted({row["prompt_len"] for _, r in runs for row in r["workloads"].get("prefill_sweep", [])})
    lines = ["| run | " + " | ".join(f"{length:,}" for length in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for name, result in runs:
        rows = {row["prompt_len"]: row for row in result["workloads"].get("prefill_sweep", [])}
        cells = [f"{rows[length]['ttft_median_s'] * 1e3:.1f} ms, {rows[length]['prefill_tokens_per_s']:,.0f} tok/s"
                 if length in rows else "" for length in lengths]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return lines


def decode_table(results: dict) -> list[str]:
    runs = speed_runs(results)
    batches = sorted({row["batch"] for _, r in runs for row in r["workloads"].get("decode_sweep", [])})
    lines = ["| run | context | " + " | ".join(f"B={b}" for b in batches) + " |",
             "|---|---:|" + "---:|" * len(batches)]
    for name, result in runs:
        rows = result["workloads"].get("decode_sweep", [])
        for context in sorted({row["context"] for row in rows}):
            by_batch = {row["batch"]: row for row in rows if row["context"] == context}
            cells = []
            for batch in batches:
                row = by_batch.get(batch)
                if row is None:
                    cells.append("")
                elif "skipped" in row:
                    cells.append("skipped")
                elif row.get("pure_decode_step_s"):
                    cells.append(f"{row['pure_decode_step_s']['p50'] * 1e3:.2f}")
                else:
                    cells.append("n/a")
            lines.append(f"| `{name}` | {context:,} | " + " | ".join(cells) + " |")
    return lines


def serving_tables(results: dict) -> list[str]:
    result = results.get("serve-qwen-7b")
    if not result:
        return ["(no serving run)"]
    lines = [f"Status: {result.get('status')}; healthy after {result.get('server_ready_s')} s "
             f"(`serving_probe.py wait`). Command line built by the role's `serve_argv`:", "",
             "    " + " ".join(result.get("argv", [])), "",
             "| endpoint | status | answer |", "|---|---:|---|"]
    for path, entry in (result.get("endpoints") or {}).items():
        body = entry.get("json")
        text = json.dumps(body)[:140] if body is not None else (entry.get("text_head") or entry.get("error") or "")[:80]
        text = " ".join(text.split()).replace("|", "/").replace("`", "'")
        lines.append(f"| {path} | {entry.get('status', '')} | `{text}` |")
    lines += ["", "| probe | rc | requests ok | wall s | latency P50 / P99 s | TTFT P50 / P99 s | output tok/s |"
              " engine bound tok/s | measured / bound | SLA misses |",
              "|---|---:|---:|---:|---|---|---:|---:|---:|---|"]
    for entry in result.get("first") or []:
        r = entry.get("result") or {}
        rate = r.get("output_tokens", 0) / r["e2e_s"] if r.get("e2e_s") else 0.0
        lines.append(f"| first (32 tokens) | {entry.get('rc')} | {int(bool(r.get('ok')))} | {r.get('e2e_s', 0):.3f} |"
                     f" | {r.get('ttft_s', 0):.4f} | {rate:.1f}"
                     f" | | | |")
    prediction = result.get("prediction") or {}
    for entry in result.get("load") or []:
        r = entry.get("result") or {}
        if not r:
            lines.append(f"| load C={entry.get('concurrency')} | | | | | | | | | {entry.get('skipped', '')} |")
            continue
        c = r["concurrency"]
        bound = (prediction.get(str(c)) or {}).get("aggregate_decode_tokens_per_s_bound")
        ratio = f"{r['output_tokens_per_s'] / bound:.2f}" if bound else ""
        misses = "; ".join(r.get("sla_misses") or [])
        lines.append(f"| load C={c}, 256 tokens | {entry.get('rc')} | {r['succeeded']}/{r['requests']} | {r['wall_s']}"
                     f" | {r['latency_p50_s']} / {r['latency_p99_s']} | {r['ttft_p50_s']} / {r['ttft_p99_s']} |"
                     f" {r['output_tokens_per_s']:,} | {num(bound)} | {ratio} | {misses} |")
    series = result.get("metrics_series") or {}
    lines += ["", "Prometheus series the monitoring role reads, present in `/metrics`: " +
              ", ".join(f"`{k}` {'yes' if v else 'NO'}" for k, v in series.items())]
    return lines


def build(with_prediction: bool) -> list[str]:
    state = json.loads((DATA / "results.json").read_text())
    results = state["results"]
    runs = DATA / "raw" / "runs"
    source = f"gpuinfra at commit {ENGINE['rev']}" if ENGINE["rev"] else "gpuinfra as in the working tree"
    out = [f"Predictions (`engine:` columns, bounds): `gpuinfra size --json` on one H200-SXM-141GB, {source}.", "",
           "### Memory (each row one engine start in a fresh process)", ""]
    out += memory_table(results, runs, with_prediction)
    out += ["", "Exact bytes from the worker object (`Worker.peak_activation_memory`, `non_torch_memory`, "
            "`available_kv_cache_memory_bytes`, `model_runner.model_memory_usage`, `init_snapshot`):", ""]
    out += exact_table(results)
    out += ["", "### Start-up", ""] + startup_table(results, runs)
    out += ["", "### Closed batch (C requests submitted together, N prompt tokens, exactly M output tokens)", ""]
    out += closed_table(results, with_prediction)
    out += ["", "### Prefill sweep (one request, max_tokens=1; TTFT median of the repeats, prompt tokens / TTFT)", ""]
    out += prefill_table(results)
    out += ["", "### Decode sweep (pure-decode step time p50 in ms = inter-token latency at batch B; context = prompt "
            "length, +2..+40 tokens during the window)", ""]
    out += decode_table(results)
    out += ["", "### Serving path (vLLM OpenAI server, the project's probe)", ""] + serving_tables(results)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--readme", help="rewrite the tables section of this README")
    parser.add_argument("--no-predict", action="store_true")
    parser.add_argument("--engine-rev", default="HEAD",
                        help="git revision of the sizing engine to predict with ('worktree': the files as they are)")
    args = parser.parse_args()
    if not args.no_predict and args.engine_rev != "worktree":
        use_engine(args.engine_rev)
    lines = build(not args.no_predict)
    text = "\n".join(lines) + "\n"
    if args.readme:
        path = Path(args.readme)
        current = path.read_text()
        if BEGIN not in current or END not in current:
            raise SystemExit(f"{path} has no {BEGIN} ... {END} section")
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        path.write_text(head + BEGIN + "\n" + text + END + tail)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
