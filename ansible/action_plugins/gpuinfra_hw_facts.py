"""Action plugin of gpuinfra_hw_facts: the hardware and operating-system facts without Ansible's module wrapper.

Through the module wrapper, and with Ansible's setup module for the distribution and the kernel, reading a
host's facts took about 1.9 s of a 8.5 s no-op rerun on three hosts. This plugin sends
module_utils/gpuinfra_hw.py to the host's Python as a plain program (plugin_utils/gpuinfra_direct.py), one
exchange for both. Where that path is not open, the task runs the module (library/gpuinfra_hw_facts.py), which
calls the same code.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Action plugins are loaded by path, not as a package: their shared controller code is found on sys.path.
if (_PLUGIN_UTILS := str(Path(__file__).resolve().parents[1] / "plugin_utils")) not in sys.path:
    sys.path.append(_PLUGIN_UTILS)
import gpuinfra_direct  # noqa: E402


def facts_program(args: dict) -> str:
    """The program this plugin sends: the gather's source with the validated arguments embedded."""
    return gpuinfra_direct.program("gpuinfra_hw", args)


class ActionModule(gpuinfra_direct.DirectProgramAction):
    SOURCE = "gpuinfra_hw"
    MODULE = "ansible.legacy.gpuinfra_hw_facts"
    WHAT = "the hardware facts"
