"""The early probe (playbooks/check_input.yml probes every role of a run at once; each role reuses that answer
while nothing has changed the host) is only right if the answer is forgotten the moment anything changes a
host, and if the early rendering of a role's probe sees the values the role itself sees. Both are properties
of the task files, checked here on every role; the nspawn site tests check the answers for real (with
gpuinfra_verify_early_probe, which renders each reused probe again inside its role and compares), and
test_probe_paths runs the plugin's modes on this machine."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

from .task_files import steps

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"
ROLE_NAMES = sorted(p.name for p in ROLES.iterdir() if p.is_dir())
# Modules that never change the host they run on (their tasks may register or set facts).
READ_ONLY = {"ansible.builtin.set_fact", "ansible.builtin.assert", "ansible.builtin.debug", "ansible.builtin.fail",
             "ansible.builtin.meta", "ansible.builtin.validate_argument_spec", "ansible.builtin.stat",
             "ansible.builtin.find", "ansible.builtin.setup", "gpuinfra_state", "gpuinfra_package_facts",
             "gpuinfra_hw_facts", "gpuinfra_check_input", "gpuinfra_acceptance"}
INCLUDES = {"ansible.builtin.import_tasks", "ansible.builtin.include_tasks"}
# Task keywords: whatever else a task holds is its module.
KEYWORDS = {"name", "when", "tags", "register", "check_mode", "changed_when", "failed_when", "become", "vars", "loop",
            "loop_control", "notify", "delegate_to", "run_once", "any_errors_fatal", "no_log", "environment", "until",
            "retries", "delay", "args", "ignore_errors", "delegate_facts", "become_user", "throttle", "listen"}
FORGET = {"ansible.builtin.set_fact": {"gpuinfra_early_probe": {}}}


def module(task: dict) -> str:
    names = [key for key in task if key not in KEYWORDS]
    assert len(names) == 1, task
    return names[0]


def tasks_of(role: str, name: str) -> list[dict]:
    return yaml.safe_load((ROLES / role / "tasks" / name).read_text()) or []


def forgets_first(role: str, name: str) -> bool:
    first = tasks_of(role, name)[:1]
    return bool(first) and {key: value for key, value in first[0].items() if key not in KEYWORDS} == FORGET


def unguarded_changes(role: str, name: str, forgotten: bool, seen: set) -> list[str]:
    """The tasks reachable from role/tasks/name that can change the host before the early probe was forgotten."""
    if (role, name, forgotten) in seen:
        return []
    seen.add((role, name, forgotten))
    forgotten = forgotten or forgets_first(role, name)
    found = []
    for task in steps(tasks_of(role, name)):
        kind = module(task)
        if kind in INCLUDES:
            target = task[kind] if isinstance(task[kind], str) else task[kind]["file"]
            found += unguarded_changes(role, target, forgotten, seen)
        elif kind == "ansible.builtin.include_role":
            other, entry = task[kind]["name"], task[kind].get("tasks_from", "main")
            for entry_point in (["run", "main"] if "{{" in entry else [entry]):
                found += unguarded_changes(other, f"{entry_point}.yml", forgotten, seen)
        elif kind in READ_ONLY or task.get("changed_when") is False or task.get("delegate_to") == "localhost":
            continue  # changes nothing on the host (the controller's own files are no role's probe)
        elif not forgotten:
            found.append(f"{role}/tasks/{name}: {task.get('name')}")
    return found


@pytest.mark.parametrize("role", ROLE_NAMES)
def test_every_task_that_changes_a_host_comes_after_the_early_probe_is_forgotten(role):
    entry_points = [name for name in ("main.yml", "run.yml") if (ROLES / role / "tasks" / name).is_file()]
    assert unguarded_changes(role, entry_points[0], False, set()) == []
    for name in entry_points[1:]:
        assert unguarded_changes(role, name, False, set()) == []


def test_the_walk_finds_a_change_that_is_not_guarded(tmp_path, monkeypatch):
    """The check above can fail: a role with a copy task outside a forgetting file is reported."""
    role = tmp_path / "careless" / "tasks"
    role.mkdir(parents=True)
    (role / "main.yml").write_text(yaml.safe_dump([
        {"name": "Look", "gpuinfra_state": {"role": "careless"}},
        {"name": "Write", "ansible.builtin.copy": {"dest": "/etc/x", "content": "y"}},
        {"name": "Converge", "ansible.builtin.include_tasks": {"file": "converge.yml"}}]))
    (role / "converge.yml").write_text(yaml.safe_dump([
        {"name": "Forget", "ansible.builtin.set_fact": {"gpuinfra_early_probe": {}}, "tags": ["always"]},
        {"name": "Write more", "ansible.builtin.copy": {"dest": "/etc/z", "content": "y"}}]))
    monkeypatch.setattr(sys.modules[__name__], "ROLES", tmp_path)
    assert unguarded_changes("careless", "main.yml", False, set()) == ["careless/tasks/main.yml: Write"]


def names_set_in_tasks() -> dict[str, set[str]]:
    """Every variable a role's tasks set (set_fact keys, register names), by role."""
    found: dict[str, set[str]] = {}
    for role in ROLE_NAMES:
        for path in (ROLES / role / "tasks").glob("*.yml"):
            for task in steps(yaml.safe_load(path.read_text()) or []):
                names = set(task.get("ansible.builtin.set_fact") or {}) - {"cacheable"}
                names |= {task["register"]} if "register" in task else set()
                found.setdefault(role, set()).update(names)
    return found


def test_no_task_sets_a_variable_that_a_role_defines():
    """The early probe renders a role's probe from its defaults, its internals and the host's variables before
    the role runs. A task that set one of those names later would make the role see another value than the early
    rendering did; a name first defined by a task is undefined early, and the role is left out of it instead."""
    defined = set()
    for role in ROLE_NAMES:
        for name in ("defaults/main.yml", "vars/main.yml"):
            path = ROLES / role / name
            defined |= set(yaml.safe_load(path.read_text()) or {}) if path.is_file() else set()
    clashes = {role: names & defined for role, names in names_set_in_tasks().items() if names & defined}
    assert clashes == {}


@pytest.mark.parametrize("role", [r for r in ROLE_NAMES if "gpuinfra_state:\n    role:" in "".join(
    p.read_text() for p in (ROLES / r / "tasks").glob("*.yml"))])
def test_a_role_that_probes_by_name_declares_its_probe_and_names_only_itself(role):
    internals = yaml.safe_load((ROLES / role / "vars" / "main.yml").read_text())
    assert isinstance(internals.get(f"__{role}_probe"), dict), role
    calls = re.findall(r"gpuinfra_state:\n\s+role: (\w+)", "".join(
        p.read_text() for p in (ROLES / role / "tasks").glob("*.yml")))
    assert set(calls) == {role}
