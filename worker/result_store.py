"""Where the worker writes artifacts it assembles itself (OpenGate per-entity results,
Elastic Path reports): a local folder (``file://``) or an S3-compatible bucket (``s3://``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlsplit

from worker.errors import ConfigError, ResultStoreError


@dataclass(frozen=True, slots=True)
class StoredArtifact:
    url: str
    size_bytes: int
    sha256: str


class ResultStore(Protocol):
    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredArtifact: ...


# Longest file name an artifact key ends in: file systems allow 255 bytes, and the
# temporary name written first adds a dot, the pid and ".tmp".
MAX_ARTIFACT_NAME_BYTES = 160


def artifact_key(folder: str, request_id: str, suffix: str) -> str:
    """Where a request's artifact goes: its id escaped into one readable file name, cut
    and completed by a hash of the whole id when it would be too long (ids are up to 256
    characters of anything; a name must fit a file system and stay unique)."""
    name = quote(request_id, safe="-_.~")
    if len(name) + len(suffix) > MAX_ARTIFACT_NAME_BYTES:
        head = name[: MAX_ARTIFACT_NAME_BYTES - len(suffix) - 17]
        head = head[: head.rfind("%")] if "%" in head[-2:] else head  # never half an escape
        name = f"{head}-{hashlib.sha256(request_id.encode()).hexdigest()[:16]}"
    return f"{folder}/{name}{suffix}"


def _safe_key(key: str) -> str:
    parts = [p for p in key.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    if not parts:
        raise ResultStoreError(f"invalid artifact key {key!r}")
    return "/".join(parts)


class FileResultStore:
    """Artifacts as files under a folder; written to a temporary name, then renamed,
    so a reader never sees half a file and a retry simply overwrites."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredArtifact:
        path = self.root / _safe_key(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise ResultStoreError(f"cannot write {path}: {exc.strerror}") from None
        return StoredArtifact(path.as_uri(), len(data), hashlib.sha256(data).hexdigest())


class S3ResultStore:
    """Artifacts in an S3-compatible bucket (boto3, run in a thread).

    The endpoint, region and credentials come from the usual AWS settings
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...), never from events.
    """

    def __init__(self, bucket: str, prefix: str = "") -> None:
        try:
            import boto3
        except ImportError:
            raise ConfigError("s3:// result stores need boto3: pip install 'export-worker[s3]'") from None
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self._client = boto3.client("s3")

    async def put(self, key: str, data: bytes, *, content_type: str) -> StoredArtifact:
        full = "/".join(p for p in (self.prefix, _safe_key(key)) if p)
        digest = hashlib.sha256(data).hexdigest()

        def upload() -> None:
            self._client.put_object(
                Bucket=self.bucket, Key=full, Body=data, ContentType=content_type, Metadata={"sha256": digest}
            )

        try:
            await asyncio.to_thread(upload)
        except Exception as exc:  # botocore raises many error types
            raise ResultStoreError(f"cannot upload s3://{self.bucket}/{full}: {type(exc).__name__}") from None
        return StoredArtifact(f"s3://{self.bucket}/{full}", len(data), digest)


def result_store_from_url(url: str) -> ResultStore:
    parts = urlsplit(url)
    if parts.scheme == "file":
        # file://./relative and file:///absolute are both accepted.
        raw = (parts.netloc + parts.path) if parts.netloc in ("", ".", "..") else parts.path
        return FileResultStore(Path(raw or "."))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError(f"result store {url!r} has no bucket")
        return S3ResultStore(parts.netloc, parts.path)
    raise ConfigError(f"result store {url!r}: use file://<folder> or s3://<bucket>/<prefix>")
