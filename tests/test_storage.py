"""Object storage through fsspec: atomic writes, ranged reads, reachability checks and redaction,
against the local filesystem and a real moto S3 server."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.store.storage import (
    StorageError,
    check_reachable,
    filesystem,
    full_uri,
    open_atomic,
    range_reader,
    redact,
    write_bytes,
)


def test_local_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    fs, root = filesystem(str(tmp_path))
    target = f"{root}/videos/a.vdrc"
    with pytest.raises(RuntimeError), open_atomic(fs, target) as handle:
        handle.write(b"half of an object")
        raise RuntimeError("writer killed")
    assert list((tmp_path / "videos").iterdir()) == []
    write_bytes(fs, target, b"whole object")
    assert (tmp_path / "videos" / "a.vdrc").read_bytes() == b"whole object"
    assert [p.name for p in (tmp_path / "videos").iterdir()] == ["a.vdrc"]


def test_s3_atomic_write_and_ranged_reads(s3_endpoint: str, s3_bucket: str) -> None:
    fs, root = filesystem(f"s3://{s3_bucket}/archive", endpoint_url=s3_endpoint)
    path = f"{root}/videos/b.vdrc"
    with pytest.raises(RuntimeError), open_atomic(fs, path) as handle:
        handle.write(b"x" * 1000)
        raise RuntimeError("writer killed")
    assert not fs.exists(path)
    data = bytes(range(256)) * 64
    write_bytes(fs, path, data)
    read = range_reader(fs, path)
    assert read(1000, 300) == data[1000:1300]
    assert read(len(data) - 5, 5) == data[-5:]
    assert read(0, 0) == b""
    assert full_uri(fs, path) == f"s3://{s3_bucket}/archive/videos/b.vdrc"


def test_missing_bucket_and_unreachable_endpoint_are_one_line_errors(
    s3_endpoint: str, fake_credentials: tuple[str, str]
) -> None:
    key_id, secret = fake_credentials
    fs, root = filesystem("s3://no-such-bucket-vidarc/x", endpoint_url=s3_endpoint)
    with pytest.raises(StorageError, match="bucket 'no-such-bucket-vidarc' does not exist"):
        check_reachable(fs, root, "s3://no-such-bucket-vidarc/x", must_exist=False)
    fs, root = filesystem("s3://bucket/x", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(StorageError) as info:
        check_reachable(fs, root, "s3://bucket/x", must_exist=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("s3://bucket/x: ")
    assert key_id not in message and secret not in message


def test_missing_local_source_is_refused(tmp_path: Path) -> None:
    fs, root = filesystem(str(tmp_path / "nope"))
    with pytest.raises(StorageError, match="no such file or prefix"):
        check_reachable(fs, root, str(tmp_path / "nope"), must_exist=True)


def test_redact_removes_keys_secrets_and_signatures(fake_credentials: tuple[str, str]) -> None:
    key_id, secret = fake_credentials
    text = (
        f"key {key_id} secret={secret} also {secret} "
        "https://b.s3/x?X-Amz-Credential=AKIAABCDEFGHIJKLMNOP%2F2024&X-Amz-Signature=deadbeef"
    )
    cleaned = redact(text)
    for leaked in (key_id, secret, "deadbeef", "AKIAABCDEFGHIJKLMNOP"):
        assert leaked not in cleaned
    assert cleaned.startswith("key ")
