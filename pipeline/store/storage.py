"""Object storage through fsspec: local folders and s3:// (or any fsspec URL) behave alike.

Writes are all-or-nothing: local files are written to a temporary name and renamed; S3 objects are
single PUTs or multipart uploads that only appear when completed (an aborted upload is discarded), so a
killed writer never leaves a partial object under its final name. Credentials come from the standard AWS
environment, profiles or instance roles, never from our own config files, and `redact` strips them from
any text we log or store.

Faults: every object read and write of the pipeline goes through `retrying` — transient errors
(connection refused or dropped, timeouts, 5xx, throttling) are retried with exponential backoff and
jitter (`RetryPolicy`: 8 attempts, 0.5 s doubling to 15 s, about 23–45 s in all, so a 20 s outage is
ridden out); permanent ones (403 access denied, 404 missing) are raised at once, as themselves. When
the attempts run out, `StorageUnavailable` says so in one line. botocore's own retries are switched
off (one attempt per call) so the backoff is ours alone and does not multiply; s3fs still retries a
dropped connection a few times within a call. `describe` words any storage error for a user: access
denied, missing, or unreachable — never "unreachable" for a 403.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import hashlib
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO, TypeVar

import fsspec
from fsspec.implementations.local import LocalFileSystem

from pipeline.format.container import RangeReader

T = TypeVar("T")


class StorageError(Exception):
    """An object store is unreachable, a path is missing, or a write failed (one-line message)."""


class ObjectFrozen(StorageError):
    """An object in GLACIER or DEEP_ARCHIVE was read before a restore request made it readable."""


class StorageUnavailable(StorageError):
    """Transient errors outlasted every retry: the store is down or unreachable (one line). A rerun
    of the same command, once the store is back, finishes the job."""


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits between d/2 and d, d = min(cap, base·2^n)."""

    attempts: int = 8
    base_seconds: float = 0.5
    cap_seconds: float = 15.0

    @classmethod
    def default(cls) -> RetryPolicy:
        """The policy, with `VIDARC_STORAGE_RETRIES` / `VIDARC_STORAGE_BACKOFF_S` overriding attempts and
        base (tests shorten the waits; operators may lengthen them for flaky stores)."""
        attempts = int(os.environ.get("VIDARC_STORAGE_RETRIES") or cls.attempts)
        base = float(os.environ.get("VIDARC_STORAGE_BACKOFF_S") or cls.base_seconds)
        return cls(max(1, attempts), max(0.0, base), max(base, cls.cap_seconds))

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = min(self.cap_seconds, self.base_seconds * 2**attempt)
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


_JITTER = random.Random()
_TRANSIENT_ERRNOS = {
    errno.EBUSY, errno.EAGAIN, errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT,
    errno.EPIPE, errno.ENETUNREACH, errno.EHOSTUNREACH, getattr(errno, "EREMOTEIO", errno.EIO),
}  # fmt: skip
_TRANSIENT_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "ServiceUnavailable",
                    "InternalError", "TooManyRequests", "RequestLimitExceeded"}  # fmt: skip


def is_transient(exc: BaseException) -> bool:
    """Whether retrying may help: connection trouble, timeouts, 5xx, throttling (not 403/404/bad input)."""
    for error in _chain(exc):
        if isinstance(error, StorageUnavailable):
            return True
        if isinstance(error, (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError)):
            return False
        status, code = _http_status(error)
        if status is not None:
            return status >= 500 or status == 429 or code in _TRANSIENT_CODES
        if isinstance(error, (ConnectionError, TimeoutError)):
            return True
        if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
            return True
        module = type(error).__module__.split(".")[0]
        if module in ("botocore", "aiohttp", "urllib3") and _looks_like_connection(error):
            return True
        if type(error).__name__ in ("FSTimeoutError", "IncompleteRead", "ClientPayloadError"):
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__  # explicit causes only: a bug raised inside a handler is not a fault


