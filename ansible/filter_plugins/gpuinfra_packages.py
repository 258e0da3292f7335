"""Filters over the `gpuinfra_packages` fact (library/gpuinfra_package_facts.py): which of a role's apt
requests the host does not satisfy yet, and which packages are not on hold yet. A role skips its apt or
dpkg_selections task when these are empty: the state was read once, in one dpkg-query, instead of each task
opening the apt cache on the host to find that nothing needs doing.
"""

from __future__ import annotations

from fnmatch import fnmatchcase


def _installed(entry: str | None) -> tuple[str, str]:
    """An entry of the map (module_utils/gpuinfra_dpkg.py: "version selection") as (version, selection)."""
    version, _, selection = (entry or "").partition(" ")
    return version, selection


def packages_missing(requests: list[str], packages: dict[str, str]) -> list[str]:
    """The requests ('name' or apt's 'name=version', where the version may hold * globs) that no installed
    package satisfies: not installed, or installed at a version the request does not match."""
    missing = []
    for request in requests:
        name, _, version = str(request).partition("=")
        if name not in packages or (version and not fnmatchcase(_installed(packages[name])[0], version)):
            missing.append(request)
    return missing


def packages_not_held(names: list[str], packages: dict[str, str]) -> list[str]:
    """The names whose selection is not hold (an absent package is not held either)."""
    return [name for name in names if _installed(packages.get(name))[1] != "hold"]


class FilterModule:
    def filters(self):
        return {"packages_missing": packages_missing, "packages_not_held": packages_not_held}
