"""site.yml on three real systemd hosts (debootstrap'd Debian 12 under systemd-nspawn, reached over SSH,
packages from the local stand-in repositories of tests/rigs): the full first run, the no-op rerun, and the
fact-gathering floor (a play that only gathers the facts every layer needs). Needs root.

Each figure is one run on fresh hosts (the first run cannot be repeated on the same hosts); --repeat brings
up new hosts each time and reports the median. On a shared, busy machine the seconds move with the load; the
ratio of the rerun to the fact floor, both from the same round, is the figure to compare.

--profile runs one more no-op rerun with Ansible's profile_tasks callback and prints its slowest tasks (the
measured runs go without it: its timing of every task is overhead the figures should not carry).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpuinfra.contract import host_constants  # noqa: E402

from benchmarks.report import emit  # noqa: E402
from tests.hosts.conftest import HOST_VARS, host_group_vars, software  # noqa: E402
from tests.rigs import nspawn, standin_repo  # noqa: E402
from tests.rigs.ansible_run import ANSIBLE_DIR, run_playbook  # noqa: E402

FACT_FLOOR_PLAY = """---
- name: Fact-gathering floor
  hosts: gpu_nodes
  gather_facts: false
  tasks:
    - name: OS facts
      ansible.builtin.setup:
        gather_subset: [min, virtual]
    - name: Hardware facts
      gpuinfra_hw_facts:
        nvme_model: "{{ gpuinfra_constants.instance_store_model }}"
"""


PROFILE_LINE = re.compile(r"^(?P<task>.+?) -+ (?P<seconds>[0-9.]+)s$", re.M)
HEADER = re.compile(r"^TASK \[", re.M)


def slowest_tasks(output: str, count: int = 25) -> list[tuple[str, float]]:
    """profile_tasks' recap: (task, seconds), slowest first."""
    recap = output.split("TASKS RECAP", 1)[-1]
    return [(m["task"], float(m["seconds"])) for m in PROFILE_LINE.finditer(recap)][:count]


PROFILE_ENV = {"ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks", "PROFILE_TASKS_TASK_OUTPUT_LIMIT": "40"}


def _profiled_rerun(hosts, inventory: Path) -> None:
    """One more no-op rerun with profile_tasks (its timing callback is not in the measured runs): the slowest
    tasks, and any converge step a probe let run."""
    hosts.close_connections()
    os.environ.update(PROFILE_ENV)
    try:
        run = run_playbook("site.yml", inventory, prefix=hosts.netns_exec())
    finally:
        for key in PROFILE_ENV:
            os.environ.pop(key, None)
    for task, seconds in slowest_tasks(run.output):
        print(f"{seconds:6.2f}s  {task}", file=sys.stderr)
    for line in run.output.splitlines():
        if line.startswith("included: ") and "/tasks/validate.yml" not in line:
            print(f"rerun included {line[len('included: '):]}", file=sys.stderr)
    print(f"profiled rerun {run.seconds:.1f} s, recap {run.recap}", file=sys.stderr)


def one_round(repos, profile: bool = False) -> dict[str, float]:
    floor_book = ANSIBLE_DIR / "playbooks" / ".bench-fact-floor.yml"
    # The rig has a name prefix and an SSH ControlPath directory of its own (nspawn.NspawnHosts), so the
    # benchmark can run beside the host tests' rigs.
    with nspawn.NspawnHosts(repos, count=3, prefix=nspawn.run_prefix("gpib")) as hosts:
        inventory = hosts.inventory(hosts.workdir / "hosts.yml", host_group_vars(repos), HOST_VARS)
        floor_vars = ["-e", json.dumps({"gpuinfra_constants": host_constants()})]
        floor_book.write_text(FACT_FLOOR_PLAY)
        try:
            floor = run_playbook(floor_book.name, inventory, *floor_vars, prefix=hosts.netns_exec())
        finally:
            floor_book.unlink()
        first = run_playbook("site.yml", inventory, prefix=hosts.netns_exec())
        # The floor ran on fresh connections; so does the rerun (the first run's are closed), as an operator's
        # rerun minutes later finds none left (ControlPersist is 120 s).
        hosts.close_connections()
        second = run_playbook("site.yml", inventory, prefix=hosts.netns_exec())
        for run in (floor, first, second):
            if run.returncode != 0:
                raise SystemExit(run.tail())
        if any(second.changed().values()):
            raise SystemExit(f"rerun changed something: {second.changed()}")
        print(f"round: floor {floor.seconds:.2f} s, first {first.seconds:.1f} s, rerun {second.seconds:.2f} s "
              f"({second.seconds / floor.seconds:.2f} x), {len(HEADER.findall(second.output))} tasks", file=sys.stderr)
        if profile:
            _profiled_rerun(hosts, inventory)
        return {"first": first.seconds, "rerun": second.seconds, "floor": floor.seconds,
                "changed_first": sum(first.changed().values()),
                "tasks": len(HEADER.findall(second.output))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--write", metavar="PATH", help="write the results as Markdown")
    parser.add_argument("--profile", action="store_true",
                        help="one more rerun with profile_tasks: print its slowest tasks")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, overlays, systemd-nspawn)")
    repos = standin_repo.build(nspawn.base_rootfs(), software())
    rounds = [one_round(repos, args.profile) for _ in range(args.repeat)]
    for r in rounds:
        r["ratio"] = r["rerun"] / r["floor"]
    figures = {key: statistics.median(r[key] for r in rounds) for key in ("first", "rerun", "floor", "ratio")}
    lines = [
        "# site.yml on three hosts",
        "",
        f"Measured {date.today().isoformat()} on {platform.node()} ({os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}) by `benchmarks/ansible_site.py` (`make bench`): three systemd-nspawn "
        "Debian 12 hosts over SSH, packages from the local stand-in repositories (NVIDIA packages are empty "
        "stand-ins, so install time here is apt and Ansible overhead, not driver builds). "
        f"Median of {args.repeat} round(s) on fresh hosts.",
        "",
        "| run | wall time (s) |",
        "|---|---|",
        f"| fact-gathering floor (setup min+virtual, gpuinfra_hw_facts) | {figures['floor']:.1f} |",
        f"| site.yml, first run ({rounds[0]['changed_first']} changes over 3 hosts) | {figures['first']:.1f} |",
        f"| site.yml, no-op rerun (changed=0; {rounds[0]['tasks']} tasks) | {figures['rerun']:.1f} |",
        f"| no-op rerun / fact floor (same round, median of the rounds' ratios) | {figures['ratio']:.2f} x |",
        "",
        "Both the floor and the rerun open their SSH connections afresh (the first run's are closed first). "
        "The rerun is a floor for every later convergence: package state is read once (one dpkg-query), what "
        "every role manages is checked in one probe per host (gpuinfra_state, run as a plain program on the "
        "host's Python; a role probes again only after a change or where its probe needs what it decides as it "
        "runs) and each role runs its converge tasks only when something drifted. The floor is a fixed yardstick: "
        "Ansible's own `setup` (min, virtual) plus the hardware read; the rerun itself does not run `setup`, "
        "as the hardware read also gives the OS facts the roles use.",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
