#!/usr/bin/python
"""Ansible module: the host's real hardware as the fact `gpuinfra_hardware`, and the operating system's facts
that the roles read under the names Ansible's setup module gives them (read-only, check-mode safe).

What it reads is in module_utils/gpuinfra_hw.py. Its action plugin (action_plugins/gpuinfra_hw_facts.py) sends
that file to the host as a plain program; this module is the path where pipelining is off.
"""

from __future__ import annotations

from ansible.module_utils.gpuinfra_hw import ARGUMENT_SPEC, answer

DOCUMENTATION = r"""
module: gpuinfra_hw_facts
short_description: Gather GPU, CPU, memory, NVMe, RDMA, kernel and operating-system facts for gpuinfra
options:
  nvme_model:
    description: Model string of instance-store NVMe drives (the contract's gpuinfra_constants.instance_store_model).
    type: str
    required: true
"""


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.exit_json(**answer(module.params))


if __name__ == "__main__":
    main()
