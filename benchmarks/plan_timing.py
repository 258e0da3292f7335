"""`gpuinfra plan` wall time and resource count at 1, 8 and 64 nodes (issue: plan size must not grow with
the node count, because an Auto Scaling group launches the nodes, not one resource per instance).

Each figure is the median of --repeat runs of the whole offline plan (validate, size, run the Pulumi program
under mocks, evaluate the policy rules) in one process after a warm-up run (the first import of pulumi_aws,
~0.3-0.8 s, is reported separately).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import date
from pathlib import Path

CASES = [  # (stack, overrides): single-node copies scale out; the 671B model scales in copies of 2 nodes
    ("dev-7b", ["hourly_budget_usd=null"]),
    ("prod-r1", ["hourly_budget_usd=null"]),
]


def timed_plan(stack: str, sets: list[str]) -> tuple[float, int]:
    from gpuinfra.plan import build_plan

    start = time.perf_counter()
    _, report = build_plan(stack, sets=sets)
    return time.perf_counter() - start, len(report.resources)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--write", metavar="PATH", help="write the results as Markdown")
    args = parser.parse_args()
    start = time.perf_counter()
    import pulumi_aws  # noqa: F401

    import_s = time.perf_counter() - start
    rows = []
    for stack, sets in CASES:
        for nodes in (1, 8, 64):
            if stack == "prod-r1" and nodes == 1:
                nodes_sets = [*sets, "nodes=1", "instance_types=p5en.48xlarge", "nodes_per_copy=1"]
            else:
                nodes_sets = [*sets, f"nodes={nodes}"]
            timed_plan(stack, nodes_sets)
            runs = [timed_plan(stack, nodes_sets) for _ in range(args.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            rows.append((stack, nodes, runs[0][1], seconds))
            print(f"{stack:10s} nodes={nodes:3d} resources={runs[0][1]:3d} plan={seconds * 1000:7.1f} ms")
    print(f"import pulumi_aws: {import_s:.2f} s")
    if args.write:
        lines = [
            "# Offline plan: wall time and resource count by node count",
            "",
            f"Measured {date.today().isoformat()} on {platform.machine()} / Python {platform.python_version()}, "
            f"one process; median of {args.repeat} runs after a warm-up. "
            "Command: `make bench` (benchmarks/plan_timing.py).",
            "",
            "| stack | nodes | resources | plan wall time |",
            "|---|---:|---:|---:|",
            *[f"| {stack} | {nodes} | {count} | {seconds * 1000:.0f} ms |" for stack, nodes, count, seconds in rows],
            "",
            f"First `import pulumi_aws` in a process: {import_s:.2f} s (not included above).",
            "",
            "The resource count does not change with the node count: one Auto Scaling group launches every node "
            "(prod-r1 at 1 node is one p5en.48xlarge with no placement group, hence fewer resources).",
            "",
        ]
        Path(args.write).write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
