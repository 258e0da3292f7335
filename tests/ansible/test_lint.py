"""ansible-lint (production profile) and --syntax-check of every playbook."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
BIN = REPO / ".venv" / "bin"
PLAYBOOKS = sorted(p.name for p in (ANSIBLE / "playbooks").glob("*.yml"))


def _env() -> dict:
    return {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "NO_COLOR": "1",
            "PATH": f"{BIN}:{os.environ.get('PATH', '')}"}


def test_every_layer_has_a_playbook():
    assert {"site.yml", "host.yml", "drivers.yml", "fabric.yml", "containers.yml", "validate.yml"} <= set(PLAYBOOKS)


def test_ansible_lint_production_profile_passes():
    done = subprocess.run([str(BIN / "ansible-lint"), "--nocolor"], cwd=ANSIBLE, env=_env(), capture_output=True,
                          text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "Profile 'production' was required, and it passed" in output


@pytest.mark.parametrize("playbook", PLAYBOOKS)
def test_syntax_check(playbook):
    done = subprocess.run([str(BIN / "ansible-playbook"), "--syntax-check", f"playbooks/{playbook}"], cwd=ANSIBLE,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
