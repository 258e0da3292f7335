"""Sweep every catalog model x precision x instance type x node count through the sizing engine.

Prints the wall time and throughput; with --write, records the figures in a Markdown file under docs/.
Target: the whole sweep well under one second on one core.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

from gpuinfra.catalog import load_catalog
from gpuinfra.sizing import Hardware, ModelSpec, Precision, build_request, evaluate


def sweep(max_nodes: int) -> tuple[int, int]:
    catalog = load_catalog()
    evaluations = feasible = 0
    for entry in catalog.models:
        model = ModelSpec.from_catalog(entry)
        for precision in Precision:
            request = build_request(model=model, precision=precision, allow_fp8_weight_only=True)
            for instance in catalog.instances:
                for nodes in range(1, max_nodes + 1):
                    feasible += evaluate(request, Hardware.from_instance(instance, nodes)).feasible
                    evaluations += 1
    return evaluations, feasible


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-nodes", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", metavar="PATH", help="write the results as Markdown")
    args = parser.parse_args()

    started = time.perf_counter()
    load_catalog()
    catalog_s = time.perf_counter() - started
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        evaluations, feasible = sweep(args.max_nodes)
        times.append(time.perf_counter() - t0)
    best, median = min(times), statistics.median(times)
    lines = [
        f"catalog load (first, cold): {catalog_s * 1000:.1f} ms",
        f"sweep: {evaluations} evaluations ({feasible} feasible), best {best * 1000:.1f} ms, "
        f"median {median * 1000:.1f} ms over {args.repeat} runs",
        f"per evaluation: {best / evaluations * 1e6:.1f} us",
        f"target (< 1 s): {'met' if median < 1.0 else 'MISSED'}",
    ]
    print("\n".join(lines))
    if args.write:
        path = Path(args.write)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            "# Sizing sweep benchmark\n\n"
            f"Run `make bench` to refresh. Measured {date.today().isoformat()} on {platform.machine()}, "
            f"Python {platform.python_version()}, {platform.system()} (one process, one core).\n\n"
            "Every catalog model x every precision x every instance type x 1..4 nodes, each a full "
            "`evaluate()` (layout search, per-stage weights and KV, host checks, throughput bounds).\n\n"
            + "\n".join(f"- {line}" for line in lines) + "\n"
        )


if __name__ == "__main__":
    main()