def _http_status(error: BaseException) -> tuple[int | None, str | None]:
    response = getattr(error, "response", None)
    if not isinstance(response, dict):
        return None, None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    return (int(status) if status else None), code


_CONNECTION_ERRORS = {
    "EndpointConnectionError", "ConnectionClosedError", "ReadTimeoutError", "ConnectTimeoutError",
    "HTTPClientError", "ResponseStreamingError", "IncompleteReadError", "ClientConnectionError",
    "ServerDisconnectedError", "ClientPayloadError", "ProtocolError", "ProxyConnectionError",
}  # fmt: skip


def _looks_like_connection(error: BaseException) -> bool:
    return any(cls.__name__ in _CONNECTION_ERRORS for cls in type(error).__mro__)


def retrying(what: str, operation: Callable[[], T], *, policy: RetryPolicy | None = None) -> T:
    """Run `operation`, retrying transient storage errors with backoff (`what` names the object).

    Permanent errors (access denied, not found, bad input) are raised as they are, at once;
    transient ones that outlast the policy become `StorageUnavailable` with a one-line reason.
    """
    policy = policy or RetryPolicy.default()
    for attempt in range(policy.attempts):
        try:
            return operation()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts - 1:
                raise StorageUnavailable(
                    f"{what}: storage unreachable after {policy.attempts} attempts ({_summary(exc)})"
                ) from None
            time.sleep(policy.delay(attempt, _JITTER))
    raise AssertionError("unreachable")  # pragma: no cover


def is_frozen(exc: BaseException) -> bool:
    """Whether `exc` is S3 refusing a GET of an object in cold storage (InvalidObjectState)."""
    return any(isinstance(e, ObjectFrozen) or _http_status(e)[1] == "InvalidObjectState" for e in _chain(exc))


def frozen_message(uri: str) -> str:
    return (
        f"{uri}: in cold storage (GLACIER or DEEP_ARCHIVE) and not thawed; "
        "`vidarc thaw OUT VIDEO` asks for a readable copy, `vidarc thaw OUT --status` says when it is ready"
    )


def describe(exc: BaseException, uri: str) -> str:
    """One line for a storage error: frozen, access denied, missing, or unreachable (with the cause)."""
    if isinstance(exc, StorageError):
        return redact(str(exc).splitlines()[0]) if str(exc).strip() else f"{uri}: storage error"
    if is_frozen(exc):  # s3fs words it as a PermissionError: it is not one
        return frozen_message(uri)
    for error in _chain(exc):
        status, _ = _http_status(error)
        if isinstance(error, PermissionError) or status == 403:
            return f"{uri}: access denied (403: the credentials lack permission for this bucket or key)"
        if isinstance(error, FileNotFoundError) or status == 404:
            return f"{uri}: no such object, prefix or bucket (404)"
    if is_transient(exc):
        return f"{uri}: storage unreachable ({_summary(exc)})"
    return f"{uri}: storage error ({_summary(exc)})"


