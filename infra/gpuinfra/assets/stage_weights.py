#!/usr/bin/env python3
"""Stage a model's weights onto local disk from the Hugging Face hub or S3: parallel, verified, resumable.

    stage_weights.py SOURCE TARGET [--revision REV] [--workers N] [--hf-endpoint URL] [--s3-endpoint-url URL]

SOURCE is hf://org/repo or s3://bucket/prefix. Every file is checked against the checksum its source
publishes (the hub: SHA-256 of LFS files, the git blob SHA-1 of the others; S3: the object's full SHA-256
checksum when it has one, else its single- or multipart ETag) before it takes its final name, so a file
under its final name is always whole. Interrupted downloads resume from `.staging/*.part` with HTTP
ranges. A manifest of what was verified (`.gpuinfra-weights.json`) makes a second run download and hash
nothing. The hub token comes from HF_TOKEN in the environment, never from the command line.

Prints one JSON object; exit 0 when every file is in place and verified, 1 on a failure (the JSON carries
"error"), 2 on bad usage. Runs on the node with the standard library alone (boto3 for S3 sources).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MANIFEST = ".gpuinfra-weights.json"
STAGING = ".staging"
CHUNK = 8 * 1024 * 1024
ATTEMPTS = 4


class StagingError(Exception):
    pass


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    # sha256 (hex), git-sha1 (hex), s3-sha256 (base64), s3-etag ("<etag>" or "<etag>|<part size>")
    checksum_kind: str
    checksum: str

    @property
    def identity(self) -> str:
        return f"{self.checksum_kind}:{self.checksum}"


class Verifier:
    """Hashes a file's bytes as they stream, in whatever form the source publishes its checksum."""

    def __init__(self, remote: RemoteFile):
        self.remote = remote
        kind = remote.checksum_kind
        self.parts: list[bytes] = []
        self.part_size = 0
        self.part_filled = 0
        if kind in ("sha256", "s3-sha256"):
            self.digest = hashlib.sha256()
        elif kind == "git-sha1":
            self.digest = hashlib.sha1(f"blob {remote.size}\0".encode(), usedforsecurity=False)
        elif kind == "s3-etag":
            etag, _, part_size = remote.checksum.partition("|")
            self.part_size = int(part_size or 0)
            self.digest = hashlib.md5(usedforsecurity=False)
        else:
            raise StagingError(f"{remote.path}: unknown checksum kind {kind}")

    def update(self, data: bytes) -> None:
        if not self.part_size:
            self.digest.update(data)
            return
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self.part_filled)
            self.digest.update(view[:take])
            self.part_filled += take
            view = view[take:]
            if self.part_filled == self.part_size:
                self.parts.append(self.digest.digest())
                self.digest, self.part_filled = hashlib.md5(usedforsecurity=False), 0

    def matches(self) -> bool:
        kind, expected = self.remote.checksum_kind, self.remote.checksum
        if kind == "s3-sha256":
            return base64.b64encode(self.digest.digest()).decode() == expected
        if kind == "s3-etag" and self.part_size:
            parts = self.parts + ([self.digest.digest()] if self.part_filled else [])
            combined = hashlib.md5(b"".join(parts), usedforsecurity=False).hexdigest()
            return f"{combined}-{len(parts)}" == expected.partition("|")[0]
        return self.digest.hexdigest() == expected.partition("|")[0]


# --- sources -------------------------------------------------------------------------------------------


class HubSource:
    """The Hugging Face hub's tree and resolve endpoints (or a mirror speaking the same API)."""

    def __init__(self, repo: str, revision: str, endpoint: str, token: str | None):
        self.repo, self.revision, self.endpoint, self.token = repo, revision, endpoint.rstrip("/"), token

    def _open(self, url: str, headers: dict[str, str] | None = None):
        request = urllib.request.Request(url, headers={**(headers or {}), "User-Agent": "gpuinfra-stage-weights"})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            return urllib.request.urlopen(request, timeout=60)
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise StagingError(f"the hub refused {self.repo} ({exc.code}): the repository is gated or private "
                                   "and HF_TOKEN is missing or lacks access") from None
            if exc.code == 404:
                raise StagingError(f"the hub has no {self.repo} at revision {self.revision} (404)") from None
            raise

    def list_files(self) -> list[RemoteFile]:
        revision = urllib.parse.quote(self.revision, safe="")
        url: str | None = f"{self.endpoint}/api/models/{self.repo}/tree/{revision}?recursive=true"
        files = []
        while url:
            with self._open(url) as response:
                entries = json.load(response)
                url = _next_link(response.headers.get("Link", ""))
            for entry in entries:
                if entry.get("type") != "file":
                    continue
                lfs = entry.get("lfs")
                if lfs:
                    files.append(RemoteFile(entry["path"], int(lfs["size"]), "sha256", lfs["oid"]))
                else:
                    files.append(RemoteFile(entry["path"], int(entry["size"]), "git-sha1", entry["oid"]))
        return files

    def read(self, remote: RemoteFile, offset: int) -> tuple[int, Iterator[bytes]]:
        """(the offset the bytes really start at, the bytes); a server that ignores Range restarts at 0."""
        quoted = urllib.parse.quote(remote.path)
        url = f"{self.endpoint}/{self.repo}/resolve/{urllib.parse.quote(self.revision, safe='')}/{quoted}"
        response = self._open(url, {"Range": f"bytes={offset}-"} if offset else None)
        start = offset if response.status == 206 else 0
        return start, _chunks(response.read, response.close)


