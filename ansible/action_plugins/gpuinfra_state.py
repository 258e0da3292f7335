"""Action plugin of gpuinfra_state: the probe without Ansible's module wrapper.

A probe is one read-only look at a role's files, units and settings, run on every no-op rerun for every role.
Through the module wrapper one probe costs about 0.4 s for three hosts, several times the checks themselves.
This plugin sends module_utils/gpuinfra_probe.py to the host's Python as a plain program
(plugin_utils/gpuinfra_direct.py): ~0.1 s. Where that path is not open, the task runs the module
(library/gpuinfra_state.py), which calls the same probe.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Action plugins are loaded by path, not as a package: their shared controller code is found on sys.path.
if (_PLUGIN_UTILS := str(Path(__file__).resolve().parents[1] / "plugin_utils")) not in sys.path:
    sys.path.append(_PLUGIN_UTILS)
import gpuinfra_direct  # noqa: E402


def probe_program(args: dict) -> str:
    """The program this plugin sends: the probe's source with the validated arguments embedded."""
    return gpuinfra_direct.program("gpuinfra_probe", args)


class ActionModule(gpuinfra_direct.DirectProgramAction):
    SOURCE = "gpuinfra_probe"
    MODULE = "ansible.legacy.gpuinfra_state"
    WHAT = "the state probe"
