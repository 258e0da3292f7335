"""STAND-IN engine: what `pulumi up/destroy` would do, without the Pulumi CLI or a cloud.

It runs the **real** program (gpuinfra.aws.program.declare) under Pulumi's mock runtime, exactly as
`gpuinfra plan` does, and writes what it registered as the stack's checkpoint in the DIY backend layout
(backend.py), with the stack's tags and Pulumi's lock protocol. Nothing is created anywhere: the
resources it "creates" are recorded in a stand-in cloud ledger (cloud.StandinCloud) so that orphan
detection has something to look at. Time is the stand-in clock (backend.StandinClock).

Tests and `--engine standin` use it; docs/environments.md says what it does not cover.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import yaml

from gpuinfra.config import CONFIG_KEY, parse_cluster, resolve
from gpuinfra.environments.backend import PROJECT, Backend
from gpuinfra.environments.engine import EngineError, OnProgress, StackExists, StackMissing
from gpuinfra.environments.models import ENVIRONMENT_CONFIG_KEY, StackSummary, StateResource, lifecycle_tags

STACK_TYPE = "pulumi:pulumi:Stack"
PULUMI_VERSION = "v3.272.0"  # the SDK the project pins; the checkpoint says which engine wrote it


def stack_urn(stack: str) -> str:
    return f"urn:pulumi:{stack}::{PROJECT}::{STACK_TYPE}::{PROJECT}-{stack}"


class StandinEngine:
    kind = "standin"

    def __init__(self, backend: Backend, cloud) -> None:
        self.backend, self.cloud = backend, cloud

    # --- stacks and their settings
    def create(self, stack: str, settings: dict[str, Any], tags: dict[str, str]) -> None:
        if self.backend.store.read(self.backend.checkpoint_key(stack)) is not None:
            raise StackExists(f"stack {stack} already exists in {self.backend.store.url}")
        text = yaml.safe_dump(settings, sort_keys=False).encode()
        if not self.backend.store.create(self.backend.settings_key(stack), text):
            raise StackExists(f"stack {stack} already exists in {self.backend.store.url}")
        self.backend.ensure_meta()
        self._write_checkpoint(stack, [])
        self.backend.set_tags(stack, {"pulumi:project": PROJECT, **tags})

    def save_settings(self, stack: str, settings: dict[str, Any]) -> None:
        self._require(stack)
        self.backend.store.write(self.backend.settings_key(stack), yaml.safe_dump(settings, sort_keys=False).encode())

    def settings(self, stack: str) -> dict[str, Any]:
        data = self.backend.store.read(self.backend.settings_key(stack))
        if data is None:
            raise StackMissing(f"stack {stack} has no settings in {self.backend.store.url}")
        return yaml.safe_load(data)

    def set_tags(self, stack: str, tags: dict[str, str]) -> None:
        self._require(stack)
        self.backend.set_tags(stack, tags)

    def list_stacks(self) -> list[StackSummary]:
        summaries = []
        for name in self.backend.stack_names():
            holders = self.backend.lock_holders(name)
            summaries.append(StackSummary(name=name, update_in_progress=bool(holders),
                                          lock_holder=holders[0] if holders else None,
                                          resource_count=len(self.resources(name)), tags=self.backend.tags(name)))
        return summaries

    # --- state
    def _checkpoint(self, stack: str) -> dict[str, Any]:
        document = self.backend.read_json(self.backend.checkpoint_key(stack))
        if document is None:
            raise StackMissing(f"no stack {stack} in {self.backend.store.url}")
        return document

    def _require(self, stack: str) -> None:
        self._checkpoint(stack)

    def resources(self, stack: str) -> list[StateResource]:
        latest = self._checkpoint(stack)["checkpoint"].get("latest") or {}
        return [StateResource.model_validate(r) for r in latest.get("resources") or []]

    def outputs(self, stack: str) -> dict[str, Any]:
        for resource in self.resources(stack):
            if resource.type == STACK_TYPE:
                return dict(resource.outputs)
        return {}

    def _write_checkpoint(self, stack: str, resources: list[dict[str, Any]]) -> None:
        now = datetime.now(UTC).isoformat()
        self.backend.write_json(self.backend.checkpoint_key(stack), {"version": 3, "checkpoint": {
            "stack": f"organization/{PROJECT}/{stack}",
            "latest": {"manifest": {"time": now, "magic": "gpuinfra-standin", "version": PULUMI_VERSION},
                       "resources": resources}}})

    def _history(self, stack: str, kind: str, changes: dict[str, int]) -> None:
        moment = datetime.now(UTC)
        self.backend.write_json(self.backend.history_key(stack, moment), {
            "kind": kind, "startTime": int(moment.timestamp()), "endTime": int(moment.timestamp()),
            "result": "succeeded", "resourceChanges": changes, "environment": {"engine": "gpuinfra-standin"}})

    # --- operations
    def up(self, stack: str, on_progress: OnProgress) -> dict[str, Any]:
        settings = self.settings(stack)["config"]
        with self.backend.lock(stack):
            on_progress("validating and sizing the stack config")
            cluster = resolve(stack, parse_cluster(settings[CONFIG_KEY]))
            tags = lifecycle_tags(settings[ENVIRONMENT_CONFIG_KEY])
            on_progress("running the program under the mock runtime (stand-in engine)")
            resources, outputs = self._run_program(stack, cluster, tags)
            previous = {r.urn for r in self.resources(stack)}
            self._write_checkpoint(stack, resources)
            self.cloud.record(stack, cluster.config.region, resources)
            created = sum(1 for r in resources if r["urn"] not in previous)
            self._history(stack, "update", {"create": created, "same": len(resources) - created})
            return outputs

    @staticmethod
    def _run_program(stack: str, cluster, tags: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from gpuinfra.aws.program import declare
        from gpuinfra.preview import run_program

        try:
            result = run_program(lambda: declare(cluster, environment_tags=tags), stack=stack,
                                 region=cluster.config.region)
        except Exception as exc:  # the program's own failure, reported like `pulumi up` reports it
            raise EngineError(f"the program failed: {exc}") from exc
        root = stack_urn(stack)
        urns = {r.name: r.urn for r in result.resources}
        resources = [{"urn": root, "type": STACK_TYPE, "custom": False, "outputs": result.outputs}]
        for recorded in result.resources:
            resources.append({"urn": recorded.urn, "type": recorded.type, "custom": recorded.custom,
                              "id": recorded.id, "parent": urns.get(recorded.parent, root) if recorded.parent
                              else root, "inputs": recorded.inputs, "outputs": {}})
        return resources, result.outputs

    def preview_destroy(self, stack: str, on_progress: OnProgress) -> list[str]:
        on_progress("previewing the destroy (stand-in engine)")
        return [r.urn for r in reversed(self.resources(stack))]

    def destroy(self, stack: str, on_progress: OnProgress) -> None:
        with self.backend.lock(stack):
            doomed = list(reversed(self.resources(stack)))
            for resource in doomed:
                on_progress(f"deleting {resource.type} {resource.urn.rsplit('::', 1)[-1]}")
            self._write_checkpoint(stack, [])
            self.cloud.forget(stack)
            self._history(stack, "destroy", {"delete": len(doomed)})

    def remove(self, stack: str) -> None:
        if self.resources(stack):
            raise EngineError(f"stack {stack} still has resources; destroy it first")
        for key in (self.backend.checkpoint_key(stack), self.backend.tags_key(stack),
                    self.backend.settings_key(stack)):
            self.backend.store.delete(key)
