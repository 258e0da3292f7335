"""The two paths of the probes give one answer. gpuinfra_state and gpuinfra_package_facts each have an action
plugin that runs them without Ansible's module wrapper (the probe as a plain program on the host's Python, the
package read as a plain dpkg-query), and fall back to the module where pipelining is off. Both paths run here for
real with ansible-playbook over the local connection, on files this test writes."""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
BIN = Path(sys.executable).parent


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = load(ANSIBLE / "module_utils" / "gpuinfra_probe.py")
# The action plugin imports ansible-core, which this test package's name (tests/ansible) shadows in pytest's
# process: its program is built in a Python of its own.
BUILD_PROGRAM = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("plugin", sys.argv[1])
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
sys.stdout.write(plugin.probe_program(json.loads(sys.stdin.read())))
"""


def probe_program(args: dict) -> str:
    done = subprocess.run([sys.executable, "-c", BUILD_PROGRAM, str(ANSIBLE / "action_plugins" / "gpuinfra_state.py")],
                          input=json.dumps(args), capture_output=True, text=True, check=True, cwd="/")
    return done.stdout

# Content that would break a program built by pasting it into source: quotes of every kind, a backslash, a
# template marker and a line that closes a triple-quoted string.
AWKWARD = "a='1'\nb=\"2\"\\n\n'''\n\"\"\"\n{{ x }} {args}\n"
# The same through a playbook, less the template marker (a task's own arguments are templates).
AWKWARD_DATA = AWKWARD.replace("{{ x }} ", "")


def arguments(tmp_path: Path, content: str = AWKWARD) -> dict:
    (tmp_path / "same.conf").write_text(content)
    (tmp_path / "same.conf").chmod(0o644)
    (tmp_path / "other.conf").write_text("changed\n")
    (tmp_path / "stale").write_text("x\n")
    return {"files": [{"path": str(tmp_path / "same.conf"), "content": content, "mode": "0644", "owner": None,
                       "group": None},
                      {"path": str(tmp_path / "other.conf"), "content": content, "owner": None, "group": None},
                      {"path": str(tmp_path / "missing.conf"), "content": "x", "owner": None, "group": None}],
            "absent": [str(tmp_path / "stale")],
            "gpg_keys": [{"path": str(tmp_path / "same.conf"), "fingerprint": "0" * 40}],
            "read": [str(tmp_path / "same.conf"), str(tmp_path / "nowhere")],
            "exists": [str(tmp_path / "other.conf")],
            "glob": [str(tmp_path / "*.conf")]}


def with_defaults(args: dict) -> dict:
    return {name: args.get(name, spec["default"]) for name, spec in probe.ARGUMENT_SPEC.items()}


def test_the_program_the_plugin_sends_answers_as_the_probe_does(tmp_path):
    args = with_defaults(arguments(tmp_path))
    program = probe_program(args)
    assert base64.b64encode(json.dumps(args).encode()).decode() in program  # the values travel encoded
    assert AWKWARD not in program
    done = subprocess.run([sys.executable, "-"], input=program, capture_output=True, text=True, check=True,
                          env={**os.environ, "LC_ALL": "C"})
    answer = json.loads(done.stdout)
    assert answer == probe.probe(args, probe.run_locally)
    assert answer["drifted"][:3] == [f"{tmp_path / 'other.conf'}: content differs",
                                     f"{tmp_path / 'missing.conf'}: missing",
                                     f"{tmp_path / 'stale'}: present, wanted absent"]
    assert answer["drifted"][3].startswith(f"{tmp_path / 'same.conf'}: holds no readable key")
    assert answer["read"] == {str(tmp_path / "same.conf"): AWKWARD, str(tmp_path / "nowhere"): None}


def test_a_missing_tool_is_a_finding_not_a_failure():
    assert probe.run_locally(["/nonexistent/gpg"])[0] == 127
    drift = probe.check_gpg_key(lambda argv: (127, "", "gpg: not found"), {"path": "/etc/hostname",
                                                                            "fingerprint": "AB" * 20})
    assert drift == [f"/etc/hostname: holds no readable key, wanted {'AB' * 20}"]


def playbook(tmp_path: Path, pipelining: bool, args: dict, interpreter: str | None = sys.executable) -> dict:
    book = tmp_path / f"probe-{pipelining}.yml"
    book.write_text(yaml.safe_dump([{
        "hosts": "node1", "gather_facts": False,
        "tasks": [{"name": "probe", "gpuinfra_state": args, "register": "probed"},
                  {"name": "packages", "gpuinfra_package_facts": None},
                  {"name": "hardware", "gpuinfra_hw_facts": {"nvme_model": "none"}, "register": "hardware"},
                  {"name": "setup", "ansible.builtin.setup": {"gather_subset": ["min"]}, "register": "setup"},
                  {"name": "answer", "ansible.builtin.copy": {
                      "content": "{{ {'probe': probed, 'packages': gpuinfra_packages, 'hardware':"
                                 " hardware.ansible_facts, 'setup': setup.ansible_facts} | to_json }}",
                      "dest": str(tmp_path / f"answer-{pipelining}.json"), "mode": "0600"}}]}]))
    inventory = tmp_path / "inventory.yml"
    host = {"ansible_connection": "local"} | ({"ansible_python_interpreter": interpreter} if interpreter else {})
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"node1": host}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_PIPELINING": str(pipelining),
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"), "ANSIBLE_NOCOLOR": "1",
           # Discovery takes the first Python on PATH that answers `command -v`: a version manager's shims (pyenv)
           # answer for versions they cannot run, so the discovering run sees the system's directories only.
           "PATH": f"{BIN}:{os.environ['PATH']}" if interpreter else f"{BIN}:/usr/bin:/bin"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-vvv", "-i", str(inventory), str(book)], cwd=ANSIBLE,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    answer = json.loads((tmp_path / f"answer-{pipelining}.json").read_text())
    answer["wrapped"] = "AnsiballZ_gpuinfra_state" in done.stdout
    answer["hardware_wrapped"] = "AnsiballZ_gpuinfra_hw_facts" in done.stdout
    return answer


@pytest.mark.skipif(not Path("/usr/bin/dpkg-query").exists(), reason="needs dpkg-query (a Debian host)")
def test_the_plain_path_and_the_module_path_give_one_answer(tmp_path):
    args = arguments(tmp_path, AWKWARD_DATA)
    direct = playbook(tmp_path, True, args)
    wrapped = playbook(tmp_path, False, args)
    assert not direct["wrapped"] and wrapped["wrapped"]  # each took the path it was meant to
    assert not direct["hardware_wrapped"] and wrapped["hardware_wrapped"]
    for key in ("drifted", "read", "exists", "glob"):
        assert direct["probe"][key] == wrapped["probe"][key], key
    assert direct["probe"]["changed"] is False and wrapped["probe"]["changed"] is False
    assert direct["packages"] == wrapped["packages"]
    assert "dpkg" in direct["packages"] and direct["packages"]["dpkg"].split(" ")[1] in ("install", "hold")


@pytest.mark.skipif(not Path("/etc/os-release").exists(), reason="needs an os-release file")
def test_the_hardware_read_gives_the_os_facts_setup_gives(tmp_path):
    """Both paths of gpuinfra_hw_facts give one answer, and its operating-system facts are what Ansible's setup
    module says on this machine, under the same names (the roles read them as ansible_distribution* ...)."""
    direct = playbook(tmp_path, True, {})
    wrapped = playbook(tmp_path, False, {})
    for answer in (direct, wrapped):
        hardware = answer["hardware"]
        os_keys = sorted(set(hardware) - {"gpuinfra_hardware"})
        assert {"ansible_distribution", "ansible_distribution_version", "ansible_distribution_major_version",
                "ansible_kernel"} <= set(os_keys)
        assert {key: hardware[key] for key in os_keys} == {key: answer["setup"][key] for key in os_keys}
    same = {key for key in direct["hardware"]["gpuinfra_hardware"] if key not in ("xid_events",)}
    assert ({key: direct["hardware"]["gpuinfra_hardware"][key] for key in same}
            == {key: wrapped["hardware"]["gpuinfra_hardware"][key] for key in same})


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="needs a system Python to discover")
def test_a_host_whose_python_is_not_known_is_asked_first_not_sent_to_the_module(tmp_path):
    """The first read of a host without ansible_python_interpreter (the usual inventory): the direct path runs
    ansible-core's interpreter discovery itself and records the answer as the module path would, instead of
    falling back to the module wrapper for that read."""
    answer = playbook(tmp_path, True, {}, interpreter=None)
    assert not answer["wrapped"] and not answer["hardware_wrapped"]
    # The first task (the probe) discovered it and recorded it; the hardware read after it found it known.
    assert answer["probe"]["ansible_facts"]["discovered_interpreter_python"].startswith("/")
    assert "discovered_interpreter_python" not in answer["hardware"]
    assert "ansible_distribution" in answer["hardware"] and "gpuinfra_hardware" in answer["hardware"]


def probing_role(tmp_path: Path) -> Path:
    """A role that declares its probe as data (vars/main.yml), with an internal that names another, a default
    and a template lookup: what the early probe renders in the role's scope before the role runs."""
    role = tmp_path / "roles" / "probe_me"
    for part in ("defaults", "vars", "tasks", "templates"):
        (role / part).mkdir(parents=True)
    (role / "defaults" / "main.yml").write_text(yaml.safe_dump({"probe_me_name": "world"}))
    (role / "templates" / "greeting.j2").write_text("hello {{ probe_me_name }}\n")
    (role / "vars" / "main.yml").write_text(yaml.safe_dump({
        "__probe_me_file": str(tmp_path / "greeting.conf"),
        "__probe_me_content": "{{ lookup('ansible.builtin.template', 'greeting.j2') }}",
        "__probe_me_probe": {"files": [{"path": "{{ __probe_me_file }}", "content": "{{ __probe_me_content }}",
                                        "mode": "0644", "owner": None, "group": None}]}}))
    (role / "tasks" / "main.yml").write_text(yaml.safe_dump([
        {"name": "Probe", "gpuinfra_state": {"role": "probe_me"}, "register": "probe_me_probe"},
        {"name": "Keep the answer", "ansible.builtin.copy": {
            "content": "{{ probe_me_probe | to_json }}", "dest": "{{ probe_me_answer }}", "mode": "0600"},
         "delegate_to": "localhost"}]))
    (role / "tasks" / "change.yml").write_text(yaml.safe_dump([
        {"name": "Forget", "ansible.builtin.set_fact": {"gpuinfra_early_probe": {}}, "tags": ["always"]},
        {"name": "Write", "ansible.builtin.copy": {"dest": "{{ __probe_me_file }}", "mode": "0644",
                                                   "content": "{{ __probe_me_content }}"}}]))
    return role


