"""Action plugin of gpuinfra_state: the probe without Ansible's module wrapper, and the early probe of a run.

A probe is one read-only look at a role's files, units and settings, run on every no-op rerun for every role.
Through the module wrapper one probe costs about 0.4 s for three hosts, several times the checks themselves.
This plugin sends module_utils/gpuinfra_probe.py to the host's Python as a plain program
(plugin_utils/gpuinfra_direct.py): ~0.1 s. Where that path is not open, the task runs the module
(library/gpuinfra_state.py), which calls the same probe.

Three ways to call it:
- the probe's own options (files, units, ...): that probe;
- `role: <role>`: the probe the role declares as data in its vars/main.yml (`__<role>_probe`, a dict of those
  options). Where playbooks/check_input.yml probed the role early in this run and nothing has changed the host
  since, its answer is returned without asking the host again;
- `roles: [...]`: the early probe. Every listed role that declares `__<role>_probe` is probed in one program
  (one exchange for all of them, with each role's variables as the role itself would see them:
  plugin_utils/gpuinfra_role_scope.py). Registered as gpuinfra_early_probe, a contract variable. Every task file
  of a role that changes a host starts by forgetting it (`gpuinfra_early_probe: {}`, a test checks this), so a
  role after a change probes the host again. A role whose probe needs what it decides as it runs (a variable
  not defined before it runs) is left out and probes itself, and so is one whose `__<role>_probe_when` (the
  condition of its probe task) is false.

With gpuinfra_verify_early_probe true (the tests), a role that reuses the early answer renders its probe again
and fails if the early probe asked about anything else.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
import sys
from pathlib import Path

from ansible.errors import AnsibleActionFail, AnsibleUndefinedVariable
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase

# Action plugins are loaded by path, not as a package: their shared controller code is found on sys.path.
if (_PLUGIN_UTILS := str(Path(__file__).resolve().parents[1] / "plugin_utils")) not in sys.path:
    sys.path.append(_PLUGIN_UTILS)
import gpuinfra_direct  # noqa: E402
import gpuinfra_role_scope  # noqa: E402

EARLY = "gpuinfra_early_probe"  # the early probe's registered answer (playbooks/check_input.yml)
VERIFY = "gpuinfra_verify_early_probe"
MODE_SPEC = {"role": {"type": "str"}, "roles": {"type": "list", "elements": "str"}}
INTERNAL = re.compile(r"\b__[a-z0-9_]+")


def probe_program(args: dict) -> str:
    """The program this plugin sends: the probe's source with the validated arguments embedded."""
    return gpuinfra_direct.program("gpuinfra_probe", args)


def spec_variable(role: str) -> str:
    """The variable of a role's vars/main.yml that declares its probe."""
    return f"__{role}_probe"


def render_probe(templar, role: str):
    """The role's probe (`__<role>_probe`) as templar renders it, each of the role's internals it reads
    (directly or through another) rendered once rather than at each reference: ansible-core renders a variable
    again wherever a template names it, and the probes' internals name each other many times (most of a probe's
    cost was rendering)."""
    variables = dict(templar.available_variables)
    own, name = f"__{role}_", spec_variable(role)
    needed, todo = set(), [name]
    while todo:
        raw = variables[todo.pop()]
        for found in INTERNAL.findall(raw if isinstance(raw, str) else json.dumps(raw, default=str)):
            if found.startswith(own) and found in variables and found not in needed and found != name:
                needed.add(found)
                todo.append(found)
    renderer = templar.copy_with_new_env(available_variables=variables)
    for internal in [key for key in variables if key in needed]:  # in the file's order: mostly dependencies first
        with contextlib.suppress(AnsibleUndefinedVariable):  # left as it is: it fails, or not, where it is read
            variables[internal] = renderer.template(variables[internal])
        renderer = templar.copy_with_new_env(available_variables=variables)
    return renderer.template(variables[name])


@functools.cache
def _probe_validator() -> ArgumentSpecValidator:
    """One per process: the validator deep-copies the spec it is built from."""
    return ArgumentSpecValidator(gpuinfra_direct.load("gpuinfra_probe").ARGUMENT_SPEC)


