"""The installed Debian packages from one `dpkg-query`: the command and the parser, shared by the
gpuinfra_package_facts module and its action plugin (which runs the command itself and parses on the controller,
without Ansible's module wrapper). Standard library only."""

from __future__ import annotations

QUERY_FORMAT = r"${Package}\t${Version}\t${db:Status-Want}\t${db:Status-Status}\n"
QUERY_ARGV = ["dpkg-query", "-W", f"-f={QUERY_FORMAT}"]
# 1: some pattern matched nothing, which -W without patterns does not ask; anything else is a failure.
QUERY_OK_RC = (0, 1)


def parse_dpkg_query(text: str) -> dict[str, str]:
    """The installed packages among the lines of `dpkg-query -W -f=QUERY_FORMAT`: name -> "version selection".

    One flat string per package, not a dict of two: the map is a host fact, and ansible-core copies and cleans
    a host's facts on every task for every host (vars.clean.clean_facts); a GPU host lists ~2,000 packages, and
    nested dicts made that copy 4-5 times slower. A Debian version and a selection hold no spaces, so
    entry.split(" ") gives them back (filter_plugins/gpuinfra_packages.py does)."""
    packages: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or not fields[0] or fields[3] != "installed":
            continue
        name, version, selection, _ = fields
        packages[name] = f"{version} {selection}"
    return packages
