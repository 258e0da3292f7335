"""Action plugin of gpuinfra_state: the probe without Ansible's module wrapper.

A probe is one read-only look at a role's files, units and settings, run on every no-op rerun for every role.
Through the module wrapper (AnsiballZ: the module and its imports zipped, unpacked and imported on the host)
one probe costs about 0.4 s for three hosts, several times the checks themselves. This plugin sends
module_utils/gpuinfra_probe.py to the host's Python as a plain program on stdin over the pipelined connection,
its arguments embedded as base64 JSON (data, never code), and reads the answer from stdout: ~0.1 s.

Where that path is not open (no pipelining: a connection without it, a become method that needs a tty; or an
interpreter not yet discovered), the task runs the module (library/gpuinfra_state.py), which calls the same
probe. Both validate the same ARGUMENT_SPEC.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import shlex
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

try:  # private helpers of the pinned ansible-core; without them every probe takes the module path
    from ansible.executor.interpreter_discovery import InterpreterDiscoveryRequiredError
    from ansible.executor.module_common import _get_shebang
except ImportError:  # pragma: no cover - another ansible-core
    _get_shebang = None

PROBE_SOURCE = Path(__file__).resolve().parents[1] / "module_utils" / "gpuinfra_probe.py"
MODULE = "ansible.legacy.gpuinfra_state"
# Appended to the probe's source: read the arguments, run every check with the local runner, print the answer.
PROGRAM_TAIL = """
import base64 as _base64, json as _json, sys as _sys
_sys.stdout.write(_json.dumps(probe(_json.loads(_base64.b64decode({args!r})), run_locally)))
"""


def probe_program(args: dict) -> str:
    """The probe's source with the validated arguments embedded (base64 of their JSON: data, never code)."""
    encoded = base64.b64encode(json.dumps(args).encode()).decode()
    return _probe_source() + PROGRAM_TAIL.format(args=encoded)


@functools.cache
def _probe_source() -> str:
    return PROBE_SOURCE.read_text(encoding="utf-8")


@functools.cache
def _load_probe():
    """The probe as a module on the controller, for its ARGUMENT_SPEC (read once per process)."""
    spec = importlib.util.spec_from_file_location("gpuinfra_probe", PROBE_SOURCE)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


class ActionModule(ActionBase):
    _requires_connection = True
    _supports_check_mode = True  # read-only: the same in check mode

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=_load_probe().ARGUMENT_SPEC)
        interpreter = self._direct_interpreter(task_vars or {})
        if interpreter is None:
            return result | self._execute_module(module_name=MODULE, module_args=args, task_vars=task_vars)
        return result | self._probe_directly(interpreter, args)

    def _direct_interpreter(self, task_vars: dict) -> str | None:
        """The host's Python, when the plain-program path is open; None sends the task to the module."""
        if _get_shebang is None or not self._connection.is_pipelining_enabled():
            return None
        use_vars = task_vars["ansible_delegated_vars"][self._task.delegate_to] if self._task.delegate_to else task_vars
        try:
            _, interpreter = _get_shebang("/usr/bin/python", use_vars, self._templar,
                                          remote_is_local=bool(getattr(self._connection, "_remote_is_local", False)))
        except InterpreterDiscoveryRequiredError:
            return None  # the module path discovers it (and records it for the next probe)
        return interpreter

    def _probe_directly(self, interpreter: str, args: dict) -> dict:
        done = self._low_level_execute_command(f"LC_ALL=C {shlex.quote(interpreter)} -", sudoable=True,
                                               in_data=probe_program(args).encode("utf-8"))
        if done["rc"] != 0:
            raise AnsibleActionFail(f"the state probe failed on the host (rc {done['rc']}): "
                                    f"{(done.get('stderr') or done.get('stdout') or '').strip()[-2000:]}")
        try:
            return json.loads(done["stdout"])
        except ValueError as error:
            raise AnsibleActionFail(f"the state probe answered something that is not JSON ({error}): "
                                    f"{done['stdout'][:500]!r}") from error
