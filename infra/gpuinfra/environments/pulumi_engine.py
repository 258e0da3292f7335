"""The real engine: Pulumi's Automation API (`pulumi.automation`), which drives the `pulumi` CLI.

Kept thin on purpose: every decision (budget, capacity, locks for creation, what may be destroyed) is
made by the engine-independent code; this only maps the Engine protocol onto the Automation API. The
program is inline (gpuinfra.aws.program.main) and the stack's config comes from the settings document
gpuinfra keeps in the backend, so any machine logged into the same backend can run any environment.

Needs the `pulumi` CLI on PATH and `PULUMI_CONFIG_PASSPHRASE` (or `_FILE`) for the DIY backend's secrets.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import yaml

from gpuinfra.environments.backend import PROJECT, Backend, StackLocked
from gpuinfra.environments.engine import EngineError, OnProgress, StackExists, StackMissing
from gpuinfra.environments.models import StackSummary, StateResource


def default_program() -> None:
    from gpuinfra.aws.program import main

    main()


class PulumiEngine:
    kind = "pulumi"

    def __init__(self, backend: Backend, program: Callable[[], None] = default_program) -> None:
        self.backend, self.program = backend, program
        self.work_dir = tempfile.mkdtemp(prefix="gpuinfra-workspace-")

    def _options(self):
        from pulumi import automation as auto

        passphrase = {k: v for k, v in os.environ.items() if k.startswith("PULUMI_CONFIG_PASSPHRASE")}
        return auto.LocalWorkspaceOptions(
            work_dir=self.work_dir, secrets_provider="passphrase", env_vars=passphrase or None,
            project_settings=auto.ProjectSettings(name=PROJECT, runtime="python",
                                                  backend=auto.ProjectBackend(url=self.backend.store.url)))

    def _stack(self, name: str):
        """Select the stack and give it its config from the backend's settings document."""
        from pulumi import automation as auto

        try:
            stack = auto.select_stack(name, project_name=PROJECT, program=self.program, opts=self._options())
        except auto.StackNotFoundError as exc:
            raise StackMissing(f"no stack {name} in {self.backend.store.url}") from exc
        config = self.settings(name).get("config") or {}
        stack.set_all_config({key: auto.ConfigValue(json.dumps(value) if isinstance(value, dict | list) else str(value))
                              for key, value in config.items()})
        return stack

    def create(self, stack: str, settings: dict[str, Any], tags: dict[str, str]) -> None:
        from pulumi import automation as auto

        if not self.backend.store.create(self.backend.settings_key(stack), yaml.safe_dump(settings).encode()):
            raise StackExists(f"stack {stack} already exists in {self.backend.store.url}")
        try:
            created = auto.create_stack(stack, project_name=PROJECT, program=self.program, opts=self._options())
        except auto.StackAlreadyExistsError as exc:
            self.backend.store.delete(self.backend.settings_key(stack))
            raise StackExists(f"stack {stack} already exists in {self.backend.store.url}") from exc
        for key, value in tags.items():
            created.workspace.set_tag(stack, key, value)

    def save_settings(self, stack: str, settings: dict[str, Any]) -> None:
        self.backend.store.write(self.backend.settings_key(stack), yaml.safe_dump(settings).encode())

    def settings(self, stack: str) -> dict[str, Any]:
        data = self.backend.store.read(self.backend.settings_key(stack))
        if data is None:
            raise StackMissing(f"stack {stack} has no gpuinfra settings in {self.backend.store.url}")
        return yaml.safe_load(data)

    def set_tags(self, stack: str, tags: dict[str, str]) -> None:
        workspace = self._stack(stack).workspace
        for key, value in tags.items():
            workspace.set_tag(stack, key, value)

    def list_stacks(self) -> list[StackSummary]:
        from pulumi import automation as auto

        workspace = auto.LocalWorkspace(**vars(self._options()))
        summaries = []
        for summary in workspace.list_stacks():
            holders = self.backend.lock_holders(summary.name)
            summaries.append(StackSummary(name=summary.name, update_in_progress=summary.update_in_progress or
                                          bool(holders), lock_holder=holders[0] if holders else None,
                                          resource_count=summary.resource_count or 0,
                                          tags=dict(workspace.list_tags(summary.name))))
        return summaries

    def _call(self, stack: str, operation: str, on_progress: OnProgress, on_step: Callable[[Any], None] | None = None):
        """Run OPERATION (up, preview_destroy, destroy), reporting each resource step as progress."""
        from pulumi import automation as auto

        def on_event(event) -> None:
            if event.resource_pre_event:
                metadata = event.resource_pre_event.metadata
                on_progress(f"{metadata.op.value} {metadata.type} {metadata.urn.rsplit('::', 1)[-1]}")
                if on_step:
                    on_step(metadata)

        try:
            return getattr(self._stack(stack), operation)(on_event=on_event)
        except auto.ConcurrentUpdateError as exc:
            raise StackLocked(stack, self.backend.lock_holders(stack) or ["another update"]) from exc
        except auto.CommandError as exc:
            raise EngineError(f"pulumi {operation} failed: {str(exc)[-2000:]}") from exc

    def up(self, stack: str, on_progress: OnProgress) -> dict[str, Any]:
        result = self._call(stack, "up", on_progress)
        return {key: output.value for key, output in result.outputs.items()}

    def outputs(self, stack: str) -> dict[str, Any]:
        return {key: output.value for key, output in self._stack(stack).outputs().items()}

    def resources(self, stack: str) -> list[StateResource]:
        deployment = self._stack(stack).export_stack().deployment or {}
        return [StateResource.model_validate(r) for r in deployment.get("resources") or []]

    def preview_destroy(self, stack: str, on_progress: OnProgress) -> list[str]:
        doomed: list[str] = []

        def collect(metadata) -> None:
            if metadata.op.value in ("delete", "delete-replaced"):
                doomed.append(metadata.urn)

        self._call(stack, "preview_destroy", on_progress, on_step=collect)
        return doomed

    def destroy(self, stack: str, on_progress: OnProgress) -> None:
        self._call(stack, "destroy", on_progress)

    def remove(self, stack: str) -> None:
        self._stack(stack).workspace.remove_stack(stack)
        self.backend.store.delete(self.backend.settings_key(stack))
