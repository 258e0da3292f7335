"""Filters over the `gpuinfra_packages` fact (library/gpuinfra_package_facts.py): which of a role's apt
requests the host does not satisfy yet, and which packages are not on hold yet. A role skips its apt or
dpkg_selections task when these are empty: the state was read once, in one dpkg-query, instead of each task
opening the apt cache on the host to find that nothing needs doing.
"""

from __future__ import annotations

from fnmatch import fnmatchcase


def packages_missing(requests: list[str], packages: dict[str, dict]) -> list[str]:
    """The requests ('name' or apt's 'name=version', where the version may hold * globs) that no installed
    package satisfies: not installed, or installed at a version the request does not match."""
    missing = []
    for request in requests:
        name, _, version = str(request).partition("=")
        package = packages.get(name)
        if package is None or (version and not fnmatchcase(package.get("version", ""), version)):
            missing.append(request)
    return missing


def packages_not_held(names: list[str], packages: dict[str, dict]) -> list[str]:
    """The names whose selection is not hold (an absent package is not held either)."""
    return [name for name in names if (packages.get(name) or {}).get("selection") != "hold"]


class FilterModule:
    def filters(self):
        return {"packages_missing": packages_missing, "packages_not_held": packages_not_held}
