"""Object storage through fsspec: local folders and s3:// (or any fsspec URL) behave alike.

Writes are all-or-nothing: local files are written to a temporary name and renamed; S3 objects are
single PUTs or multipart uploads that only appear when completed (an aborted upload is discarded), so a
killed writer never leaves a partial object under its final name. Credentials come from the standard AWS
environment, profiles or instance roles, never from our own config files, and `redact` strips them from
any text we log or store.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.container import RangeReader


class StorageError(Exception):
    """An object store is unreachable, a path is missing, or a write failed (one-line message)."""


def filesystem(uri: str, *, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or fsspec URL.

    `endpoint_url` selects an S3-compatible server; without it, AWS_ENDPOINT_URL (if set) or AWS applies.
    """
    options: dict[str, Any] = {}
    if uri.startswith(("s3://", "s3a://")):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        options["config_kwargs"] = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}}
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except Exception as exc:
        raise StorageError(f"{uri}: cannot open ({type(exc).__name__}: {redact(str(exc))})") from None
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI a user would type for `path` (s3://bucket/key, or an absolute local path)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole object at once, atomically."""
    with open_atomic(fs, path) as handle:
        handle.write(data)


@contextlib.contextmanager
def open_atomic(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[BinaryIO]:
    """A writable handle whose object appears under `path` only if the block exits without error."""
    if is_local(fs):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with open(tmp, "wb") as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        return
    handle = fs.open(path, "wb")
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(Exception):
            handle.discard()  # abort the multipart upload: nothing appears under `path`
        handle.closed = True  # so garbage collection does not try to complete the aborted upload
        raise
    else:
        handle.close()


def range_reader(fs: fsspec.AbstractFileSystem, path: str) -> RangeReader:
    """read(offset, length) over one object, as ranged GETs (fresh reads, no caching layer)."""

    def read(offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return fs.cat_file(path, start=offset, end=offset + length)

    return read


def check_reachable(fs: fsspec.AbstractFileSystem, path: str, uri: str, *, must_exist: bool) -> None:
    """Fail fast with one line if the store cannot be reached (wrong endpoint, no bucket, no rights)."""
    try:
        exists = fs.exists(path)
        if not exists and not is_local(fs):
            bucket = path.split("/", 1)[0]
            if not fs.exists(bucket):
                raise StorageError(f"{uri}: bucket {bucket!r} does not exist or is not accessible")
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"{uri}: storage unreachable ({type(exc).__name__}: {redact(str(exc))})") from None
    if must_exist and not exists:
        raise StorageError(f"{uri}: no such file or prefix")


_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECURITY_TOKEN")
_SECRET_PATTERNS = (
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{12,}\b"),
    re.compile(r"(?i)(secret|token|password|credential)[\"']?\s*[:=]\s*[\"']?[^\s,\"'}]+"),
    re.compile(r"(?i)(X-Amz-Credential|X-Amz-Signature|X-Amz-Security-Token)=[^&\s]+"),
)


def redact(text: str) -> str:
    """`text` with credentials removed: AWS key ids, secrets, tokens and presigned-URL signatures."""
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: m.group(0).split("=")[0].split(":")[0] + "=***", text)
    return text
