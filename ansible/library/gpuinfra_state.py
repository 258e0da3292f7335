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
- units: systemd unit enabled and/or active (one `systemctl show` for all of them);
- sysctl_files: `name=value` in a sysctl.d file (present or absent), live_sysctl: the running kernel's value;
- limits: a `domain type item value` line in a limits.d file;
- lines_absent / lines_present: no line / some line of a file matches a regular expression;
- mounts: a path is a mount point of the given file system type;
- gpg_keys: a keyring holds a key with the given fingerprint.
It also reads what a role's later decisions need, without a module run each: `read` (file contents, null when
missing), `exists` (paths) and `glob` (matches of shell patterns).
"""

from __future__ import annotations

import glob as globbing
import grp
import hashlib
import os
import pwd
import re
import stat

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


def _mode(value) -> int | None:
    if value is None or value == "":
        return None
    return int(str(value), 8) if isinstance(value, str) else int(value)


def _owner_drift(path: str, st: os.stat_result, owner: str | None, group: str | None) -> list[str]:
    drift = []
    if owner is not None:
        try:
            name = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            name = str(st.st_uid)
        if name != owner:
            drift.append(f"{path}: owner {name}, wanted {owner}")
    if group is not None:
        try:
            name = grp.getgrgid(st.st_gid).gr_name
        except KeyError:
            name = str(st.st_gid)
        if name != group:
            drift.append(f"{path}: group {name}, wanted {group}")
    return drift


def check_file(item: dict) -> list[str]:
    path = item["path"]
    if item.get("when_exists") and not os.path.exists(item["when_exists"]):
        return []  # the converge task writes it only where that path exists
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [f"{path}: missing"]
    if not stat.S_ISREG(st.st_mode):
        return [f"{path}: not a regular file"]
    drift = []
    wanted = item.get("checksum")
    if item.get("content") is not None:
        wanted = hashlib.sha1(item["content"].encode("utf-8")).hexdigest()
    if wanted is not None:
        with open(path, "rb") as handle:
            if hashlib.sha1(handle.read()).hexdigest() != wanted:
                drift.append(f"{path}: content differs")
    mode = _mode(item.get("mode"))
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        drift.append(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, wanted {mode:04o}")
    return drift + _owner_drift(path, st, item.get("owner", "root"), item.get("group", "root"))


def check_directory(item: dict) -> list[str]:
    path = item["path"]
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return [f"{path}: missing directory"]
    if not stat.S_ISDIR(st.st_mode):
        return [f"{path}: not a directory"]
    mode = _mode(item.get("mode"))
    drift = []
    if mode is not None and stat.S_IMODE(st.st_mode) != mode:
        drift.append(f"{path}: mode {stat.S_IMODE(st.st_mode):04o}, wanted {mode:04o}")
    return drift + _owner_drift(path, st, item.get("owner", "root"), item.get("group", "root"))


def parse_systemctl_show(text: str) -> list[dict[str, str]]:
    """`systemctl show -p A,B u1 u2` prints one block per unit, in order, separated by blank lines."""
    blocks, current = [], {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, _, value = line.partition("=")
        current[key] = value
    if current:
        blocks.append(current)
    return blocks


def check_units(module, units: list[dict]) -> list[str]:
    if not units:
        return []
    names = [unit["name"] for unit in units]
    rc, out, err = module.run_command(
        ["systemctl", "show", "--no-pager", "-p", "Id,LoadState,UnitFileState,ActiveState,NeedDaemonReload",
         "--", *names], environ_update={"LC_ALL": "C"})
    if rc != 0:
        return [f"systemctl show failed (rc {rc}): {err.strip()}"]
    blocks = parse_systemctl_show(out)
    if len(blocks) != len(names):
        return [f"systemctl show answered for {len(blocks)} of {len(names)} units"]
    drift = []
    for unit, state in zip(units, blocks, strict=True):
        name = unit["name"]
        if state.get("LoadState") != "loaded":
            drift.append(f"{name}: {state.get('LoadState', 'unknown')}")
            continue
        if state.get("NeedDaemonReload") == "yes":
            drift.append(f"{name}: unit file changed on disk (daemon-reload needed)")
        if unit.get("enabled") is not None:
            file_state = state.get("UnitFileState", "")
            if unit["enabled"]:
                # static/indirect/generated units have nothing for `systemctl enable` to do
                ok = file_state in ("enabled", "enabled-runtime", "alias", "static", "indirect", "generated")
            else:
                ok = file_state not in ("enabled", "enabled-runtime")
            if not ok:
                wanted = "enabled" if unit["enabled"] else "disabled"
                drift.append(f"{name}: {file_state or 'unknown'}, wanted {wanted}")
        if unit.get("active") is not None:
            active = state.get("ActiveState") in ("active", "activating", "reloading")
            if active != bool(unit["active"]):
                drift.append(f"{name}: {state.get('ActiveState')}, wanted "
                             f"{'active' if unit['active'] else 'inactive'}")
    return drift


def read_pairs(path: str) -> dict[str, str] | None:
    """A sysctl.d file as name -> value (the last setting wins), None when missing."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return None
    pairs = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", ";")) or "=" not in line:
            continue
        name, _, value = line.partition("=")
        pairs[name.strip().replace("/", ".")] = value.strip()
    return pairs


