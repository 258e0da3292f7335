#!/usr/bin/python
"""Ansible module: the host's Debian packages as the fact `gpuinfra_packages` (read-only, check-mode safe).

One `dpkg-query` (no apt cache is opened), so a role can tell from the controller that its packages are already
installed at the pinned version and on hold, and skip the apt and dpkg_selections calls that would each open
the apt cache on the host to find that nothing needs doing. The fact maps each package name to
"<version> <selection>" (selection: install, hold, ...); only installed packages are listed (a half-configured
or removed one is missing, so apt sees to it).

Its action plugin (action_plugins/gpuinfra_package_facts.py) runs the same query as a plain command and parses
it on the controller; this module is the path for a connection without a POSIX shell.
"""

from __future__ import annotations

from ansible.module_utils.gpuinfra_dpkg import QUERY_ARGV, QUERY_OK_RC, parse_dpkg_query

DOCUMENTATION = r"""
module: gpuinfra_package_facts
short_description: Read installed Debian packages, their versions and their selections (holds) in one dpkg-query
options: {}
"""


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    rc, out, err = module.run_command(QUERY_ARGV, environ_update={"LC_ALL": "C"})
    if rc not in QUERY_OK_RC:
        module.fail_json(msg=f"dpkg-query failed (rc {rc}): {err.strip()}")
    module.exit_json(changed=False, ansible_facts={"gpuinfra_packages": parse_dpkg_query(out)})


if __name__ == "__main__":
    main()