def _summary(exc: BaseException) -> str:
    text = redact(str(exc)).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def filesystem(uri: str, *, endpoint_url: str | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path inside it) for a local path or fsspec URL.

    `endpoint_url` selects an S3-compatible server; without it, AWS_ENDPOINT_URL (if set) or AWS applies.
    """
    options: dict[str, Any] = {}
    if uri.startswith(("s3://", "s3a://")):
        endpoint = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            options["client_kwargs"] = {"endpoint_url": endpoint}
        # one attempt per botocore call: `retrying` owns the backoff (see the module docstring).
        # Checksums only where asked: archive objects carry their SHA-256 (`put_checked`); botocore's
        # default CRC32 on every other request is refused by some S3-compatible stores.
        options["config_kwargs"] = {
            "connect_timeout": 5,
            "read_timeout": 60,
            "retries": {"total_max_attempts": 1},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
    try:
        fs, path = fsspec.core.url_to_fs(uri, **options)
    except Exception as exc:
        raise StorageError(f"{uri}: cannot open ({type(exc).__name__}: {redact(str(exc))})") from None
    if is_s3(fs):
        _quiet_dropped_writes()
    if isinstance(fs, LocalFileSystem):
        path = os.path.abspath(path)
    return fs, path.rstrip("/") or "/"


_QUIETED: list[Any] = []


def _quiet_dropped_writes() -> None:
    """When a store drops a connection mid-request, aiohttp's task writing the request body fails
    too, and asyncio prints that task's traceback ("Task exception was never retrieved") from fsspec's
    IO loop, on stderr, whenever it is collected. The request itself already failed and was retried
    or worded (`retrying`, `describe`), so such a connection error is not printed; any other error
    in that loop is, as before."""
    import fsspec.asyn

    loop = fsspec.asyn.get_loop()
    if loop in _QUIETED:
        return

    def handler(loop: Any, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if error is not None and (
            isinstance(error, ConnectionError)
            or _looks_like_connection(error)
            or (isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS)
        ):
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)
    _QUIETED.append(loop)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return isinstance(fs, LocalFileSystem)


def join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URI a user would type for `path` (s3://bucket/key, or an absolute local path)."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write a whole object at once, atomically, retrying transient faults."""
    write_object(fs, path, lambda handle: handle.write(data))


def write_object(
    fs: fsspec.AbstractFileSystem,
    path: str,
    writer: Callable[[BinaryIO], T],
    *,
    open_options: dict[str, Any] | None = None,
) -> T:
    """`writer(handle)` into an atomic write of `path`, the whole write retried on transient faults
    (so `writer` must be repeatable: it is called once per attempt). `open_options`: extra S3 request
    parameters (storage class, checksum algorithm)."""

    def attempt() -> T:
        with open_atomic(fs, path, **(open_options or {})) as handle:
            return writer(handle)

    return retrying(full_uri(fs, path), attempt)


@dataclasses.dataclass(frozen=True)
class StoredObject:
    """What the store holds after `put_checked`: the bytes' sha256 (hex), the store's own checksum as
    it reports it ("SHA256:<base64>" for a whole-object checksum, "SHA256:<base64>-<parts>" for a
    multipart upload's checksum of part checksums; None on a local folder or a store that keeps none)
    and the storage class (None on a local folder)."""

    size: int
    sha256: str
    checksum: str | None
    storage_class: str | None


#: One PUT up to S3's single-request limit; bigger objects go as a multipart upload.
_SINGLE_PUT_LIMIT = 5 * 2**30


def put_checked(
    fs: fsspec.AbstractFileSystem, path: str, data: bytes, *, storage_class: str | None = None
) -> StoredObject:
    """Write `data` atomically with an end-to-end checksum, retrying transient faults.

    On S3 the object is sent with its SHA-256 (`ChecksumSHA256`): the store refuses a body that does
    not match, and keeps the checksum, so a later fixity check is a HEAD, not a download
    (`vidarc verify --scan checksums`). `storage_class` (an S3 class) goes with the PUT; on a local
    folder only STANDARD (or None) makes sense. The returned record is what the manifest keeps.
    """
    digest = hashlib.sha256(data).digest()
    if not is_s3(fs):
        if storage_class not in (None, "STANDARD"):
            raise StorageError(f"{full_uri(fs, path)}: storage class {storage_class} needs an s3:// archive")
        write_bytes(fs, path, data)
        return StoredObject(len(data), digest.hex(), None, None)
    checksums = _store_name(fs) not in _NO_CHECKSUMS
    extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if checksums else {}
    if storage_class:
        extra["StorageClass"] = storage_class
    bucket, key, _ = fs.split_path(path)
    if len(data) <= _SINGLE_PUT_LIMIT:
        b64 = base64.b64encode(digest).decode()
        sent = {"ChecksumSHA256": b64, **extra} if checksums else extra

        def put() -> dict[str, Any]:
            return fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **sent)

        try:
            response = retrying(full_uri(fs, path), put)
        except Exception as exc:
            if not (checksums and _checksums_refused(exc)):
                raise
            # an S3-compatible store without additional checksums: the object goes without one (its
            # fixity is then its size, and the sha256 the manifest records), and so do the next ones
            _NO_CHECKSUMS.add(_store_name(fs))
            return put_checked(fs, path, data, storage_class=storage_class)
        fs.invalidate_cache(path)
        stored = response.get("ChecksumSHA256")
        if stored is not None and stored != b64:
            raise StorageError(f"{full_uri(fs, path)}: the store's SHA-256 differs from the bytes sent")
        checksum = f"SHA256:{stored}" if stored else None
    else:
        parts: list[dict[str, Any]] = []

        def upload(handle: BinaryIO) -> None:
            handle.write(data)
            handle.flush()
            parts[:] = list(getattr(handle, "parts", None) or [])

        with_parts = dict(extra)
        write_object(fs, path, lambda handle: upload(handle), open_options=with_parts)
        sums = [p.get("ChecksumSHA256") for p in parts]
        checksum = None
        if sums and all(sums):
            joined = b"".join(base64.b64decode(s) for s in sums)
            checksum = f"SHA256:{base64.b64encode(hashlib.sha256(joined).digest()).decode()}-{len(sums)}"
    return StoredObject(len(data), digest.hex(), checksum, storage_class or "STANDARD")


