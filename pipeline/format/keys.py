"""`video_key`: the stable name of a source video inside an archive.

The key is a readable slug of the source's path relative to SRC plus a short hash of (source URI,
size). It does not depend on mtime or the ETag (an ETag changes with the upload method, a copy or a
re-upload of identical bytes), so rerunning the same command names every object the same way and a
retry overwrites instead of duplicating. Two sources with the same slug (e.g. `a/b.mp4` and `a_b.mp4`)
still get different keys through the hash.
"""

from __future__ import annotations

import hashlib
import re

SLUG_MAX = 80
HASH_CHARS = 12


def slugify(relative_path: str) -> str:
    """Lower-case ASCII letters, digits, '-', '.', '_' only; path separators become '_'."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", relative_path.strip("/")).strip("._-").lower()
    slug = re.sub(r"\.+", ".", slug)
    if len(slug) > SLUG_MAX:
        slug = slug[-SLUG_MAX:].lstrip("._-")
    return slug or "video"


def video_key(source_uri: str, size: int, relative_path: str) -> str:
    """`<slug>-<hash12>`; deterministic in (source URI, size)."""
    digest = hashlib.sha256(f"{source_uri}\0{int(size)}".encode()).hexdigest()[:HASH_CHARS]
    return f"{slugify(relative_path)}-{digest}"


def list_video_key(source_uri: str, size: int | None) -> str:
    """The key of a video named by an input list: like `video_key`, with the URI's path (no scheme) as
    the slug; without a size column, the URI alone decides the hash."""
    relative = source_uri.split("://", 1)[-1]
    if size is not None:
        return video_key(source_uri, size, relative)
    digest = hashlib.sha256(f"{source_uri}\0".encode()).hexdigest()[:HASH_CHARS]
    return f"{slugify(relative)}-{digest}"


def shard_of(key: str, shards: int) -> int:
    """Which of `shards` independent jobs owns video `key` (uniform, stable across releases)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"vidarc-shard").digest()
    return int.from_bytes(digest, "little") % shards


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' (0 <= i < n) -> (i, n); ValueError with a one-line reason otherwise."""
    head, sep, tail = text.partition("/")
    try:
        if not sep:
            raise ValueError
        index, count = int(head), int(tail)
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"--shard {text!r}: need n >= 1 and 0 <= i < n")
    return index, count
