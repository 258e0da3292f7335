"""checkov 3.3.30 (Kubernetes framework, its own venv: .venv-tools) on every object the EKS stacks render, and on
the LeaderWorkerSet's pod templates as Pods (checkov does not know the CRD): zero failed checks, and every skip
is one the object itself carries with a written reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from gpuinfra.kubernetes.manifests import kubernetes_objects, write_manifests
from gpuinfra.plan import resolve_stack
from gpuinfra.preview import run_offline

REPO = Path(__file__).resolve().parents[2]
CHECKOV = REPO / ".venv-tools" / "bin" / "checkov"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHECKOV.exists(), reason="scripts/bootstrap.sh test installs .venv-tools")]


# The shipped stacks, and the other node provisioning and rollout: Karpenter's NodePools and EC2NodeClasses
# (checkov has no checks for them, they must not fail any), two colours of StatefulSets and LeaderWorkerSets.
VARIANTS = [("eks-70b", ()), ("eks-r1", ()), ("eks-r1", ("target.node_provisioning=karpenter",)),
            ("eks-70b", ("target.rollout.strategy=blue-green", "nodes=2", "target.autoscaling.max_replicas=4")),
            ("eks-r1", ("target.rollout.strategy=blue-green", "target.autoscaling.min_replicas=1",
                        "target.autoscaling.max_replicas=1"))]


def lws_pods(manifest: dict) -> list[dict]:
    group = manifest["spec"]["leaderWorkerTemplate"]
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {
        **group[role]["metadata"], "name": f"{manifest['metadata']['name']}-{role.removesuffix('Template')}",
        "namespace": manifest["metadata"]["namespace"],
        "annotations": {**group[role]["metadata"]["annotations"], **manifest["metadata"].get("annotations", {})}},
        "spec": group[role]["spec"]} for role in ("leaderTemplate", "workerTemplate")]


def test_checkov_passes_every_rendered_object(tmp_path):
    documents = []
    for stack, sets in VARIANTS:
        documents += kubernetes_objects(run_offline(resolve_stack(stack, sets=list(sets))).resources)
    documents += [pod for d in documents if d["kind"] == "LeaderWorkerSet" for pod in lws_pods(d)]
    write_manifests(documents, tmp_path / "manifests")
    done = subprocess.run([str(CHECKOV), "-d", str(tmp_path / "manifests"), "--framework", "kubernetes",
                           "--compact", "--skip-download", "-o", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(done.stdout)
    results = report["results"]
    assert report["summary"]["failed"] == 0, [(c["check_id"], c["resource"]) for c in results["failed_checks"]]
    assert report["summary"]["passed"] > 500
    skipped = {c["check_id"] for c in results["skipped_checks"]}
    assert skipped <= {"CKV_K8S_15", "CKV_K8S_43", "CKV_K8S_35", "CKV_K8S_23", "CKV_K8S_40", "CKV_K8S_8",
                       "CKV_K8S_9", "CKV_K8S_25"}
    for document in documents:  # every skip names its check and gives a reason
        for key, value in ((document.get("metadata") or {}).get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert check.startswith("CKV") and len(reason) > 30, value
    assert {"NodePool", "EC2NodeClass"} <= {d["kind"] for d in documents}
    serving = [d for d in documents if d["kind"] in ("StatefulSet", "Pod")]
    assert serving and all("checkov.io/skip1" in d["metadata"]["annotations"] for d in serving)
    assert yaml.safe_load((next((tmp_path / "manifests").iterdir())).read_text())
