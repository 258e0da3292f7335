"""Action plugin: check the input of one or more roles on the controller, in one task, before anything changes.

For each role named in `roles`, in order:
1. its options (meta/argument_specs.yml, entry point `main`) are checked by ansible-core's own
   ArgumentSpecValidator, as the role's implicit argument spec validation does: types, choices, nested keys;
2. when they pass, the ranges and formats an argument spec cannot express are checked by the role's function in
   module_utils/gpuinfra_input_rules.py, on the values as the argument spec validated them.

Every wrong value of every role is reported at once, each with its variable and the reason; nothing on the host
is read or changed (no connection is opened). On success the roles are added to gpuinfra_checked_roles, so the
roles' own input steps skip the same checks later in the run.

The values are those the role would see: the host's variables over the role's defaults (defaults/main.yml,
templated with the role's internals, vars/main.yml, in scope: plugin_utils/gpuinfra_role_scope.py). Reading
them here is what lets one task check eleven roles instead of an include, an argument spec task and an assert
per role (most of a no-op rerun's work).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import yaml
from ansible.errors import AnsibleActionFail
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible.plugins.action import ActionBase

# Action plugins are loaded by path, not as a package: their shared controller code is found on sys.path.
if (_PLUGIN_UTILS := str(Path(__file__).resolve().parents[1] / "plugin_utils")) not in sys.path:
    sys.path.append(_PLUGIN_UTILS)
import gpuinfra_direct  # noqa: E402
import gpuinfra_role_scope  # noqa: E402

ARGUMENT_SPEC = {"roles": {"type": "list", "elements": "str", "required": True}}
# The argument specs are plain data (nothing in them is templated): libyaml's loader reads them ~10 times faster
# than ansible-core's, which tags every value with its origin and trust.
SPEC_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _requires_connection = False
    _supports_check_mode = True  # reads variables only

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        task_vars = task_vars or {}
        unknown = [role for role in args["roles"] if not self._spec_file(role).is_file()]
        if unknown:
            raise AnsibleActionFail(f"no role with an argument spec named {', '.join(unknown)} in the roles path")
        errors = {role: found for role in args["roles"] if (found := self._check_role(role, task_vars))}
        result["changed"] = False
        if errors:
            result["failed"] = True
            result["input_errors"] = errors
            result["msg"] = "Input refused, nothing was changed: " + "; ".join(
                f"[{role}] {message}" for role, messages in errors.items() for message in messages)
            return result
        checked = list(task_vars.get("gpuinfra_checked_roles") or [])
        result["ansible_facts"] = {"gpuinfra_checked_roles": checked + [r for r in args["roles"] if r not in checked]}
        result["msg"] = f"input of {', '.join(args['roles'])} passed"
        return result

    def _check_role(self, role: str, task_vars: dict) -> list[str]:
        specs = yaml.load(self._spec_file(role).read_text(), Loader=SPEC_LOADER)
        options = specs["argument_specs"]["main"].get("options") or {}
        templar = gpuinfra_role_scope.role_templar(self._templar, self._loader, role, task_vars)
        variables = templar.available_variables
        values = templar.template({name: variables[name] for name in options if name in variables})
        validated = ArgumentSpecValidator(options).validate(values, validate_role_argument_spec=True)
        if validated.error_messages:
            # The ranges are checked on values of the right type only: the types first, as a role run does.
            return list(validated.error_messages)
        contract = functools.cache(lambda name: templar.template(variables[name]) if name in variables else None)
        return list(gpuinfra_direct.load("gpuinfra_input_rules").RULES[role](validated.validated_parameters, contract))

    @staticmethod
    def _spec_file(role: str) -> Path:
        return gpuinfra_role_scope.role_dir(role) / "meta" / "argument_specs.yml"
