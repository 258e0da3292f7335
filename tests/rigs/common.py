"""Shell helpers and the cache directory the rigs share."""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("GPUINFRA_RIG_CACHE", "/var/tmp/gpuinfra-rigs"))
SUITE = "bookworm"
MIRROR = os.environ.get("GPUINFRA_DEBIAN_MIRROR", "http://deb.debian.org/debian")


class RigError(RuntimeError):
    pass


def scratch_dir(prefix: str) -> Path:
    """A fresh work directory inside the rig cache, creating the cache first: a new machine has none."""
    CACHE.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=prefix, dir=CACHE))


def sh(*argv: str | os.PathLike, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RigError(f"{' '.join(map(str, argv))} exited {result.returncode}:\n{result.stdout[-2000:]}"
                       f"\n{result.stderr[-4000:]}")
    return result


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def build_once(directory: Path, build) -> Path:
    """Build into a temporary sibling and rename, so an interrupted build never looks finished. A lock file
    serialises concurrent test runs that want the same build (one builds, the others wait and reuse it)."""
    if (directory / ".complete").exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (directory / ".complete").exists():
            return directory
        return _build_locked(directory, build)


def _build_locked(directory: Path, build) -> Path:
    partial = directory.with_name(directory.name + ".partial")
    if partial.exists():
        sh("rm", "-rf", "--one-file-system", partial)
    partial.mkdir(parents=True)
    build(partial)
    (partial / ".complete").touch()
    if directory.exists():
        sh("rm", "-rf", "--one-file-system", directory)
    partial.rename(directory)
    # Older builds of the same thing (other inputs) are dead weight in the cache.
    family = directory.name.rsplit("-", 1)[0]
    for stale in directory.parent.glob(f"{family}-*"):
        if stale != directory and stale.is_dir() and (stale / ".complete").exists():
            sh("rm", "-rf", "--one-file-system", stale, check=False)
    return directory
