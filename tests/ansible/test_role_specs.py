"""Every role's meta/argument_specs.yml documents exactly its defaults, all role-prefixed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .task_files import steps

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


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if (p / "handlers" / "main.yml").is_file()))
def test_handlers_are_notified_through_listen_topics(role):
    handlers = yaml.safe_load((ROLES / role / "handlers" / "main.yml").read_text())
    topics = {handler["listen"] for handler in handlers}
    assert all(topic.startswith(role) or topic.startswith("gpuinfra ") for topic in topics), topics
    notified = {task_line.split("notify:", 1)[1].strip() for path in (ROLES / role / "tasks").glob("*.yml")
                for task_line in path.read_text().splitlines() if "notify:" in task_line}
    assert notified <= topics, notified - topics


TAGGED = ["container_runtime", "cuda_toolkit", "fabric", "host_tuning", "inference_server", "monitoring", "node_expiry",
          "nvidia_driver", "nvme_raid"]


@pytest.mark.parametrize("role", TAGGED)
def test_every_step_of_main_carries_the_role_install_or_configure_tag(role):
    """main.yml (the input checks, then run.yml) and run.yml (the steps the layers import alone)."""
    main = yaml.safe_load((ROLES / role / "tasks" / "main.yml").read_text())
    assert main[-1].get("ansible.builtin.import_tasks") == "run.yml", main[-1]
    run = yaml.safe_load((ROLES / role / "tasks" / "run.yml").read_text())
    for task in [*steps(main[:-1]), *steps(run)]:
        tags = set(task.get("tags") or [])
        assert tags and tags <= {f"{role}_install", f"{role}_configure"}, task["name"]
