"""The weight stager's throughput and its second-run cost, against the stand-in hub over loopback HTTP.

A 671B checkpoint is ~160 files of ~4.3 GB; what matters is that downloads run in parallel, that hashing
keeps up with them, and that a second run (every Ansible rerun) costs a listing, not a re-download or a
re-hash. Figures: MB/s with 1 and 8 workers (loopback, so this measures the stager's own ceiling: HTTP
client, SHA-256 and disk writes, not a network), and the second run's wall time and bytes fetched.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuinfra.assets.stage_weights import HubSource, Stager  # noqa: E402

from benchmarks.report import emit  # noqa: E402
from tests.rigs.standin_hub import StandinHub  # noqa: E402


def stage(url: str, target: Path, workers: int) -> tuple[float, dict]:
    source = HubSource("bench/model", "main", url, None)
    started = time.perf_counter()
    result = Stager(source, target, "hf://bench/model@main", workers).run()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=64, help="size of each file")
    parser.add_argument("--write", metavar="PATH", help="write the results as Markdown")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        remote = Path(tmp) / "remote"
        remote.mkdir()
        for index in range(args.files):
            (remote / f"model-{index:05d}.safetensors").write_bytes(os.urandom(args.mib * 2**20))
        total_mb = args.files * args.mib * 2**20 / 1e6
        hub = StandinHub(remote).start()
        try:
            for workers in (1, 8):
                seconds, result = stage(hub.url, Path(tmp) / f"w{workers}", workers)
                assert not result["errors"], result["errors"]
                rows.append((f"first run, {workers} worker{'s' if workers > 1 else ''}", seconds,
                             result["bytes_downloaded"] / 1e6, total_mb / seconds))
            seconds, result = stage(hub.url, Path(tmp) / "w8", 8)
            rows.append(("second run (manifest)", seconds, result["bytes_downloaded"] / 1e6, None))
        finally:
            hub.shutdown()
    lines = [
        "# Weight staging benchmark",
        "",
        f"`benchmarks/weights_staging.py`: {args.files} files x {args.mib} MiB from the stand-in hub over loopback, "
        f"verified by SHA-256. {date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}.",
        "",
        "| run | seconds | MB fetched | MB/s |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {seconds:.2f} | {fetched:.0f} | {'' if rate is None else f'{rate:.0f}'} |"
          for name, seconds, fetched, rate in rows],
        "",
        "Loopback removes the network, so MB/s is the stager's own ceiling (HTTP client, hashing, disk). The",
        "second run lists the repository and compares the manifest: nothing is fetched or hashed.",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