def role_modes(tmp_path: Path, pipelining: bool, before_role: list[dict] | None = None):
    """Early probe, the role reusing it, a change that forgets it, the role probing again."""
    answers = tmp_path / f"answers-{pipelining}"
    answers.mkdir()
    run_role = [{"name": "Run the role", "ansible.builtin.include_role": {"name": "probe_me"},
                 "vars": {"probe_me_answer": str(answers / f"{step}.json")}} for step in ("reused", "again")]
    book = tmp_path / f"roles-{pipelining}.yml"
    book.write_text(yaml.safe_dump([{"hosts": "node1", "gather_facts": False, "tasks": [
        {"name": "Early", "gpuinfra_state": {"roles": ["probe_me", "no_such_role"]},
         "register": "gpuinfra_early_probe"},
        {"name": "Keep it", "ansible.builtin.copy": {"content": "{{ gpuinfra_early_probe | to_json }}",
                                                     "dest": str(answers / "early.json"), "mode": "0600"}},
        *(before_role or []), run_role[0],
        {"name": "Change", "ansible.builtin.include_role": {"name": "probe_me", "tasks_from": "change"}},
        run_role[1]]}]))
    inventory = tmp_path / "inventory.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": {"node1": {
        "ansible_connection": "local", "ansible_python_interpreter": sys.executable}}}}))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_PIPELINING": str(pipelining),
           "ANSIBLE_ROLES_PATH": str(tmp_path / "roles"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(inventory), str(book),
                           "-e", '{"gpuinfra_verify_early_probe": true}'], cwd=ANSIBLE, env=env,
                          capture_output=True, text=True, timeout=300)
    read = {path.stem: json.loads(path.read_text()) for path in answers.glob("*.json")}
    return done, read


