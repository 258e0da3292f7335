"""A role's variables as the role itself would see them, for action plugins that work on a role's behalf before it
runs (the input check, the early probe of playbooks/check_input.yml).

Outside a role, ansible-core has no variables of a role that has not been loaded. These helpers read its
defaults (defaults/main.yml) and internals (vars/main.yml) and put the host's variables over them; inside the
role, task_vars already hold both (with ansible-core's own precedence), which then win as they should. Lookups
find the role's templates and files as they would inside it (`ansible_search_path`, `role_path`).
"""

from __future__ import annotations

from pathlib import Path

from ansible import constants

ROLES_DIR = Path(__file__).resolve().parents[1] / "roles"


def role_dir(role: str) -> Path:
    """Where the role is: the first of the configured roles paths that holds it (this repository's roles when
    none does, so a missing role reads as one without files)."""
    for base in [*constants.DEFAULT_ROLES_PATH, str(ROLES_DIR)]:
        if (Path(base) / role).is_dir():
            return Path(base) / role
    return ROLES_DIR / role


def role_file(loader, role: str, name: str) -> dict:
    """<role>/<name> (a variables file), each value a template to render; {} when the role has none."""
    path = role_dir(role) / name
    if not path.is_file():
        return {}
    # unsafe: the loader's cached copy itself, not a deep copy of it (about 7 ms per file, once per role and
    # host and plugin); callers only read it, and build their variables in new dicts.
    return loader.load_from_file(str(path), trusted_as_template=True, unsafe=True) or {}


def role_variables(loader, role: str, task_vars: dict) -> dict:
    """The host's variables over the role's internals over its defaults, with the role's search path."""
    home = str(role_dir(role))
    search_path = [home, *[path for path in task_vars.get("ansible_search_path", []) if path != home]]
    return {**role_file(loader, role, "defaults/main.yml"), **role_file(loader, role, "vars/main.yml"), **task_vars,
            "role_name": role, "role_path": home, "ansible_search_path": search_path}


def role_templar(templar, loader, role: str, task_vars: dict):
    """A templar over role_variables(): templar.template(templar.available_variables[name]) renders a variable
    as the role would."""
    return templar.copy_with_new_env(available_variables=role_variables(loader, role, task_vars))