def _next_link(header: str) -> str | None:
    for part in header.split(","):
        if 'rel="next"' in part:
            return part.split(";")[0].strip().strip("<>")
    return None


class S3Source:
    def __init__(self, bucket: str, prefix: str, endpoint_url: str | None):
        try:
            import boto3
        except ImportError:
            raise StagingError("S3 sources need boto3 in this Python (the role installs it)") from None
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client("s3", endpoint_url=endpoint_url)

    def list_files(self) -> list[RemoteFile]:
        files = []
        prefix = f"{self.prefix}/" if self.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"]
                if key.endswith("/"):
                    continue
                files.append(self._describe(key, key[len(prefix):], int(item["Size"])))
        if not files:
            raise StagingError(f"s3://{self.bucket}/{prefix} holds no objects")
        return files

    def _describe(self, key: str, path: str, size: int) -> RemoteFile:
        head = self.client.head_object(Bucket=self.bucket, Key=key, ChecksumMode="ENABLED")
        if head.get("ChecksumSHA256") and head.get("ChecksumType", "FULL_OBJECT") == "FULL_OBJECT":
            return RemoteFile(path, size, "s3-sha256", head["ChecksumSHA256"])
        etag = head["ETag"].strip('"')
        if "-" not in etag:
            return RemoteFile(path, size, "s3-etag", etag)
        first_part = self.client.head_object(Bucket=self.bucket, Key=key, PartNumber=1)
        return RemoteFile(path, size, "s3-etag", f"{etag}|{first_part['ContentLength']}")

    def read(self, remote: RemoteFile, offset: int) -> tuple[int, Iterator[bytes]]:
        key = f"{self.prefix}/{remote.path}" if self.prefix else remote.path
        extra = {"Range": f"bytes={offset}-"} if offset else {}
        body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        return offset, _chunks(body.read, body.close)


def _chunks(read: Callable[[int], bytes], close: Callable[[], None]) -> Iterator[bytes]:
    try:
        while data := read(CHUNK):
            yield data
    finally:
        close()


# --- staging -------------------------------------------------------------------------------------------