def digests(params: dict) -> dict[str, str]:
    """A digest of each option of a probe: what the early probe asked, kept small (contents are long)."""
    return {key: hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]
            for key, value in params.items()}


class ActionModule(gpuinfra_direct.DirectProgramAction):
    SOURCE = "gpuinfra_probe"
    MODULE = "ansible.legacy.gpuinfra_state"
    WHAT = "the state probe"

    def run(self, tmp=None, task_vars=None):
        if not {"role", "roles"} & set(self._task.args):
            return super().run(tmp, task_vars)
        result = ActionBase.run(self, tmp, task_vars)
        _, mode = self.validate_argument_spec(argument_spec=MODE_SPEC, mutually_exclusive=[("role", "roles")])
        task_vars = task_vars or {}
        if mode["roles"] is not None:
            return result | self._probe_early(mode["roles"], task_vars)
        return result | self._probe_role(mode["role"], task_vars)

    def _probe_role(self, role: str, task_vars: dict) -> dict:
        name = spec_variable(role)
        if name not in task_vars:
            raise AnsibleActionFail(f"role {role} declares no {name} (vars/main.yml) to probe")
        early = ((task_vars.get(EARLY) or {}).get("roles") or {}).get(role)
        if early is not None and not boolean(task_vars.get(VERIFY, False), strict=False):
            return {**early["answer"], "early_probe": "reused"}
        templar = self._templar.copy_with_new_env(available_variables=task_vars)
        if early is None:
            return self.ask(self._validated(role, render_probe(templar, role)), task_vars)
        # Verified the plain way (each reference rendered where it is): the early probe used render_probe.
        params = self._validated(role, templar.template(task_vars[name]))
        differ = sorted(key for key, value in digests(params).items() if early["digests"].get(key) != value)
        if differ:
            raise AnsibleActionFail(f"the early probe of {role} (playbooks/check_input.yml) asked about other "
                                    f"items than the role asks about now: {', '.join(differ)} of {name} differ")
        return {**early["answer"], "early_probe": "reused (verified)"}

    def _probe_early(self, roles: list[str], task_vars: dict) -> dict:
        specs, left_out = {}, {}
        for role in roles:
            templar = gpuinfra_role_scope.role_templar(self._templar, self._loader, role, task_vars)
            name = spec_variable(role)
            if name not in templar.available_variables:
                continue  # the role declares no probe as data
            try:
                if not self._wanted(templar, role):
                    continue
                specs[role] = self._validated(role, render_probe(templar, role))
            except AnsibleUndefinedVariable as undefined:  # it needs what the role decides as it runs
                left_out[role] = str(undefined.message)
        answers = self.ask(specs, task_vars, entry="answer_each") if specs else {}
        if answers is None:  # no direct path (no pipelining): each role probes itself
            return {"changed": False, "roles": {}, "left_out": dict.fromkeys(specs, "no direct path") | left_out}
        facts = answers.pop("ansible_facts", None)
        early = {"changed": False, "left_out": left_out,
                 "roles": {role: {"answer": answers[role], "digests": digests(specs[role])} for role in specs}}
        return early | ({"ansible_facts": facts} if facts else {})

    @staticmethod
    def _wanted(templar, role: str) -> bool:
        """Whether the role runs its probe on this host: `__<role>_probe_when`, where it declares one (its probe
        task's `when:` reads the same variable)."""
        condition = templar.available_variables.get(f"{spec_variable(role)}_when")
        return condition is None or boolean(templar.template(condition), strict=False)

    @staticmethod
    def _validated(role: str, spec) -> dict:
        if not isinstance(spec, dict):
            raise AnsibleActionFail(f"{spec_variable(role)} of role {role} is not a dict of the probe's options")
        validated = _probe_validator().validate(spec)
        if validated.error_messages:
            raise AnsibleActionFail(f"{spec_variable(role)} of role {role}: {'; '.join(validated.error_messages)}")
        return validated.validated_parameters