#: S3-compatible stores (by endpoint) that refused an additional checksum in this process.
_NO_CHECKSUMS: set[str] = set()


def _store_name(fs: fsspec.AbstractFileSystem) -> str:
    kwargs = getattr(fs, "client_kwargs", None) or {}
    return str(kwargs.get("endpoint_url") or "aws")


def _checksums_refused(exc: BaseException) -> bool:
    """Whether a PUT failed because the store does not take `x-amz-checksum-*` (400 or 501 saying so)."""
    for error in _chain(exc):
        status, code = _http_status(error)
        if status in (400, 501) and (code == "NotImplemented" or "checksum" in str(error).lower()):
            return True
    return False


def head_object(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any] | None:
    """What the store says of one object without reading it (one HEAD on S3, with its checksum and
    restore state; a stat on a local folder), None when it does not exist."""
    uri = full_uri(fs, path)
    if not is_s3(fs):
        try:
            return {"ContentLength": os.path.getsize(path)}
        except FileNotFoundError:
            return None
    bucket, key, _ = fs.split_path(path)

    def attempt() -> dict[str, Any] | None:
        try:
            return dict(fs.call_s3("head_object", Bucket=bucket, Key=key, ChecksumMode="ENABLED"))
        except FileNotFoundError:
            return None

    return retrying(uri, attempt)


def store_checksum(head: dict[str, Any]) -> str | None:
    """A HEAD's SHA-256 in the form `StoredObject.checksum` records (None when the store has none)."""
    value = head.get("ChecksumSHA256")
    return f"SHA256:{value}" if value else None


def same_checksum(recorded: str, reported: str) -> bool:
    """Whether two recorded checksums name the same bytes. A multipart checksum's part count
    ("-N") is compared only when both sides carry it (some stores leave it out of a HEAD)."""
    left, right = recorded.split("-")[0], reported.split("-")[0]
    if left != right:
        return False
    parts = [c.split("-")[1] for c in (recorded, reported) if "-" in c]
    return len(parts) < 2 or parts[0] == parts[1]


def read_bytes(fs: fsspec.AbstractFileSystem, path: str, *, small: bool = False) -> bytes:
    """A whole object, retrying transient faults (FileNotFoundError and PermissionError at once).

    `small`: an object known to be small (a marker, an index entry, a manifest part) is fetched with
    one GET; s3fs otherwise asks for its size first (a HEAD) to split big objects into parallel
    ranged reads, doubling the requests of a read that touches many small objects."""
    if small and is_s3(fs):
        return retrying(full_uri(fs, path), lambda: fs.cat_file(path, max_concurrency=1))
    return retrying(full_uri(fs, path), lambda: fs.cat_file(path))


