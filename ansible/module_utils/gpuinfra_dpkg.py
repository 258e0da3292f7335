"""The installed Debian packages from one `dpkg-query`: the command and the parser, shared by the
gpuinfra_package_facts module and its action plugin (which runs the command itself and parses on the controller,
without Ansible's module wrapper). Standard library only."""

from __future__ import annotations

QUERY_FORMAT = r"${Package}\t${Version}\t${db:Status-Want}\t${db:Status-Status}\n"
QUERY_ARGV = ["dpkg-query", "-W", f"-f={QUERY_FORMAT}"]
# 1: some pattern matched nothing, which -W without patterns does not ask; anything else is a failure.
QUERY_OK_RC = (0, 1)


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
