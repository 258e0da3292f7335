"""`env up --serve`: the inventory (gpuinfra.inventory's writer), host bring-up and serving through the
project's own playbooks (ansible/playbooks/site.yml, whose host layer also installs the node_expiry dead
man's switch), then the first completion the inference_server role sent and timed.

The hosts come from the stack (the aws_ec2 inventory source finds the nodes by their `gpuinfra:stack` tag)
or, with `--hosts-inventory FILE`, from a static inventory (bare metal, or the test hosts of the stand-in
engine, which launches nothing). Files land in ~/.gpuinfra/environments/NAME/ (inventory/, reports/, logs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gpuinfra.config import DEFAULT_SERVING_PORT
from gpuinfra.environments.context import Context
from gpuinfra.environments.models import Lifecycle, ServingRecord, utc_text
from gpuinfra.errors import Problem

ANSIBLE_DIR = Path(__file__).resolve().parents[3] / "ansible"
PROMETHEUS_PORT = 9090  # Debian's prometheus package, which the monitoring role installs


class ServeFailed(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem
        super().__init__(str(problem))


def environment_vars(name: str, lifecycle: Lifecycle) -> dict[str, Any]:
    """What the roles know of the environment: the node_expiry role powers nodes off after expires_at."""
    return {"gpuinfra_environment": {"name": name, "environment_id": lifecycle.environment_id,
                                     "owner": lifecycle.owner, "expires_at": utc_text(lifecycle.expires_at)}}


def write_environment_vars(directory: Path, name: str, lifecycle: Lifecycle) -> None:
    (directory / "group_vars" / "all.yml").write_text(
        "# Written by `gpuinfra env up`; `gpuinfra env extend` rewrites it.\n"
        + yaml.safe_dump(environment_vars(name, lifecycle), sort_keys=False), encoding="utf-8")


def write_inventory(work: Path, name: str, lifecycle: Lifecycle, outputs: dict[str, Any],
                    hosts_inventory: Path | None) -> Path:
    """The project's inventory writer, plus the environment's vars; returns the inventory source to use."""
    from gpuinfra.inventory import load_outputs, write_directory

    directory = work / "inventory"
    write_directory(load_outputs(outputs, "outputs"), directory)
    write_environment_vars(directory, name, lifecycle)
    if hosts_inventory is None:
        return directory / "aws_ec2.yml"
    shutil.copyfile(hosts_inventory, directory / "hosts.yml")
    return directory / "hosts.yml"


def ansible_env() -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_RETRY_FILES_ENABLED": "0",
            "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}


def run_playbook(playbook: str, source: Path, extra_vars: dict[str, Any], log: Path, on_task) -> None:
    """ansible-playbook, streamed: each TASK line is progress; the whole output goes to LOG."""
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(source), f"playbooks/{playbook}",
            "-e", json.dumps(extra_vars)]
    task, failure = "", ""
    with log.open("w", encoding="utf-8") as handle, subprocess.Popen(
            argv, cwd=ANSIBLE_DIR, env=ansible_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True) as process:
        assert process.stdout is not None
        lines_after_fatal = 0
        for line in process.stdout:
            handle.write(line)
            if line.startswith("TASK ["):
                task = line[len("TASK ["):].split("]", 1)[0]
                on_task(task)
            elif line.startswith(("fatal: [", "failed: [")) and not failure:
                failure, lines_after_fatal = f"{task}: {line.strip()}", 6
            elif lines_after_fatal:
                failure, lines_after_fatal = f"{failure} {line.strip()}", lines_after_fatal - 1
    if process.returncode != 0:
        raise ServeFailed(Problem("--serve", f"{playbook} failed (exit {process.returncode}) at {failure[:600] or task}"
                                             f"; full log: {log}"))


def inventory_hosts(source: Path) -> dict[str, Any]:
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-inventory"), "-i", str(source), "--list"],
                          cwd=ANSIBLE_DIR, env=ansible_env(), capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise ServeFailed(Problem("--serve", f"ansible-inventory failed: {done.stderr[-1000:]}"))
    return json.loads(done.stdout)


def address_of(inventory: dict[str, Any], host: str) -> str:
    host_vars = inventory.get("_meta", {}).get("hostvars", {}).get(host, {})
    return host_vars.get("gpuinfra_private_ip") or host_vars.get("ansible_host") or host


def first_completion(reports: Path) -> tuple[str, float]:
    """The head's serving record (inference_server role): (host, time to first token)."""
    for path in sorted(reports.glob("*-serving.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        completion = record.get("first_completion") or {}
        if completion.get("ok"):
            return record["host"], float(completion["ttft_s"])
    raise ServeFailed(Problem("--serve", f"no successful first completion recorded in {reports}"))


def serve_environment(ctx: Context, name: str, lifecycle: Lifecycle, outputs: dict[str, Any],
                      hosts_inventory: Path | None) -> ServingRecord:
    work = ctx.home / "environments" / name
    reports = work / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    source = write_inventory(work, name, lifecycle, outputs, hosts_inventory)
    extra = {"inference_server_report_dir": str(reports), "node_validation_report_dir": str(reports),
             "monitoring_output_dir": str(reports / "monitoring")}
    with ctx.stages.stage(f"bring-up and serving: site.yml on {source.name}") as detail:
        run_playbook("site.yml", source, extra, work / "site.log", detail)
    with ctx.stages.stage("first completion"):
        head, ttft = first_completion(reports)
        inventory = inventory_hosts(source)
    port = next(iter(outputs.get("node_plans", {}).values()), {}).get("serving", {}).get("port", DEFAULT_SERVING_PORT)
    endpoint = (f"http://{outputs['endpoint_dns_name']}:{port}" if outputs.get("endpoint_dns_name")
                else f"http://{address_of(inventory, head)}:{port}")
    monitoring = inventory.get("monitoring", {}).get("hosts") or []
    prometheus = f"http://{address_of(inventory, monitoring[0])}:{PROMETHEUS_PORT}" if monitoring else None
    return ServingRecord(endpoint=endpoint, ttft_s=ttft, prometheus_url=prometheus)


def refresh_expiry(ctx: Context, name: str, lifecycle: Lifecycle) -> bool:
    """After `env extend`: move the nodes' own deadline (node_expiry) where this machine served them."""
    work = ctx.home / "environments" / name
    directory = work / "inventory"
    source = directory / "hosts.yml" if (directory / "hosts.yml").exists() else directory / "aws_ec2.yml"
    if not source.exists():
        return False
    write_environment_vars(directory, name, lifecycle)
    with ctx.stages.stage("move the nodes' deadline: expiry.yml") as detail:
        run_playbook("expiry.yml", source, {}, work / "expiry.log", detail)
    return True
