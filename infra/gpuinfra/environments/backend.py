"""The state backend: where stacks, their tags and locks live, laid out as Pulumi's DIY backend lays them
out (`pulumi login file://...` or `s3://...` reads the same files), plus gpuinfra's own corner.

    .pulumi/meta.yaml                                         version: 1 (project layout)
    .pulumi/stacks/<project>/<stack>.json                     the checkpoint (resources)
    .pulumi/stacks/<project>/<stack>.pulumi-tags              stack tags {"version": 1, "tags": {...}}
    .pulumi/locks/organization/<project>/<stack>/<id>.json    one file per lock holder
    .pulumi/history/<project>/<stack>/<stack>-<ns>.history.json
    .gpuinfra/stacks/<project>/<stack>.yaml                   the environment's stack settings (config)

Locking follows Pulumi's DIY protocol (pkg/backend/diy/lock.go): write a lock file of one's own, list the
stack's lock directory, and back off if anyone else's is there. Creating an environment claims its
stack settings file with an exclusive write (O_EXCL on disk, If-None-Match on S3), so of two `env up` of
one name exactly one wins.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, urlparse

from gpuinfra.environments.durations import format_duration
from gpuinfra.environments.models import Model, utc_text
from gpuinfra.errors import InputError, Problem

PROJECT = "gpuinfra"
DEFAULT_BACKEND = "file://~/.gpuinfra/state"
BACKEND_ENV = "GPUINFRA_BACKEND"


class StackLocked(RuntimeError):
    """Someone else holds the stack's lock: an update is in progress."""

    def __init__(self, stack: str, holders: list[str]):
        self.stack, self.holders = stack, holders
        super().__init__(f"stack {stack} is locked by {', '.join(holders)} (an update is in progress)")


class Store(Protocol):
    """Keys are slash paths under the backend's root."""

    url: str

    def read(self, key: str) -> bytes | None: ...
    def write(self, key: str, data: bytes) -> None: ...
    def create(self, key: str, data: bytes) -> bool: ...  # False when KEY already exists
    def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> list[str]: ...


class FileStore:
    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url

    def _path(self, key: str) -> Path:
        return self.root / key

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half a checkpoint

    def create(self, key: str, data: bytes) -> bool:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "xb") as handle:
                handle.write(data)
        except FileExistsError:
            return False
        return True

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".partial"))