def is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Whether `fs` is s3fs's, without importing s3fs when nothing has: importing it (and aiobotocore)
    takes about 2 s, which a read of a local folder must not pay, and no S3 filesystem can exist
    before its module was imported."""
    module = sys.modules.get("s3fs")
    return module is not None and isinstance(fs, module.S3FileSystem)


def remove(fs: fsspec.AbstractFileSystem, path: str, *, missing_ok: bool = True) -> None:
    """Delete one object, retrying transient faults."""

    def attempt() -> None:
        try:
            fs.rm_file(path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    retrying(full_uri(fs, path), attempt)


def remove_paths(fs: fsspec.AbstractFileSystem, paths: list[str]) -> None:
    """Delete many objects (S3: 1,000 keys a request); one already gone is no error."""
    for start in range(0, len(paths), 1000):
        chunk = paths[start : start + 1000]
        try:
            fs.rm(chunk)
        except FileNotFoundError:
            for path in chunk:
                if fs.exists(path):
                    fs.rm_file(path)


def list_names(fs: fsspec.AbstractFileSystem, folder: str) -> list[str]:
    """Names directly under `folder` (empty when it does not exist), retrying transient faults."""

    def attempt() -> list[str]:
        try:
            return list(fs.ls(folder, detail=False, refresh=True))
        except FileNotFoundError:
            return []
        except TypeError:  # filesystems without `refresh`
            try:
                return list(fs.ls(folder, detail=False))
            except FileNotFoundError:
                return []

    return retrying(full_uri(fs, folder), attempt)


@contextlib.contextmanager
def open_atomic(fs: fsspec.AbstractFileSystem, path: str, **s3_options: Any) -> Iterator[BinaryIO]:
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
    handle = fs.open(path, "wb", **s3_options)
    try:
        yield handle
    except BaseException:
        with contextlib.suppress(Exception):
            handle.discard()  # abort the multipart upload: nothing appears under `path`
        handle.closed = True  # so garbage collection does not try to complete the aborted upload
        raise
    else:
        try:
            handle.close()
        except BaseException:  # the upload failed: abandon it, so no late retry completes it unseen
            with contextlib.suppress(Exception):
                handle.discard()
            handle.closed = True
            raise


def range_reader(fs: fsspec.AbstractFileSystem, path: str) -> RangeReader:
    """read(offset, length) over one object, as ranged GETs (fresh reads, no caching layer)."""

    uri = full_uri(fs, path)

    def read(offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        return retrying(uri, lambda: fs.cat_file(path, start=offset, end=offset + length))

    return read


class RetryingFile:
    """A read-only file over an fsspec handle whose reads are retried on transient faults (re-seeking
    to where the failed read started), for demuxers that stream a remote object."""

    def __init__(self, handle: BinaryIO, uri: str) -> None:
        self._handle, self._uri = handle, uri

    def read(self, size: int = -1) -> bytes:
        position = self._handle.tell()

        def attempt() -> bytes:
            self._handle.seek(position)
            return self._handle.read(size)

        return retrying(self._uri, attempt)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._handle.close()

    @property
    def size(self) -> int:
        return self._handle.size


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
        raise StorageError(describe(exc, uri)) from None
    if must_exist and not exists:
        raise StorageError(f"{uri}: no such file or prefix")


def check_writable(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> None:
    """Fail fast, writing nothing, when OUT cannot be a folder we write into: an existing file, or a
    local folder (or its nearest existing parent) we may not write to."""
    try:
        if fs.isfile(path):
            raise StorageError(f"{uri}: is an existing file, not a folder or prefix")
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(describe(exc, uri)) from None
    if not is_local(fs):
        return  # S3 rights show on the first write (config.json), before any video work
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing) or "/"
    if not os.path.isdir(existing):
        raise StorageError(f"{uri}: {existing} is a file, so OUT cannot be created under it")
    try:  # os.access is not enough (root, read-only mounts): try a temporary file, removed at once
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise StorageError(f"{uri}: not writable ({existing}: {exc.strerror or exc})") from None


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
