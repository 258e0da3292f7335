"""Action plugin of gpuinfra_package_facts: the one dpkg-query as a plain command, parsed on the controller.

Through Ansible's module wrapper the read costs about 0.5 s for three hosts, for a command that takes a few
milliseconds; run as a shell command it needs no Python on the host at all. A connection whose shell is not
POSIX (sh) runs the module (library/gpuinfra_package_facts.py) instead; both share module_utils/gpuinfra_dpkg.py.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

# Action plugins are loaded by path, not as a package: their shared controller code is found on sys.path.
if (_PLUGIN_UTILS := str(Path(__file__).resolve().parents[1] / "plugin_utils")) not in sys.path:
    sys.path.append(_PLUGIN_UTILS)
import gpuinfra_direct  # noqa: E402

MODULE = "ansible.legacy.gpuinfra_package_facts"


class ActionModule(ActionBase):
    _requires_connection = True
    _supports_check_mode = True  # read-only: the same in check mode

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        self.validate_argument_spec(argument_spec={})
        if getattr(self._connection._shell, "SHELL_FAMILY", "") != "sh":
            return result | self._execute_module(module_name=MODULE, module_args={}, task_vars=task_vars)
        dpkg = gpuinfra_direct.load("gpuinfra_dpkg")
        command = "LC_ALL=C " + " ".join(shlex.quote(word) for word in dpkg.QUERY_ARGV)
        done = self._low_level_execute_command(command, sudoable=True)
        if done["rc"] not in dpkg.QUERY_OK_RC:
            raise AnsibleActionFail(f"dpkg-query failed (rc {done['rc']}): {(done.get('stderr') or '').strip()}")
        packages = dpkg.parse_dpkg_query(done["stdout"])
        return result | {"changed": False, "ansible_facts": {"gpuinfra_packages": packages}}