@pytest.mark.parametrize("pipelining", [True, False])
def test_a_role_reuses_the_early_probe_until_a_change_forgets_it(tmp_path, pipelining):
    probing_role(tmp_path)
    done, answers = role_modes(tmp_path, pipelining)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    wanted = f"{tmp_path / 'greeting.conf'}: missing"
    if pipelining:  # one program for every role that declares a probe; a role that does not is not probed
        assert set(answers["early"]["roles"]) == {"probe_me"}
        assert answers["early"]["roles"]["probe_me"]["answer"]["drifted"] == [wanted]
        assert answers["reused"]["early_probe"] == "reused (verified)"
    else:  # no direct path: no early probe, and the role probes itself through the module
        assert answers["early"]["roles"] == {} and "probe_me" in answers["early"]["left_out"]
        assert "early_probe" not in answers["reused"]
    assert answers["reused"]["drifted"] == [wanted]
    # The change forgot the early answer: the role asked the host again and found the file as it wrote it.
    assert "early_probe" not in answers["again"] and answers["again"]["drifted"] == []
    assert (tmp_path / "greeting.conf").read_text() == "hello world\n"


def test_a_reused_answer_to_another_question_fails_the_verifying_run(tmp_path):
    """With gpuinfra_verify_early_probe, a role whose probe renders otherwise than the early probe rendered it
    (here: its input changed between the two) fails instead of trusting the early answer."""
    probing_role(tmp_path)
    changed_input = [{"name": "Another name", "ansible.builtin.set_fact": {"probe_me_name": "moon"}}]
    done, _ = role_modes(tmp_path, True, changed_input)
    assert done.returncode != 0
    assert "the early probe of probe_me (playbooks/check_input.yml) asked about other items" in done.stdout
    assert "files of __probe_me_probe differ" in done.stdout
    assert not (tmp_path / "greeting.conf").exists()


