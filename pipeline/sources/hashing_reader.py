"""sha256 of a source object computed while the demuxer reads it, so the source is read once, not twice.

The archive header records each source's sha256 (an audit can prove which bytes an archive came from).
Hashing it in a separate pass reads every source object twice; on an S3 bucket that doubles the GETs
and the transfer. The probe already reads the whole object (it demuxes every packet to count frames
exactly), so `HashingReader` sits between PyAV and the fsspec file and feeds sha256 with the bytes it
passes through, as long as they arrive in order. Demuxers do seek (an MP4 with its index at the end is
read header, then index, then media), so only the contiguous prefix from byte 0 is hashed as it goes;
`finish()` reads whatever the demuxer skipped or has not reached yet, typically the trailing index (a
few kB), and returns the digest of the whole object.
"""

from __future__ import annotations

import hashlib
import io
from typing import BinaryIO

_FINISH_BLOCK = 8 << 20


class HashingReader(io.RawIOBase):
    """A read-only, seekable file over `handle` that hashes the bytes it serves from offset 0 onwards."""

    def __init__(self, handle: BinaryIO) -> None:
        super().__init__()
        self._handle = handle
        self._position = handle.tell()
        self._digest = hashlib.sha256()
        self._hashed = 0  # bytes [0, _hashed) are in the digest
        self.bytes_read = 0  # everything served to the reader, for measurements and tests

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._position = self._handle.seek(offset, whence)
        return self._position

    def read(self, size: int = -1) -> bytes:
        data = self._handle.read(size)
        self._absorb(self._position, data)
        self._position += len(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer) -> int:  # io.RawIOBase protocol
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def _absorb(self, start: int, data: bytes) -> None:
        end = start + len(data)
        if start <= self._hashed < end:
            self._digest.update(memoryview(data)[self._hashed - start :])
            self._hashed = end

    def finish(self) -> str:
        """Read what the hash is still missing (to the end of the object); the whole object's sha256."""
        self._handle.seek(self._hashed)
        for block in iter(lambda: self._handle.read(_FINISH_BLOCK), b""):
            self.bytes_read += len(block)
            self._absorb(self._hashed, block)
        self._handle.seek(self._position)
        return self._digest.hexdigest()
