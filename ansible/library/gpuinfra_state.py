#!/usr/bin/python
"""Ansible module: one read-only probe of everything a role converges (check-mode safe, never changes anything).

A no-op rerun used to cost one module run per file, directory, unit and setting a role manages (each an SSH
exchange and a Python start on the host) only to learn that nothing needed doing. This module checks all of them
in one call and returns the list of what differs from the wanted state (`drifted`, one line per item, saying
what is wrong); the role then runs its converge tasks only when that list is not empty (or a package is missing).

What it checks, each against the state the role's converge tasks would write:
- files: the content (the controller renders the same template or reads the same file the converge task
  copies), mode, owner and group (root unless given; null: not checked); `when_exists`: only where that
  path exists (a file the role writes only then);
- directories: exist, mode;
- absent: paths that must not exist;
- units: systemd unit enabled and/or active (one `systemctl show` for all of them); `reload`: also a unit file
  changed on disk and not yet loaded (for units the role writes, whose converge runs daemon-reload);
- sysctl_files: `name=value` in a sysctl.d file (present or absent), live_sysctl: the running kernel's value;
- limits: a `domain type item value` line in a limits.d file;
- lines_absent / lines_present: no line / some line of a file matches a regular expression;
- mounts: a path is a mount point of the given file system type;
- gpg_keys: a keyring holds a key with the given fingerprint.
An item's `step` files its findings under that name too (`drifted_steps`), for a role whose steps each
repair some of its items. It also reads what a role's later decisions need, without a module run each: `read`
(file contents, null when missing), `exists` (paths) and `glob` (matches of shell patterns).
"""

from __future__ import annotations

from ansible.module_utils.gpuinfra_probe import ARGUMENT_SPEC, probe

DOCUMENTATION = r"""
module: gpuinfra_state
short_description: Check in one call every file, directory, unit and setting a role manages; report what drifted
options:
  files: {type: list, elements: dict, default: []}
  directories: {type: list, elements: dict, default: []}
  absent: {type: list, elements: str, default: []}
  units: {type: list, elements: dict, default: []}
  sysctl_files: {type: list, elements: dict, default: []}
  live_sysctl: {type: dict, default: {}}
  limits: {type: list, elements: dict, default: []}
  lines_absent: {type: list, elements: dict, default: []}
  lines_present: {type: list, elements: dict, default: []}
  mounts: {type: list, elements: dict, default: []}
  gpg_keys: {type: list, elements: dict, default: []}
  read: {type: list, elements: str, default: []}
  exists: {type: list, elements: str, default: []}
  glob: {type: list, elements: str, default: []}
"""


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)

    def run(argv: list[str]) -> tuple[int, str, str]:
        return module.run_command(argv, environ_update={"LC_ALL": "C"})

    module.exit_json(**probe(module.params, run))


if __name__ == "__main__":
    main()