def test_the_template_lookup_without_the_deep_copy_renders_as_ansible_core_does(tmp_path):
    """lookup_plugins/gpuinfra_template.py (the roles' probes render their templates with it) answers what
    ansible.builtin.template answers, with the template's own variables, options and includes, and leaves the
    task's variables as they were (it only skips the lookup's deep copy of them)."""
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "part.j2").write_text("part of {{ name }}\n")
    (tmp_path / "templates" / "whole.j2").write_text(
        "# {{ ansible_managed }} from {{ template_path | basename }}\n{% for item in items %}{{ item }}={{ extra }}\n"
        "{% endfor %}{% include 'part.j2' %}[[ name ]]\n")
    calls = {"plain": "'whole.j2', template_vars={'extra': 'x'}",
             "brackets": "'whole.j2', variable_start_string='[[', variable_end_string=']]', template_vars={'extra': 1}"}
    rendered = {f"{way}_{case}": f"lookup('{lookup}', {args})" for case, args in calls.items()
                for way, lookup in (("core", "ansible.builtin.template"), ("ours", "gpuinfra_template"))}
    content = "{{ {" + ", ".join(f"'{key}': {call}" for key, call in rendered.items()) + \
        ", 'leaked': template_path is defined} | to_json }}"
    book = tmp_path / "render.yml"
    book.write_text(yaml.safe_dump([{"hosts": "localhost", "gather_facts": False,
                                     "vars": {"name": "node1", "items": ["a", "b"]}, "tasks": [
        {"name": "Render both ways", "ansible.builtin.copy": {
            "dest": str(tmp_path / "rendered.json"), "mode": "0600", "content": content}}]}]))
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
           "ANSIBLE_NOCOLOR": "1", "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", "-e",
                           f"ansible_python_interpreter={sys.executable}", str(book)], cwd=ANSIBLE,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    answer = json.loads((tmp_path / "rendered.json").read_text())
    for case in calls:
        assert answer[f"ours_{case}"] == answer[f"core_{case}"], case
    assert answer["ours_plain"] == "# Ansible managed from whole.j2\na=x\nb=x\npart of node1[[ name ]]\n"
    assert answer["ours_brackets"].endswith("{{ item }}={{ extra }}\npart of {{ name }}node1\n")
    assert answer["leaked"] is False
