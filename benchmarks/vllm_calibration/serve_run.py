"""The serving path against a real vLLM: the project's own argv, endpoints and serving probe, on the device machine.

    PYTHONPATH=/tmp/site python3 benchmarks/vllm_calibration/serve_run.py --out RESULT.json --workdir /tmp/calib/serve

1. Builds a model folder: the catalog's config.json for the plan's model and a word-level tokenizer with the model's
   vocabulary size, made here with the `tokenizers` package (no tokenizer can be downloaded there).
2. Builds the server's command line with the inference_server role's own filter (`serve_argv`) from the sizing
   engine's serving plan (configs/serving_plan.json, written by `gpuinfra size ... --json`), with
   `--load-format dummy` as the role's `inference_server_extra_args`, and a `vllm` launcher in a stand-in venv
   (the carried pack has no console scripts).
3. Starts it with the role's environment (inference.env.j2), then runs infra/gpuinfra/assets/serving_probe.py with
   /usr/bin/python3 as the roles do: `wait` (/health), `first` (the smoke completion) and bounded `load` tests
   (node_validation's load_test.yml arguments, with fewer requests to fit the device budget).
4. Checks the other endpoints the roles or a client rely on (/v1/models, /version, /metrics, a non-streamed
   completion with ignore_eos) and records status codes and anything unexpected.
`--dry-run` builds the tokenizer and the argv and stops before starting the server.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROBE = REPO / "infra" / "gpuinfra" / "assets" / "serving_probe.py"
# The role's filter plugin (a link to infra/gpuinfra/serving_command.py in newer trees): the argv the role renders.
FILTER = next(p for p in (REPO / "ansible" / "roles" / "inference_server" / "filter_plugins" / "serving_command.py",
                          REPO / "infra" / "gpuinfra" / "serving_command.py") if p.exists())
PLAN = HERE / "configs" / "serving_plan.json"
PORT = 8000


def build_tokenizer(model_dir: Path, vocab_size: int) -> dict:
    """A byte-level BPE tokenizer over `vocab_size` ids, the layout Qwen2's and Llama-3's tokenizers have.

    Ids 0-255 are the byte alphabet (any text encodes, one token a byte), the rest fill the vocabulary with
    printable pieces, so every id random weights can emit decodes. Transformers 5 picks the tokenizer class from
    config.json's model_type (Qwen2Tokenizer here), which rebuilds a byte-level pipeline around the vocabulary;
    a word-level tokenizer is therefore not kept as written.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {char: i for i, char in enumerate(sorted(alphabet))}
    eos = "<|endoftext|>"
    for i in range(len(vocab), vocab_size - 1):
        vocab[f"w{i}"] = i
    vocab[eos] = vocab_size - 1
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([eos])
    tokenizer.save(str(model_dir / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": eos, "bos_token": None, "unk_token": None,
              "pad_token": eos, "model_max_length": 1 << 30, "clean_up_tokenization_spaces": False}
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    sample = tokenizer.encode("Count from one to ten")
    return {"vocab_size": tokenizer.get_vocab_size(), "eos_id": vocab_size - 1, "sample_ids": sample.ids,
            "sample_decoded": tokenizer.decode(sample.ids + [300, 152000 % vocab_size])}


def serve_argv(plan: dict, venv: Path, model_dir: Path, extra: list[str]) -> list[str]:
    spec = importlib.util.spec_from_file_location("serving_command", FILTER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.serve_argv(plan, "vllm", str(venv), str(model_dir), port=PORT, extra_args=extra)


def request(method: str, path: str, body: dict | None = None, timeout: float = 30, full: bool = False) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", PORT, timeout=timeout)
    started = time.perf_counter()
    try:
        connection.request(method, path, json.dumps(body) if body is not None else None,
                           {"Content-Type": "application/json"} if body is not None else {})
        response = connection.getresponse()
        data = response.read()
        text = data.decode(errors="replace")
        entry = {"status": response.status, "seconds": round(time.perf_counter() - started, 4),
                 "content_type": response.getheader("content-type")}
        try:
            entry["json"] = json.loads(text)
        except ValueError:
            entry["text_head"] = text[:600]
            if full:
                entry["text"] = text
        return entry
    except (OSError, http.client.HTTPException) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        connection.close()


def probe(args: list[str], timeout: float) -> dict:
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    command = [python, str(PROBE), *args]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"argv": command, "error": f"timed out after {timeout:.0f} s"}
    entry = {"argv": command, "rc": done.returncode, "seconds": round(time.perf_counter() - started, 3),
             "stderr": done.stderr[-1500:]}
    try:
        entry["result"] = json.loads(done.stdout)
    except ValueError:
        entry["stdout"] = done.stdout[-1500:]
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--budget", type=float, default=260, help="seconds for the whole run")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    deadline = time.monotonic() + args.budget
    out, work = Path(args.out), Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    plan_file = json.loads(PLAN.read_text())
    plan = plan_file["serving"]
    result: dict = {"name": "serve", "status": "started", "plan": plan, "prediction": plan_file.get("prediction")}

    def save() -> None:
        out.write_text(json.dumps(result, indent=1, default=str))

    model_dir = work / "models" / plan["served_model_name"]
    model_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads((REPO / plan_file["model_config"]).read_text())
    shutil.copyfile(REPO / plan_file["model_config"], model_dir / "config.json")
    result["tokenizer"] = build_tokenizer(model_dir, config["vocab_size"])
    venv = work / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    launcher = venv / "bin" / "vllm"
    launcher.write_text(f"#!/bin/sh\nexec {sys.executable} -m vllm.entrypoints.cli.main \"$@\"\n")
    launcher.chmod(0o755)
    argv = serve_argv(plan, venv, model_dir, ["--load-format", "dummy"])
    result["argv"] = argv
    # The role's environment (templates/inference.env.j2) plus what the carried pack needs.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(work / "hf"), "VLLM_NO_USAGE_STATS": "1",
           "VLLM_USE_FLASHINFER_SAMPLER": "0", "DO_NOT_TRACK": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)  # the server as the unit runs it: engine core in its own process
    result["env_added"] = {k: env[k] for k in ("HF_HUB_OFFLINE", "VLLM_NO_USAGE_STATS", "VLLM_USE_FLASHINFER_SAMPLER")}
    save()
    if args.dry_run:
        result["status"] = "dry-run"
        save()
        print(" ".join(argv))
        return 0

    def on_term(signum, frame):  # a timeout in run_all.py: still stop the server (finally below)
        raise SystemExit(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    log = (work / "server.log").open("w")
    started = time.monotonic()
    server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work, start_new_session=True)
    result["server_pid"] = server.pid
    (work / "server.pid").write_text(str(server.pid))  # run_all.py ends its process group if this run is killed
    try:
        url = f"http://127.0.0.1:{PORT}"
        name = plan["served_model_name"]
        wait_budget = max(30.0, deadline - time.monotonic() - 90)
        result["wait"] = probe(["wait", url, "--timeout", str(int(wait_budget))], wait_budget + 30)
        result["server_ready_s"] = round(time.monotonic() - started, 1)
        save()
        if server.poll() is not None:
            result["status"] = f"server exited rc={server.returncode}"
            return 1
        if not (result["wait"].get("result") or {}).get("healthy"):
            result["status"] = "server not healthy"
            return 1
        endpoints = {}
        for path in ("/health", "/v1/models", "/version", "/metrics", "/ping", "/load"):
            entry = request("GET", path)
            if path == "/metrics" and "text_head" in entry:
                entry["text_head"] = entry["text_head"][:300]
            endpoints[path] = entry
        endpoints["POST /v1/completions (not streamed, ignore_eos)"] = request(
            "POST", "/v1/completions", {"model": name, "prompt": "Count from one to ten", "max_tokens": 8,
                                        "temperature": 0, "ignore_eos": True})
        endpoints["POST /v1/completions with the hub repo id as model"] = request(
            "POST", "/v1/completions", {"model": plan.get("hf_repo") or "x", "prompt": "hi", "max_tokens": 2})
        endpoints["POST /v1/chat/completions (no chat template)"] = request(
            "POST", "/v1/chat/completions", {"model": name, "messages": [{"role": "user", "content": "hi"}],
                                             "max_tokens": 4})
        result["endpoints"] = endpoints
        save()
        # inference_server verify.yml: first completion with inference_server_smoke_max_tokens (32)
        result["first"] = [probe(["first", url, name, "--max-tokens", "32"], 60) for _ in range(3)]
        save()
        sla = json.dumps({"ttft_p99_s": 1.5, "e2e_p99_s": 45, "error_rate": 0.005})
        loads = []
        # node_validation load_test.yml: --concurrency C --requests N --max-seconds T --max-tokens 256 --sla JSON
        # (role defaults: concurrency 8, 200 requests, 120 s; fewer requests here to fit the device budget)
        for concurrency, requests, seconds in ((1, 3, 20), (8, 32, 30), (32, 64, 30), (128, 128, 40)):
            if deadline - time.monotonic() < seconds + 15:
                loads.append({"concurrency": concurrency, "skipped": "device budget"})
                continue
            loads.append(probe(["load", url, name, "--concurrency", str(concurrency), "--requests", str(requests),
                                "--max-seconds", str(seconds), "--max-tokens", "256", "--sla", sla], seconds + 60))
            save()
        result["load"] = loads
        # The monitoring role's dashboard and alert rules read these series.
        text = request("GET", "/metrics", full=True).get("text", "")
        result["metrics_series"] = {series: (series in text) for series in (
            "vllm:e2e_request_latency_seconds_bucket", "vllm:time_to_first_token_seconds_bucket",
            "vllm:generation_tokens_total", "vllm:num_requests_running", "vllm:kv_cache_usage_perc")}
        (work / "metrics.txt").write_text(text)
        result["status"] = "done"
        return 0
    finally:
        save()
        try:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=15)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGKILL)
        log.close()
        (work / "server.pid").unlink(missing_ok=True)
        save()


if __name__ == "__main__":
    sys.exit(main())
