"""site.yml on three real systemd hosts (debootstrap'd Debian 12 under systemd-nspawn, reached over SSH,
packages from the local stand-in repositories of tests/rigs): the full first run, the no-op rerun, and the
fact-gathering floor (a play that only gathers the facts every layer needs). Needs root.

Each figure is one run on fresh hosts (the first run cannot be repeated on the same hosts); --repeat brings
up new hosts each time and reports the median.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

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
"""


def one_round(repos) -> dict[str, float]:
    floor_book = ANSIBLE_DIR / "playbooks" / ".bench-fact-floor.yml"
    with nspawn.NspawnHosts(repos, count=3) as hosts:
        inventory = hosts.inventory(hosts.workdir / "hosts.yml", host_group_vars(repos), HOST_VARS)
        floor_book.write_text(FACT_FLOOR_PLAY)
        try:
            floor = run_playbook(floor_book.name, inventory, prefix=hosts.netns_exec())
        finally:
            floor_book.unlink()
        first = run_playbook("site.yml", inventory, prefix=hosts.netns_exec())
        second = run_playbook("site.yml", inventory, prefix=hosts.netns_exec())
        for run in (floor, first, second):
            if run.returncode != 0:
                raise SystemExit(run.tail())
        if any(second.changed().values()):
            raise SystemExit(f"rerun changed something: {second.changed()}")
        return {"first": first.seconds, "rerun": second.seconds, "floor": floor.seconds,
                "changed_first": sum(first.changed().values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--write", metavar="PATH", help="write the results as Markdown")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (network namespaces, overlays, systemd-nspawn)")
    repos = standin_repo.build(nspawn.base_rootfs(), software())
    rounds = [one_round(repos) for _ in range(args.repeat)]
    figures = {key: statistics.median(r[key] for r in rounds) for key in ("first", "rerun", "floor")}
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
        f"| site.yml, no-op rerun (changed=0) | {figures['rerun']:.1f} |",
        "",
        "The rerun is a floor for every later convergence: each role still reads package state, the repository "
        "key and unit states before deciding nothing needs doing.",
    ]
    emit(lines, args.write)


if __name__ == "__main__":
    main()
