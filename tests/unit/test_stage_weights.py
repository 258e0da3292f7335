"""The weight stager against a stand-in hub (tests/rigs/standin_hub.py) over real HTTP, and against S3
through moto's in-process stand-in: verified, parallel, resumable, and a second run fetches nothing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from gpuinfra.assets import stage_weights
from moto import mock_aws

from tests.rigs.standin_hub import StandinHub

SCRIPT = Path(stage_weights.__file__)


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "remote"
    (root / "nested").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen2"}')
    (root / "model-00001-of-00002.safetensors").write_bytes(os.urandom(300_000))
    (root / "model-00002-of-00002.safetensors").write_bytes(os.urandom(120_000))
    (root / "nested" / "tokenizer.json").write_bytes(os.urandom(5000))
    return root


@pytest.fixture
def hub(model_dir):
    server = StandinHub(model_dir).start()
    yield server
    server.shutdown()


def stage(hub_url: str, target: Path, *extra: str, token: str | None = None) -> tuple[int, dict]:
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    if token:
        env["HF_TOKEN"] = token
    done = subprocess.run([sys.executable, str(SCRIPT), "hf://deepseek-ai/Tiny", str(target), "--hf-endpoint",
                           hub_url, "--revision", "0123abc", *extra], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.stderr == "", done.stderr
    return done.returncode, json.loads(done.stdout)


def same_tree(a: Path, b: Path) -> bool:
    def files(root):
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and p.name != stage_weights.MANIFEST}
    return files(a) == files(b)


def resolves(hub: StandinHub) -> list[tuple[str, str]]:
    return [r for r in hub.requests if "/resolve/" in r[0]]


def test_stages_every_file_then_a_second_run_downloads_nothing(hub, model_dir, tmp_path):
    target = tmp_path / "models" / "tiny"
    code, first = stage(hub.url, target)
    assert code == 0, first
    assert first["files"] == 4 and len(first["downloaded"]) == 4 and first["errors"] == []
    assert same_tree(model_dir, target) and not (target / stage_weights.STAGING).exists()
    # The tree listing was paginated (2 entries a page) and followed to the end.
    assert sum("/tree/" in path for path, _ in hub.requests) == 2
    hub.requests.clear()
    code, second = stage(hub.url, target)
    assert code == 0 and second["downloaded"] == [] and second["bytes_downloaded"] == 0
    assert resolves(hub) == []


def test_a_cut_transfer_resumes_with_a_range_request(model_dir, tmp_path):
    server = StandinHub(model_dir, cut_after=100_000).start()
    try:
        code, result = stage(server.url, tmp_path / "t", "--workers", "1")
    finally:
        server.shutdown()
    assert code == 0, result
    assert same_tree(model_dir, tmp_path / "t")
    ranges = [rng for path, rng in resolves(server) if path.endswith("model-00001-of-00002.safetensors")]
    assert ranges == ["", "bytes=100000-"]


def test_an_interrupted_run_resumes_from_its_part_file(hub, model_dir, tmp_path):
    target = tmp_path / "t"
    part = target / stage_weights.STAGING / "model-00001-of-00002.safetensors.part"
    part.parent.mkdir(parents=True)
    part.write_bytes((model_dir / "model-00001-of-00002.safetensors").read_bytes()[:65_536])
    code, result = stage(hub.url, target)
    assert code == 0, result
    assert ("bytes=65536-" in [rng for path, rng in resolves(hub) if "00001" in path])
    assert same_tree(model_dir, target)


def test_a_corrupt_download_never_takes_the_final_name(hub, model_dir, tmp_path):
    hub.corrupt.add("model-00002-of-00002.safetensors")
    target = tmp_path / "t"
    code, result = stage(hub.url, target)
    assert code == 1
    assert result["errors"] == ["model-00002-of-00002.safetensors: checksum mismatch (sha256); the partial file "
                                "was removed"]
    assert not (target / "model-00002-of-00002.safetensors").exists()
    assert (target / "model-00001-of-00002.safetensors").exists()
    # Fixed at the source: the next run fetches only the missing file.
    hub.corrupt.clear()
    hub.requests.clear()
    code, result = stage(hub.url, target)
    assert code == 0 and result["downloaded"] == ["model-00002-of-00002.safetensors"]


def test_a_changed_remote_file_is_fetched_again_and_files_in_place_are_adopted(hub, model_dir, tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "config.json").write_bytes((model_dir / "config.json").read_bytes())  # staged by hand
    code, result = stage(hub.url, target)
    assert code == 0 and result["verified_in_place"] == ["config.json"] and len(result["downloaded"]) == 3
    (model_dir / "nested" / "tokenizer.json").write_bytes(os.urandom(5000))
    code, result = stage(hub.url, target)
    assert code == 0 and result["downloaded"] == ["nested/tokenizer.json"]


def test_a_gated_repository_without_a_token_says_so(model_dir, tmp_path):
    server = StandinHub(model_dir, token="hf_secret").start()
    try:
        code, result = stage(server.url, tmp_path / "t")
        assert code == 1 and "gated or private and HF_TOKEN is missing" in result["error"]
        assert "hf_secret" not in json.dumps(result)
        code, result = stage(server.url, tmp_path / "t", token="hf_secret")
        assert code == 0 and len(result["downloaded"]) == 4
    finally:
        server.shutdown()


def test_bad_sources_are_refused_without_a_traceback(tmp_path):
    for source in ("hf://only-org", "gs://bucket/x"):
        done = subprocess.run([sys.executable, str(SCRIPT), source, str(tmp_path)], capture_output=True, text=True)
        assert done.returncode == 1 and done.stderr == ""
        assert "expected hf://org/repo" in json.loads(done.stdout)["error"]


def test_a_remote_path_outside_the_target_is_refused(tmp_path):
    stager = stage_weights.Stager(None, tmp_path, "x", 1)
    with pytest.raises(stage_weights.StagingError, match="outside the target"):
        stager._local(stage_weights.RemoteFile("../etc/passwd", 1, "sha256", "0"))


# --- S3 (moto) ----------------------------------------------------------------------------------------


@pytest.fixture
def s3_bucket(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="acme-models")
        yield client


def test_s3_single_part_multipart_and_sha256_objects_verify(s3_bucket, tmp_path):
    small = os.urandom(20_000)
    s3_bucket.put_object(Bucket="acme-models", Key="r1/config.json", Body=b'{"a": 1}')
    s3_bucket.put_object(Bucket="acme-models", Key="r1/tokenizer.json", Body=small, ChecksumAlgorithm="SHA256")
    part_size = 5 * 1024 * 1024
    big = os.urandom(part_size * 2 + 12345)
    upload = s3_bucket.create_multipart_upload(Bucket="acme-models", Key="r1/model.safetensors")
    parts = []
    for number, offset in enumerate(range(0, len(big), part_size), start=1):
        done = s3_bucket.upload_part(Bucket="acme-models", Key="r1/model.safetensors", PartNumber=number,
                                     UploadId=upload["UploadId"], Body=big[offset:offset + part_size])
        parts.append({"PartNumber": number, "ETag": done["ETag"]})
    s3_bucket.complete_multipart_upload(Bucket="acme-models", Key="r1/model.safetensors",
                                        UploadId=upload["UploadId"], MultipartUpload={"Parts": parts})

    source = stage_weights.make_source("s3://acme-models/r1", "main", "", None)
    listed = {f.path: f for f in source.list_files()}
    assert listed["model.safetensors"].checksum_kind == "s3-etag"
    assert listed["model.safetensors"].checksum.endswith(f"-3|{part_size}")
    assert listed["tokenizer.json"].checksum_kind == "s3-sha256"
    assert listed["config.json"].checksum == hashlib.md5(b'{"a": 1}').hexdigest()

    target = tmp_path / "r1"
    first = stage_weights.Stager(source, target, "s3://acme-models/r1", 4).run()
    assert first["errors"] == [] and len(first["downloaded"]) == 3
    assert (target / "model.safetensors").read_bytes() == big and (target / "tokenizer.json").read_bytes() == small
    second = stage_weights.Stager(source, target, "s3://acme-models/r1", 4).run()
    assert second["downloaded"] == [] and second["verified_in_place"] == []


def test_s3_object_changed_after_listing_fails_verification(s3_bucket, tmp_path):
    s3_bucket.put_object(Bucket="acme-models", Key="r1/config.json", Body=b"original")
    source = stage_weights.make_source("s3://acme-models/r1", "main", "", None)
    listed = source.list_files()
    s3_bucket.put_object(Bucket="acme-models", Key="r1/config.json", Body=b"replaced")
    source.list_files = lambda: listed
    result = stage_weights.Stager(source, tmp_path, "s3://acme-models/r1", 1).run()
    assert result["errors"] == ["config.json: checksum mismatch (s3-etag); the partial file was removed"]
    assert not (tmp_path / "config.json").exists()


def test_an_empty_s3_prefix_is_an_error(s3_bucket, tmp_path):
    source = stage_weights.make_source("s3://acme-models/nothing-here", "main", "", None)
    with pytest.raises(stage_weights.StagingError, match="holds no objects"):
        source.list_files()
