"""The real engine (pulumi.automation) wherever a `pulumi` CLI is on PATH (it cannot be installed on the
project's CI machines, so there this is skipped and the stand-in engine carries the tests). It drives a
program with one component and no provider, so no cloud is needed, through the same Engine protocol the
environment commands use, on a file:// backend: create with tags, up, list, preview the destroy, destroy,
zero resources, remove; and the exclusive claim of a name."""

from __future__ import annotations

import shutil

import pytest
from gpuinfra.environments.backend import Backend, FileStore
from gpuinfra.environments.engine import StackExists

pytestmark = pytest.mark.skipif(shutil.which("pulumi") is None,
                                reason="no pulumi CLI on PATH (not installable here); the stand-in engine is tested")


def program() -> None:
    import pulumi

    class Nothing(pulumi.ComponentResource):
        def __init__(self, name: str) -> None:
            super().__init__("gpuinfra:test:Nothing", name, None, None)
            self.register_outputs({})

    Nothing("nothing")
    pulumi.export("owner", pulumi.Config("gpuinfra").require_object("environment")["owner"])


def test_the_real_engine_round_trip(tmp_path, monkeypatch):
    from gpuinfra.environments.pulumi_engine import PulumiEngine

    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "gpuinfra-test")
    monkeypatch.setenv("PULUMI_HOME", str(tmp_path / "pulumi-home"))
    backend = Backend(FileStore(tmp_path / "state", f"file://{tmp_path / 'state'}"))
    engine = PulumiEngine(backend, program=program)
    settings = {"config": {"gpuinfra:environment": {"owner": "alice"}}}
    engine.create("t", settings, {"gpuinfra:owner": "alice"})
    with pytest.raises(StackExists):
        engine.create("t", settings, {})
    assert engine.up("t", lambda _: None) == {"owner": "alice"}
    (summary,) = engine.list_stacks()
    assert summary.name == "t" and summary.tags["gpuinfra:owner"] == "alice" and not summary.update_in_progress
    assert (tmp_path / "state/.pulumi/stacks/gpuinfra/t.json").exists()  # the layout the stand-in keeps too
    planned = engine.preview_destroy("t", lambda _: None)
    assert any("gpuinfra:test:Nothing::nothing" in urn for urn in planned)
    engine.destroy("t", lambda _: None)
    assert engine.resources("t") == []
    engine.remove("t")
    assert engine.list_stacks() == []
