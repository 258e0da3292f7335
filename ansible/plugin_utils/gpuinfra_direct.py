"""The controller's half of the direct path: an action plugin that sends a standard-library Python file to the
host's Python as a plain program on stdin over the pipelined connection, its arguments embedded as base64 JSON
(data, never code), and reads the answer from stdout.

Through Ansible's module wrapper (AnsiballZ: the module and its imports zipped on the controller, unpacked and
imported on the host) one read-only module run costs several times what it reads on a no-op rerun, and the zip
is built again in every worker that runs it. The state probe and the hardware facts take this path.

Where it is not open (no pipelining: a connection without it, a become method that needs a tty), the task
runs the plugin's module, which calls the same file. A host whose Python is not yet known is asked with
ansible-core's own interpreter discovery first (one shell exchange), as the module path would, and the answer
is recorded the same way (`discovered_interpreter_python`). Both validate
the same ARGUMENT_SPEC. Loaded by path from the action plugins (action_plugins/ holds only plugins).
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

try:  # private helpers of the pinned ansible-core; without them every run takes the module path
    from ansible.executor.interpreter_discovery import InterpreterDiscoveryRequiredError, discover_interpreter
    from ansible.executor.module_common import _get_shebang
except ImportError:  # pragma: no cover - another ansible-core
    _get_shebang = None

MODULE_UTILS = Path(__file__).resolve().parents[1] / "module_utils"
# Appended to the program's source: read the arguments, print the answer of its answer(params).
PROGRAM_TAIL = """
import base64 as _base64, json as _json, sys as _sys
_sys.stdout.write(_json.dumps({entry}(_json.loads(_base64.b64decode({args!r})))))
"""


def program(source_name: str, args: dict, entry: str = "answer") -> str:
    """module_utils/<source_name>.py with the validated arguments embedded (base64 of their JSON), printing
    what its function `entry` answers for them."""
    encoded = base64.b64encode(json.dumps(args).encode()).decode()
    return _source(source_name) + PROGRAM_TAIL.format(entry=entry, args=encoded)


@functools.cache
def _source(source_name: str) -> str:
    return (MODULE_UTILS / f"{source_name}.py").read_text(encoding="utf-8")


@functools.cache
def load(source_name: str):
    """module_utils/<source_name>.py as a module on the controller, for its ARGUMENT_SPEC (once per process)."""
    spec = importlib.util.spec_from_file_location(source_name, MODULE_UTILS / f"{source_name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class DirectProgramAction(ActionBase):
    """Runs module_utils/SOURCE.py's answer(params) on the host directly, else the module MODULE."""

    SOURCE: str = ""
    MODULE: str = ""
    WHAT: str = "the program"  # in error messages: "<WHAT> failed on the host"
    _requires_connection = True
    _supports_check_mode = True  # read-only: the same in check mode

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        _, args = self.validate_argument_spec(argument_spec=load(self.SOURCE).ARGUMENT_SPEC)
        return result | self.ask(args, task_vars or {})

    def ask(self, args: dict, task_vars: dict, entry: str = "answer") -> dict | None:
        """What SOURCE's `entry` answers for the validated `args` on the host. Where the direct path is not open,
        the module's answer for `answer`, and None for any other entry (it has no module)."""
        interpreter, discovered = self._direct_interpreter(task_vars)
        if interpreter is None:
            if entry != "answer":
                return None
            return self._execute_module(module_name=self.MODULE, module_args=args, task_vars=task_vars)
        answer = self._run_directly(interpreter, program(self.SOURCE, args, entry))
        if discovered:  # recorded as the module path would: the host's later tasks need no discovery
            answer["ansible_facts"] = {**answer.get("ansible_facts", {}), **discovered}
        return answer

    def _direct_interpreter(self, task_vars: dict) -> tuple[str | None, dict]:
        """The host's Python when the plain-program path is open (None sends the task to the module), and the
        fact to record when it had to be discovered."""
        if _get_shebang is None or not self._connection.is_pipelining_enabled():
            return None, {}
        use_vars = task_vars["ansible_delegated_vars"][self._task.delegate_to] if self._task.delegate_to else task_vars
        remote_is_local = bool(getattr(self._connection, "_remote_is_local", False))
        try:
            return _get_shebang("/usr/bin/python", use_vars, self._templar, remote_is_local=remote_is_local)[1], {}
        except InterpreterDiscoveryRequiredError as needed:
            if self._task.delegate_to and not self._task.delegate_facts:
                return None, {}  # the fact would belong to another host: the module path records it
            # ansible-core's own discovery (one shell exchange), which the module path would run first; its
            # fact is what the module path returns, so the host's later tasks find the interpreter known.
            found = discover_interpreter(action=self, interpreter_name=needed.interpreter_name,
                                         discovery_mode=needed.discovery_mode, task_vars=use_vars)
            if not found:
                return None, {}
            return found, {f"discovered_interpreter_{needed.interpreter_name}": found}

    def _run_directly(self, interpreter: str, source: str) -> dict:
        done = self._low_level_execute_command(f"LC_ALL=C {shlex.quote(interpreter)} -", sudoable=True,
                                               in_data=source.encode("utf-8"))
        if done["rc"] != 0:
            raise AnsibleActionFail(f"{self.WHAT} failed on the host (rc {done['rc']}): "
                                    f"{(done.get('stderr') or done.get('stdout') or '').strip()[-2000:]}")
        try:
            return json.loads(done["stdout"])
        except ValueError as error:
            raise AnsibleActionFail(f"{self.WHAT} answered something that is not JSON ({error}): "
                                    f"{done['stdout'][:500]!r}") from error
