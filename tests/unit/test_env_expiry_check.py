"""The node_expiry role's check (the dead man's switch script), run as a program on this machine: it powers
off only once expiry plus grace has passed, falls back to its file off EC2, and never powers off on an
unreadable expiry. Its systemd units pass `systemd-analyze verify`. (On real systemd hosts, powering off is
tested in tests/hosts/test_env_serve_nspawn.py.)"""

from __future__ import annotations

import datetime
import importlib.machinery
import importlib.util
import shutil
import subprocess
from pathlib import Path

import jinja2
import pytest

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "node_expiry"
UTC = datetime.UTC


def script():
    path = ROLE / "files" / "gpuinfra-expiry-check"
    loader = importlib.machinery.SourceFileLoader("gpuinfra_expiry_check", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def settings(tmp_path: Path, expires: str, grace_s: int = 1800, action: str = "log") -> Path:
    path = tmp_path / "gpuinfra-expiry"
    path.write_text(f"# managed\nGPUINFRA_EXPIRES_AT={expires}\nGPUINFRA_EXPIRY_GRACE_S={grace_s}\n"
                    f"GPUINFRA_EXPIRY_READ_TAGS=true\nGPUINFRA_EXPIRY_ACTION={action}\n")
    return path


def test_before_the_grace_period_ends_nothing_happens(tmp_path, capsys, monkeypatch):
    check = script()
    monkeypatch.setattr(check, "IMDS", "http://127.0.0.1:9")  # off EC2: no metadata, the file decides
    now = datetime.datetime(2026, 6, 1, 12, 20, tzinfo=UTC)
    assert check.main(settings(tmp_path, "2026-06-01T12:00:00Z"), now=now) == 0
    assert capsys.readouterr().out == ("gpuinfra-expiry: expires 2026-06-01T12:00:00Z (file); powering off after "
                                       "2026-06-01T12:30:00Z\n")


def test_after_the_grace_period_it_powers_off(tmp_path, capsys, monkeypatch):
    check = script()
    monkeypatch.setattr(check, "IMDS", "http://127.0.0.1:9")
    calls = []
    monkeypatch.setattr(check.os, "execv", lambda *argv: calls.append(argv))
    now = datetime.datetime(2026, 6, 1, 12, 31, tzinfo=UTC)
    assert check.main(settings(tmp_path, "2026-06-01T12:00:00Z", action="log"), now=now) == 0
    assert "the grace period is over: powering off" in capsys.readouterr().out and calls == []  # a drill
    check.main(settings(tmp_path, "2026-06-01T12:00:00Z", action="poweroff"), now=now)
    assert calls == [("/usr/bin/systemctl", ["systemctl", "poweroff"])]


def test_the_instance_tag_wins_over_the_file(tmp_path, capsys, monkeypatch):
    check = script()
    monkeypatch.setattr(check, "instance_tag", lambda timeout=1.0: "2026-06-02T00:00:00Z")  # extended on EC2
    now = datetime.datetime(2026, 6, 1, 13, 0, tzinfo=UTC)
    assert check.main(settings(tmp_path, "2026-06-01T12:00:00Z", action="poweroff"), now=now) == 0
    assert "expires 2026-06-02T00:00:00Z (instance tag)" in capsys.readouterr().out


def test_an_unreadable_expiry_never_powers_off(tmp_path, capsys, monkeypatch):
    check = script()
    monkeypatch.setattr(check, "IMDS", "http://127.0.0.1:9")
    monkeypatch.setattr(check.os, "execv", lambda *argv: pytest.fail("powered off"))
    assert check.main(settings(tmp_path, "soon", action="poweroff")) == 1
    assert "cannot read the expiry 'soon' (file); not powering off" in capsys.readouterr().out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_units_pass_systemd_analyze(tmp_path):
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"))
    environment.filters["comment"] = lambda text: "# " + text
    for name in ("gpuinfra-expiry.service", "gpuinfra-expiry.timer"):
        (tmp_path / name).write_text(environment.get_template(f"{name}.j2").render(
            ansible_managed="managed by Ansible", node_expiry_check_every="5min",
            __node_expiry_check=str(tmp_path / "gpuinfra-expiry-check")))
    (tmp_path / "gpuinfra-expiry-check").write_text("#!/bin/sh\n")
    (tmp_path / "gpuinfra-expiry-check").chmod(0o755)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "gpuinfra-expiry.timer"),
                           str(tmp_path / "gpuinfra-expiry.service")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
