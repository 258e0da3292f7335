"""gpuinfra_state (module_utils/gpuinfra_probe.py): the one read-only probe per role that decides whether its
converge tasks run. A drift it misses would never be repaired, so each kind of check is shown to see a change."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ansible" / "module_utils"))

import gpuinfra_probe as state  # noqa: E402

ME, MY_GROUP = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name


def test_file_content_mode_owner(tmp_path):
    path = tmp_path / "f.conf"
    item = {"path": str(path), "content": "a=1\n", "mode": "0644", "owner": ME, "group": MY_GROUP}
    assert state.check_file(item) == [f"{path}: missing"]
    path.write_text("a=1\n")
    path.chmod(0o644)
    assert state.check_file(item) == []
    path.write_text("a=2\n")
    assert state.check_file(item) == [f"{path}: content differs"]
    path.write_text("a=1\n")
    path.chmod(0o600)
    assert state.check_file(item) == [f"{path}: mode 0600, wanted 0644"]
    path.chmod(0o644)
    assert state.check_file({**item, "owner": "nobody-such"})[0].startswith(f"{path}: owner {ME}")
    assert state.check_file({"path": str(path), "checksum": hashlib.sha1(b"a=1\n").hexdigest(), "owner": None,
                             "group": None}) == []
    assert state.check_file({"path": str(tmp_path / "nope"), "when_exists": str(tmp_path / "absent")}) == []


def test_directory_and_lines(tmp_path):
    missing = state.check_directory({"path": str(tmp_path / "d"), "mode": "0755"})
    assert missing == [f"{tmp_path / 'd'}: missing directory"]
    env = tmp_path / "environment"
    env.write_text('PATH="/usr/bin"\n')
    absent = {"path": str(env), "regexp": r"^\s*(export\s+)?(NCCL_|FI_)[A-Z_]+="}
    assert state.check_lines_absent(absent) == []
    env.write_text('PATH="/usr/bin"\nFI_PROVIDER=tcp\n')
    assert state.check_lines_absent(absent) != []
    assert state.check_lines_present({"path": str(env), "regexp": "^PATH="}) == []
    assert state.check_lines_present({"path": str(env), "regexp": "^LABEL="}) != []


def test_sysctl_and_limits(tmp_path):
    conf = tmp_path / "60.conf"
    conf.write_text("vm.nr_hugepages=64\n")
    item = {"path": str(conf), "name": "vm.nr_hugepages", "value": "64"}
    assert state.check_sysctl_file(item) == []
    assert state.check_sysctl_file({**item, "value": "32"}) != []
    assert state.check_sysctl_file({**item, "state": "absent"}) != []
    assert state.check_sysctl_file({**item, "path": str(tmp_path / "none"), "state": "absent"}) == []
    limits = tmp_path / "limits.conf"
    limits.write_text("*\t-\tmemlock\tunlimited\n")
    wanted = {"path": str(limits), "domain": "*", "type": "-", "item": "memlock", "value": "unlimited"}
    assert state.check_limit(wanted) == []
    assert state.check_limit({**wanted, "value": "1024"}) != []


def test_systemctl_show_blocks():
    text = ("Id=containerd.service\nLoadState=loaded\nActiveState=inactive\nUnitFileState=disabled\n"
            "NeedDaemonReload=no\n\nId=x.timer\nLoadState=not-found\nActiveState=inactive\nUnitFileState=\n")
    blocks = state.parse_systemctl_show(text)
    assert [b["Id"] for b in blocks] == ["containerd.service", "x.timer"]

    def run(argv):
        return 0, text, ""

    drift = state.check_units(run, [{"name": "containerd.service", "enabled": True, "active": True},
                                         {"name": "x.timer", "enabled": True}])
    assert drift == ["containerd.service: disabled, wanted enabled", "containerd.service: inactive, wanted active",
                     "x.timer: not-found"]


def test_a_unit_waiting_for_daemon_reload_is_drift_only_where_the_role_reloads():
    """A package's unit (containerd) waiting for a reload has no step of the role that could repair it: counted as
    drift it would send the role's converge steps to run on every rerun."""
    text = "Id=x.service\nLoadState=loaded\nActiveState=active\nUnitFileState=enabled\nNeedDaemonReload=yes\n"

    def run(argv):
        return 0, text, ""

    assert state.check_units(run, [{"name": "x.service", "enabled": True, "active": True}]) == []
    assert state.check_units(run, [{"name": "x.service", "enabled": True, "reload": True}]) == [
        "x.service: unit file changed on disk (daemon-reload needed)"]


def test_findings_are_filed_under_the_step_that_repairs_their_item(tmp_path):
    pin, other = tmp_path / "pin.pref", tmp_path / "other.conf"
    units = "Id=a.service\nLoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\nNeedDaemonReload=no\n\n" \
            "Id=b.service\nLoadState=loaded\nActiveState=inactive\nUnitFileState=enabled\nNeedDaemonReload=no\n"
    params = {name: spec["default"] for name, spec in state.ARGUMENT_SPEC.items()}
    params |= {"files": [{"path": str(pin), "content": "x", "owner": None, "group": None, "step": "install"},
                         {"path": str(other), "content": "y", "owner": None, "group": None}],
               "units": [{"name": "a.service", "active": True, "step": "install"},
                         {"name": "b.service", "active": True}]}
    answer = state.probe(params, lambda argv: (0, units, ""))
    assert answer["drifted"] == [f"{pin}: missing", f"{other}: missing", "a.service: inactive, wanted active",
                                 "b.service: inactive, wanted active"]
    assert answer["drifted_steps"] == {"install": [f"{pin}: missing", "a.service: inactive, wanted active"]}