class Stager:
    def __init__(self, source, target: Path, label: str, workers: int):
        self.source, self.target, self.label, self.workers = source, target, label, workers
        self.lock = threading.Lock()
        self.manifest_path = target / MANIFEST
        self.manifest = self._load_manifest()

    def _load_manifest(self) -> dict:
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (FileNotFoundError, ValueError):
            return {"source": self.label, "files": {}}
        if manifest.get("source") != self.label:
            return {"source": self.label, "files": {}}
        return manifest

    def _save_manifest(self) -> None:
        temporary = self.manifest_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.manifest, indent=1, sort_keys=True))
        os.replace(temporary, self.manifest_path)

    def _local(self, remote: RemoteFile) -> Path:
        relative = PurePosixPath(remote.path)
        if relative.is_absolute() or ".." in relative.parts:
            raise StagingError(f"refusing a remote path outside the target: {remote.path}")
        return self.target / relative

    def _part(self, remote: RemoteFile) -> Path:
        return self.target / STAGING / (remote.path + ".part")

    def is_current(self, remote: RemoteFile) -> bool:
        local = self._local(remote)
        recorded = self.manifest["files"].get(remote.path)
        return (recorded is not None and recorded == remote.identity and local.is_file()
                and local.stat().st_size == remote.size)

    def run(self) -> dict:
        started = time.monotonic()
        self.target.mkdir(parents=True, exist_ok=True)
        remote_files = self.source.list_files()
        pending = [r for r in remote_files if not self.is_current(r)]
        # A file already in place (staged by hand, or before the manifest was written) is hashed, not fetched.
        fetch = [r for r in pending if not self._adopt(r)]
        needed = sum(r.size - self._part_size(r) for r in fetch)
        free = shutil.disk_usage(self.target).free
        if needed > free:
            raise StagingError(f"{self.target} has {free / 2**30:.1f} GiB free; the weights need "
                               f"{needed / 2**30:.1f} GiB more")
        downloaded, errors = [], []
        with ThreadPoolExecutor(max_workers=max(1, self.workers)) as pool:
            futures = {pool.submit(self._fetch, remote): remote for remote in fetch}
            for future in as_completed(futures):
                remote = futures[future]
                try:
                    future.result()
                    downloaded.append(remote.path)
                except (StagingError, OSError, urllib.error.URLError) as exc:
                    errors.append(f"{remote.path}: {exc}")
                except Exception as exc:  # boto's errors: report every file, not the first
                    errors.append(f"{remote.path}: {type(exc).__name__}: {exc}")
        if not errors and (self.target / STAGING).exists():
            shutil.rmtree(self.target / STAGING)
        return {
            "source": self.label, "target": str(self.target), "files": len(remote_files),
            "bytes": sum(r.size for r in remote_files), "downloaded": sorted(downloaded),
            "bytes_downloaded": sum(r.size for r in fetch if r.path in downloaded),
            "verified_in_place": sorted(r.path for r in pending if r not in fetch),
            "errors": sorted(errors), "seconds": round(time.monotonic() - started, 3),
        }

    def _part_size(self, remote: RemoteFile) -> int:
        part = self._part(remote)
        return part.stat().st_size if part.exists() else 0

    def _adopt(self, remote: RemoteFile) -> bool:
        local = self._local(remote)
        if not local.is_file() or local.stat().st_size != remote.size:
            return False
        verifier = Verifier(remote)
        with local.open("rb") as handle:
            while data := handle.read(CHUNK):
                verifier.update(data)
        if verifier.matches():
            self._record(remote)
            return True
        return False

    def _record(self, remote: RemoteFile) -> None:
        with self.lock:
            self.manifest["files"][remote.path] = remote.identity
            self._save_manifest()

    def _fetch(self, remote: RemoteFile) -> None:
        part = self._part(remote)
        part.parent.mkdir(parents=True, exist_ok=True)
        last_error: Exception | None = None
        for attempt in range(ATTEMPTS):
            try:
                self._fetch_once(remote, part)
                return
            except StagingError:
                raise
            except Exception as exc:  # dropped connections, short reads, throttling: resume from the part file
                last_error = exc
                time.sleep(min(30, 2 ** attempt))
        raise StagingError(f"gave up after {ATTEMPTS} attempts: {last_error}")

    def _fetch_once(self, remote: RemoteFile, part: Path) -> None:
        have = part.stat().st_size if part.exists() else 0
        if have > remote.size:
            part.unlink()
            have = 0
        start, chunks = self.source.read(remote, have) if have < remote.size else (have, iter(()))
        verifier = Verifier(remote)
        with part.open("r+b" if part.exists() else "wb") as handle:
            # Resuming: what is already on disk goes through the hash first.
            handle.seek(0)
            remaining = start
            while remaining:
                data = handle.read(min(CHUNK, remaining))
                if not data:
                    break
                verifier.update(data)
                remaining -= len(data)
            handle.seek(start)
            handle.truncate(start)
            for data in chunks:
                handle.write(data)
                verifier.update(data)
        size = part.stat().st_size
        if size != remote.size:
            raise OSError(f"got {size} of {remote.size} bytes")
        if not verifier.matches():
            part.unlink()
            raise StagingError(f"checksum mismatch ({remote.checksum_kind}); the partial file was removed")
        local = self._local(remote)
        local.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, local)
        self._record(remote)


def make_source(source: str, revision: str, hf_endpoint: str, s3_endpoint_url: str | None):
    if source.startswith("hf://"):
        repo = source[len("hf://"):].strip("/")
        if repo.count("/") != 1:
            raise StagingError(f"{source}: expected hf://org/repo")
        return HubSource(repo, revision, hf_endpoint, os.environ.get("HF_TOKEN") or None)
    if source.startswith("s3://"):
        bucket, _, prefix = source[len("s3://"):].partition("/")
        return S3Source(bucket, prefix, s3_endpoint_url)
    raise StagingError(f"{source}: expected hf://org/repo or s3://bucket/prefix")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("target", type=Path)
    parser.add_argument("--revision", default="main", help="hub revision; pin a commit SHA")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--hf-endpoint", default=os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    parser.add_argument("--s3-endpoint-url", default=None)
    args = parser.parse_args(argv)
    label = f"{args.source}@{args.revision}" if args.source.startswith("hf://") else args.source
    try:
        source = make_source(args.source, args.revision, args.hf_endpoint, args.s3_endpoint_url)
        result = Stager(source, args.target, label, args.workers).run()
    except (StagingError, OSError, urllib.error.URLError) as exc:
        print(json.dumps({"source": label, "target": str(args.target), "error": str(exc)}))
        return 1
    except Exception as exc:  # boto's errors (credentials, access) without a traceback
        print(json.dumps({"source": label, "target": str(args.target), "error": f"{type(exc).__name__}: {exc}"}))
        return 1
    print(json.dumps(result))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
