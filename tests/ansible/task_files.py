"""Reading the roles' task files in tests."""

from __future__ import annotations

from collections.abc import Iterator


def steps(tasks: list[dict]) -> Iterator[dict]:
    """Every task of a task file, blocks opened."""
    for task in tasks:
        if "block" in task:
            yield from steps(task["block"])
        else:
            yield task
