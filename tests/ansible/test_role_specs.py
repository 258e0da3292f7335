"""Every role's meta/argument_specs.yml documents exactly its defaults, all role-prefixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if p.is_dir()))
def test_argument_specs_match_defaults(role):
    defaults = yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text()) or {}
    spec = yaml.safe_load((ROLES / role / "meta" / "argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults)
    assert all(name.startswith(f"{role}_") for name in defaults), role
    for name, option in options.items():
        assert option.get("description"), name
    assert (ROLES / role / "tasks" / "main.yml").is_file()
