"""What the environment commands need from a deployment engine, and nothing more.

Two engines implement it: `PulumiEngine` (pulumi_engine.py, the Automation API: the real one) and
`StandinEngine` (standin.py, a STAND-IN for tests and machines without the Pulumi CLI, which runs the
real program under Pulumi's mock runtime and keeps the same backend layout).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from gpuinfra.environments.models import StackSummary, StateResource

# Progress callback: a short description of what the engine is doing now.
OnProgress = Callable[[str], None]


class EngineError(RuntimeError):
    """The engine could not do what was asked (cloud error, program error); the message says why."""


class StackExists(EngineError):
    pass


class StackMissing(EngineError):
    pass


class Engine(Protocol):
    kind: str  # "pulumi" or "standin"

    def create(self, stack: str, settings: dict[str, Any], tags: dict[str, str]) -> None:
        """A new, empty stack with this config (a Pulumi stack settings document) and these tags."""

    def save_settings(self, stack: str, settings: dict[str, Any]) -> None:
        """Replace the stack's config (extend moves the expiry in it)."""

    def settings(self, stack: str) -> dict[str, Any]: ...

    def up(self, stack: str, on_progress: OnProgress) -> dict[str, Any]:
        """Run the program and apply it; returns the stack outputs. Raises StackLocked when an update of
        the stack is in progress, EngineError when the update fails."""

    def outputs(self, stack: str) -> dict[str, Any]: ...

    def list_stacks(self) -> list[StackSummary]: ...

    def set_tags(self, stack: str, tags: dict[str, str]) -> None: ...

    def resources(self, stack: str) -> list[StateResource]:
        """The stack's state, as `pulumi stack export` gives it."""

    def preview_destroy(self, stack: str, on_progress: OnProgress) -> list[str]:
        """URNs a destroy would delete (a dry run)."""

    def destroy(self, stack: str, on_progress: OnProgress) -> None: ...

    def remove(self, stack: str) -> None:
        """Remove the (empty) stack, its tags and its settings from the backend."""
