#!/usr/bin/python
"""Ansible module: the host's Debian packages as the fact `gpuinfra_packages` (read-only, check-mode safe).

One `dpkg-query` (no apt cache is opened), so a role can tell from the controller that its packages are already
installed at the pinned version and on hold, and skip the apt and dpkg_selections calls that would each open
the apt cache on the host to find that nothing needs doing. The fact maps each package name to its
version and its selection (install, hold, ...); only installed packages are listed (a half-configured or
removed one is missing, so apt sees to it).
"""

from __future__ import annotations

DOCUMENTATION = r"""
module: gpuinfra_package_facts
short_description: Read installed Debian packages, their versions and their selections (holds) in one dpkg-query
options: {}
"""

QUERY_FORMAT = r"${Package}\t${Version}\t${db:Status-Want}\t${db:Status-Status}\n"


def parse_dpkg_query(text: str) -> dict[str, dict[str, str]]:
    """The installed packages among the lines of `dpkg-query -W -f=QUERY_FORMAT`."""
    packages: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or not fields[0] or fields[3] != "installed":
            continue
        name, version, selection, _ = fields
        packages[name] = {"version": version, "selection": selection}
    return packages


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    module = AnsibleModule(argument_spec={}, supports_check_mode=True)
    rc, out, err = module.run_command(["dpkg-query", "-W", f"-f={QUERY_FORMAT}"],
                                      environ_update={"LC_ALL": "C"})
    if rc not in (0, 1):  # 1: some pattern matched nothing, which -W without patterns does not ask
        module.fail_json(msg=f"dpkg-query failed (rc {rc}): {err.strip()}")
    module.exit_json(changed=False, ansible_facts={"gpuinfra_packages": parse_dpkg_query(out)})


if __name__ == "__main__":
    main()
