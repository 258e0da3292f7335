"""The CrossGuard pack's files: `__main__.py` only assembles, requirements install the project."""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

PACK = Path(__file__).resolve().parents[2] / "policies" / "gpu-guardrails"


def test_main_only_assembles_the_pack():
    tree = ast.parse((PACK / "__main__.py").read_text())
    statements = [node for node in tree.body if not isinstance(node, ast.Expr | ast.ImportFrom | ast.Import)
                  or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))]
    (call,) = statements
    assert call.value.func.id == "PolicyPack"
    assert not any(isinstance(node, ast.FunctionDef | ast.ClassDef) for node in ast.walk(tree))


def test_pack_metadata_and_requirements():
    metadata = yaml.safe_load((PACK / "PulumiPolicy.yaml").read_text())
    assert metadata["runtime"]["name"] == "python"
    requirements = (PACK / "requirements.txt").read_text().split()
    assert "-e" in requirements and "../.." in requirements and "../../constraints.txt" in requirements


def test_policies_doc_lists_every_rule_and_config_key():
    from gpu_guardrails import POLICIES

    doc = (PACK.parents[1] / "docs" / "policies.md").read_text()
    for policy in POLICIES:
        assert f"`{policy.name}`" in doc, policy.name
        for key in (policy.config_schema.properties if policy.config_schema else {}):
            assert f"`{key}`" in doc, (policy.name, key)
