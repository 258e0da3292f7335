"""`gpuinfra plan STACK --manifests DIR` and `--json` for Kubernetes targets: one YAML file per object, numbers as
integers, DIR replaced whole and atomically, nothing written on bad input or an infeasible plan."""

from __future__ import annotations

import io
import json

import yaml
from gpuinfra.cli import main


def run(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    return main(list(argv), out=out), out.getvalue()


def numbers(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield value


def test_manifests_are_one_file_per_kubernetes_object(tmp_path):
    target = tmp_path / "out" / "manifests"
    code, _ = run("plan", "eks-r1", "--manifests", str(target))
    assert code == 0
    files = sorted(target.iterdir())
    documents = [yaml.safe_load(f.read_text()) for f in files]
    kinds = [d["kind"] for d in documents]
    for kind in ("Namespace", "ServiceAccount", "ConfigMap", "Service", "LeaderWorkerSet", "PodDisruptionBudget",
                 "HorizontalPodAutoscaler", "DaemonSet", "ServiceMonitor", "PrometheusRule"):
        assert kind in kinds, kind
    assert all(list(d)[:3] == ["apiVersion", "kind", "metadata"] for d in documents)
    lws = next(d for d in documents if d["kind"] == "LeaderWorkerSet")
    probe = lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]["containers"][0]["startupProbe"]
    assert isinstance(probe["failureThreshold"], int) and isinstance(lws["spec"]["leaderWorkerTemplate"]["size"], int)
    assert not [n for d in documents for n in numbers(d) if isinstance(n, float)]  # counts are integers
    assert not list(target.parent.glob(".manifests.*"))  # no staging directory left behind


def test_manifests_replace_the_directory_whole(tmp_path):
    target = tmp_path / "m"
    target.mkdir()
    (target / "stale.yaml").write_text("kind: Old\n")
    assert run("plan", "eks-70b", "--manifests", str(target))[0] == 0
    assert not (target / "stale.yaml").exists()
    assert any(f.name.endswith("statefulset-llm-gpuinfra-eks-70b.yaml") for f in target.iterdir())


def test_json_lists_the_kubernetes_objects_like_any_resource():
    code, text = run("plan", "eks-70b", "--json")
    assert code == 0
    report = json.loads(text)
    types = {r["type"] for r in report["resources"]}
    assert {"kubernetes:apps/v1:StatefulSet", "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
            "aws:eks/cluster:Cluster", "aws:eks/nodeGroup:NodeGroup"} <= types
    assert report["outputs"]["kubernetes"]["workload"] == "StatefulSet"
    assert report["violations"] == []


def test_bad_input_writes_nothing(tmp_path, capsys):
    target = tmp_path / "m"
    code, _ = run("plan", "eks-r1", "--set", "target.namespace=X", "--set", "concurrency=0",
                  "--manifests", str(target))
    err = capsys.readouterr().err
    assert code == 2 and not target.exists()
    assert "error: cluster.target.eks.namespace:" in err and "error: cluster.concurrency:" in err  # all at once
    code, _ = run("plan", "eks-r1", "--set", "target.autoscaling.metric=e2e-p90", "--manifests", str(target))
    assert code == 2 and not target.exists()
    assert "error: cluster.target.autoscaling.metric: deepseek-r1 is a reasoning model" in capsys.readouterr().err
    assert "Traceback" not in err
    code, _ = run("plan", "prod-70b", "--manifests", str(target))
    assert code == 2 and not target.exists()
    assert "error: --manifests: stack prod-70b targets ec2" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert run("plan", "eks-70b", "--manifests", str(tmp_path / "file"))[0] == 2
    assert "is not a directory" in capsys.readouterr().err


def test_over_the_budget_is_infeasible_and_writes_nothing(tmp_path, capsys):
    target = tmp_path / "m"
    code, _ = run("plan", "eks-70b", "--set", "hourly_budget_usd=100", "--manifests", str(target))
    assert code == 1 and not target.exists()
    assert "error: cluster.target.autoscaling.max_replicas:" in capsys.readouterr().err