class S3Store:
    """`s3://bucket/prefix?region=R` (Pulumi's form); credentials from the usual boto3 chain."""

    def __init__(self, bucket: str, prefix: str, url: str, region: str | None = None, client=None) -> None:
        import boto3

        self.bucket, self.prefix, self.url = bucket, prefix.strip("/"), url
        self.client = client or boto3.client("s3", region_name=region)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def read(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def write(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def create(self, key: str, data: bytes) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def list(self, prefix: str) -> list[str]:
        keys = []
        start = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                          Prefix=self._key(prefix)):
            keys.extend(item["Key"][start:] for item in page.get("Contents", []))
        return sorted(keys)


def backend_url(flag_value: str | None) -> str:
    return flag_value or os.environ.get(BACKEND_ENV) or DEFAULT_BACKEND


def open_store(url: str) -> Store:
    """file://PATH (`~` expanded) or s3://bucket[/prefix][?region=R]; anything else is bad input."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        path = Path(os.path.expanduser(parsed.netloc + parsed.path)) if parsed.netloc in ("", "~") else None
        if path is None or not str(path).startswith("/"):
            raise InputError([Problem("--backend", f"{url!r}: use file:///absolute/path or file://~/path")])
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise InputError([Problem("--backend", f"{url!r}: {existing} is not a directory")])
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise InputError([Problem("--backend", f"{url!r}: {existing} is not writable")])
        return FileStore(path, url)
    if parsed.scheme == "s3" and parsed.netloc:
        region = (parse_qs(parsed.query).get("region") or [None])[0]
        return S3Store(parsed.netloc, parsed.path, url, region=region)
    raise InputError([Problem("--backend", f"{url!r} is not a file:// or s3:// URL")])


class LockInfo(Model):
    """The lock file's content, as Pulumi writes it."""

    pid: int
    username: str
    hostname: str
    timestamp: str

    def holder(self) -> str:
        return f"{self.username}@{self.hostname} (pid {self.pid}) since {self.timestamp}"


class Backend:
    """The DIY layout over a Store: checkpoints, tags, locks, history and gpuinfra's stack settings."""

    def __init__(self, store: Store, project: str = PROJECT) -> None:
        self.store, self.project = store, project

    # --- paths
    def checkpoint_key(self, stack: str) -> str:
        return f".pulumi/stacks/{self.project}/{stack}.json"

    def tags_key(self, stack: str) -> str:
        return f".pulumi/stacks/{self.project}/{stack}.pulumi-tags"

    def lock_dir(self, stack: str) -> str:
        return f".pulumi/locks/organization/{self.project}/{stack}"

    def settings_key(self, stack: str) -> str:
        return f".gpuinfra/stacks/{self.project}/{stack}.yaml"

    def history_key(self, stack: str, moment: datetime) -> str:
        stamp = int(moment.timestamp() * 1e9)
        return f".pulumi/history/{self.project}/{stack}/{stack}-{stamp}.history.json"

    # --- stacks
    def ensure_meta(self) -> None:
        if self.store.read(".pulumi/meta.yaml") is None:
            self.store.write(".pulumi/meta.yaml", b"version: 1\n")

    def stack_names(self) -> list[str]:
        prefix = f".pulumi/stacks/{self.project}/"
        return sorted(key[len(prefix):-len(".json")] for key in self.store.list(prefix)
                      if key.endswith(".json") and "/" not in key[len(prefix):])

    def read_json(self, key: str) -> dict | None:
        """KEY's JSON object, or None when absent. A file that is not a JSON object is refused by name (a
        hand edit or a torn write): exit 2, and nothing is written over it."""
        data = self.store.read(key)
        if data is None:
            return None
        try:
            document = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise InputError([Problem("--backend", f"{key} is not valid JSON ({str(exc)[:80]}): repair or remove "
                                                   "it")]) from None
        if not isinstance(document, dict):
            raise InputError([Problem("--backend", f"{key} holds a JSON {type(document).__name__}, not an object")])
        return document

    def write_json(self, key: str, document: dict) -> None:
        self.store.write(key, json.dumps(document, indent=4, sort_keys=True).encode())

    def tags(self, stack: str) -> dict[str, str]:
        key = self.tags_key(stack)
        tags = (self.read_json(key) or {}).get("tags", {})
        if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
            raise InputError([Problem("--backend", f"{key}: 'tags' must map names to strings")])
        return tags

    def set_tags(self, stack: str, tags: dict[str, str]) -> None:
        merged = {**self.tags(stack), **tags}
        self.write_json(self.tags_key(stack), {"version": 1, "tags": merged})

    # --- locks
    def lock_holders(self, stack: str, *, except_key: str | None = None) -> list[str]:
        holders = []
        for key in self.store.list(self.lock_dir(stack) + "/"):
            if key == except_key:
                continue
            try:
                holders.append(LockInfo.model_validate_json(self.store.read(key) or b"").holder())
            except ValueError:
                holders.append(f"an unreadable lock {key}")
        return holders

    @contextmanager
    def lock(self, stack: str, now: datetime | None = None) -> Iterator[None]:
        """Pulumi's DIY lock: check, write ours, check again; never break someone else's."""
        if holders := self.lock_holders(stack):
            raise StackLocked(stack, holders)
        key = f"{self.lock_dir(stack)}/{uuid.uuid4()}.json"
        info = LockInfo(pid=os.getpid(), username=getpass.getuser(), hostname=socket.gethostname(),
                        timestamp=utc_text(now or datetime.now(UTC)))
        self.store.write(key, info.model_dump_json().encode())
        try:
            if holders := self.lock_holders(stack, except_key=key):
                raise StackLocked(stack, holders)
            yield
        finally:
            self.store.delete(key)


class Clock(Protocol):
    def now(self) -> datetime: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC).replace(microsecond=0)


class StandinClock:
    """STAND-IN time for the stand-in engine: the real clock plus an offset kept in the backend, moved by
    `gpuinfra env clock --advance 3h`, so expiry, spend and the reaper can be exercised without waiting."""

    KEY = ".gpuinfra/standin-clock.json"

    def __init__(self, store: Store) -> None:
        self.store = store

    def offset(self) -> timedelta:
        data = self.store.read(self.KEY)
        return timedelta(seconds=json.loads(data)["offset_s"]) if data else timedelta(0)

    def advance(self, by: timedelta) -> None:
        offset = self.offset() + by
        self.store.write(self.KEY, json.dumps({"offset_s": offset.total_seconds(),
                                               "note": f"stand-in clock {format_duration(offset)} ahead"}).encode())

    def now(self) -> datetime:
        return (datetime.now(UTC) + self.offset()).replace(microsecond=0)