def normalize(value) -> str:
    return " ".join(str(value).split())


def check_sysctl_file(item: dict) -> list[str]:
    path, name, present = item["path"], item["name"], item.get("state", "present") == "present"
    pairs = read_pairs(path) or {}
    if not present:
        return [f"{path}: {name} set"] if name in pairs else []
    if name not in pairs:
        return [f"{path}: {name} missing"]
    if normalize(pairs[name]) != normalize(item["value"]):
        return [f"{path}: {name}={pairs[name]}, wanted {item['value']}"]
    return []


def check_live_sysctl(name: str, value) -> list[str]:
    path = "/proc/sys/" + name.replace(".", "/")
    try:
        with open(path, encoding="utf-8") as handle:
            current = handle.read()
    except OSError as error:
        return [f"{name}: cannot read {path} ({error.strerror})"]
    if normalize(current) != normalize(value):
        return [f"{name}: live value {normalize(current)}, wanted {value}"]
    return []


def check_limit(item: dict) -> list[str]:
    path = item["path"]
    wanted = [str(item["domain"]), str(item["type"]), str(item["item"]), str(item["value"])]
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return [f"{path}: missing"]
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if fields[:3] == wanted[:3]:
            return [] if fields == wanted else [f"{path}: {' '.join(fields)}, wanted {' '.join(wanted)}"]
    return [f"{path}: no {' '.join(wanted[:3])} line"]


def check_lines_absent(item: dict) -> list[str]:
    path, pattern = item["path"], re.compile(item["regexp"])
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    found = [line for line in lines if pattern.search(line)]
    return [f"{path}: {len(found)} line(s) match {item['regexp']}"] if found else []


def check_lines_present(item: dict) -> list[str]:
    path, pattern = item["path"], re.compile(item["regexp"])
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return [f"{path}: missing"]
    return [] if any(pattern.search(line) for line in lines) else [f"{path}: no line matches {item['regexp']}"]


def check_mount(item: dict) -> list[str]:
    path, fstype = item["path"].rstrip("/") or "/", item.get("fstype")
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) >= 3 and fields[1] == path:
                if fstype and fields[2] != fstype:
                    return [f"{path}: mounted as {fields[2]}, wanted {fstype}"]
                return []
    return [f"{path}: not mounted"]


def check_gpg_key(module, item: dict) -> list[str]:
    path = item["path"]
    if not os.path.exists(path):
        return [f"{path}: missing keyring"]
    rc, out, _ = module.run_command(["gpg", "--batch", "--show-keys", "--with-colons", path],
                                    environ_update={"LC_ALL": "C"})
    fingerprints = [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")] if rc == 0 else []
    if item["fingerprint"] not in fingerprints:
        return [f"{path}: holds {', '.join(fingerprints) or 'no readable key'}, wanted {item['fingerprint']}"]
    return []


def read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        return None


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule

    lists = ("files", "directories", "units", "sysctl_files", "limits", "lines_absent", "lines_present", "mounts",
             "gpg_keys")
    spec = {name: {"type": "list", "elements": "dict", "default": []} for name in lists}
    spec |= {name: {"type": "list", "elements": "str", "default": []} for name in ("absent", "read", "exists", "glob")}
    spec["live_sysctl"] = {"type": "dict", "default": {}}
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    p = module.params
    drifted: list[str] = []
    for item in p["directories"]:
        drifted += check_directory(item)
    for item in p["files"]:
        drifted += check_file(item)
    drifted += [f"{path}: present, wanted absent" for path in p["absent"] if os.path.lexists(path)]
    drifted += check_units(module, p["units"])
    for item in p["sysctl_files"]:
        drifted += check_sysctl_file(item)
    for name, value in p["live_sysctl"].items():
        drifted += check_live_sysctl(name, value)
    for item in p["limits"]:
        drifted += check_limit(item)
    for item in p["lines_absent"]:
        drifted += check_lines_absent(item)
    for item in p["lines_present"]:
        drifted += check_lines_present(item)
    for item in p["mounts"]:
        drifted += check_mount(item)
    for item in p["gpg_keys"]:
        drifted += check_gpg_key(module, item)
    module.exit_json(
        changed=False, drifted=drifted,
        read={path: read_text(path) for path in p["read"]},
        exists={path: os.path.exists(path) for path in p["exists"]},
        glob={pattern: sorted(globbing.glob(pattern, recursive=True)) for pattern in p["glob"]})


if __name__ == "__main__":
    main()
