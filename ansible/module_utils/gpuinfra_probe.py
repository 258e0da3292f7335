"""The read-only probe behind the gpuinfra_state module: one call checks everything a role converges and returns
what drifted (see library/gpuinfra_state.py for what each check compares).

Standard library only, and every command goes through the `run` it is given: the module runs it through
AnsibleModule.run_command, and the action plugin (action_plugins/gpuinfra_state.py) sends this file to the host
as a plain Python program over the pipelined connection, without Ansible's module wrapper (which costs more than
the checks themselves on a no-op rerun).
"""

from __future__ import annotations

import glob as globbing
import grp
import hashlib
import os
import pwd
import re
import stat
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: hosts may run a Python where these cannot be subscripted at run time
    from collections.abc import Callable

    # A command's (rc, stdout, stderr), run with LC_ALL=C.
    Runner = Callable[[list[str]], tuple[int, str, str]]

_DICT_LISTS = ("files", "directories", "units", "sysctl_files", "limits", "lines_absent", "lines_present", "mounts",
               "gpg_keys")
_STRING_LISTS = ("absent", "read", "exists", "glob")
# The module's options, validated by the module (AnsibleModule) and by the action plugin alike.
ARGUMENT_SPEC: dict = {
    **{name: {"type": "list", "elements": "dict", "default": []} for name in _DICT_LISTS},
    **{name: {"type": "list", "elements": "str", "default": []} for name in _STRING_LISTS},
    "live_sysctl": {"type": "dict", "default": {}},
}


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


def check_units(run: Runner, units: list[dict]) -> list[str]:
    if not units:
        return []
    names = [unit["name"] for unit in units]
    rc, out, err = run(["systemctl", "show", "--no-pager", "-p",
                        "Id,LoadState,UnitFileState,ActiveState,NeedDaemonReload", "--", *names])
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
        # Only where the role's converge reloads systemd (its own unit files): a package's unit that waits for a
        # reload would otherwise count as drift on every run without a step that could repair it.
        if unit.get("reload") and state.get("NeedDaemonReload") == "yes":
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


def check_gpg_key(run: Runner, item: dict) -> list[str]:
    path = item["path"]
    if not os.path.exists(path):
        return [f"{path}: missing keyring"]
    rc, out, _ = run(["gpg", "--batch", "--show-keys", "--with-colons", path])
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


def run_locally(argv: list[str]) -> tuple[int, str, str]:
    """The runner of the plain-program path: a command on this host, with LC_ALL=C."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                              env={**os.environ, "LC_ALL": "C"}, check=False)
    except OSError as error:  # the tool is not installed: the check reports it instead of failing the probe
        return 127, "", f"{argv[0]}: {error.strerror}"
    return done.returncode, done.stdout, done.stderr


def _unit_findings(unit: dict, findings: list[str], units: list[dict]) -> list[str]:
    """The findings about one unit: those that name it, and those that name no unit (systemctl failed)."""
    names = [f"{other['name']}: " for other in units]
    return [line for line in findings if line.startswith(f"{unit['name']}: ") or not line.startswith(tuple(names))]


def probe(params: dict, run: Runner) -> dict:
    """Every check of `params` (ARGUMENT_SPEC's options, defaults filled in): what drifted, and what was read.
    An item's `step` (optional: which of the role's steps repairs it) files its findings under that name as well
    (`drifted_steps`), so a role can tell which step a finding calls for without parsing the finding. (Not
    `group`: a file's `group` is its owning group.)"""
    drifted: list[str] = []
    steps: dict[str, list[str]] = {}

    def found(item: dict, drift: list[str]) -> None:
        drifted.extend(drift)
        if item.get("step") and drift:
            steps.setdefault(item["step"], []).extend(drift)

    for item in params["directories"]:
        found(item, check_directory(item))
    for item in params["files"]:
        found(item, check_file(item))
    drifted += [f"{path}: present, wanted absent" for path in params["absent"] if os.path.lexists(path)]
    unit_drift = check_units(run, params["units"])
    drifted += unit_drift
    for unit in params["units"]:
        if unit.get("step") and (mine := _unit_findings(unit, unit_drift, params["units"])):
            steps.setdefault(unit["step"], []).extend(mine)
    for item in params["sysctl_files"]:
        found(item, check_sysctl_file(item))
    for name, value in params["live_sysctl"].items():
        drifted += check_live_sysctl(name, value)
    for item in params["limits"]:
        found(item, check_limit(item))
    for item in params["lines_absent"]:
        found(item, check_lines_absent(item))
    for item in params["lines_present"]:
        found(item, check_lines_present(item))
    for item in params["mounts"]:
        found(item, check_mount(item))
    for item in params["gpg_keys"]:
        found(item, check_gpg_key(run, item))
    return {"changed": False, "drifted": drifted, "drifted_steps": steps,
            "read": {path: read_text(path) for path in params["read"]},
            "exists": {path: os.path.exists(path) for path in params["exists"]},
            "glob": {pattern: sorted(globbing.glob(pattern, recursive=True)) for pattern in params["glob"]}}


def answer(params: dict) -> dict:
    """The plain-program path's entry point (plugin_utils/gpuinfra_direct.py): the probe with the local runner."""
    return probe(params, run_locally)


def answer_each(params_by_name: dict) -> dict:
    """Several probes in one program (the early probe of every role of a run): each name's answer."""
    return {name: probe(params, run_locally) for name, params in params_by_name.items()}
