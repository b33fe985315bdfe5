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
