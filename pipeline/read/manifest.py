"""An archive's Parquet parts (the manifest, one part per video; verify results; classic-reference rows),
read one part at a time so that a damaged part costs only its own rows: the one reader ls, audit,
restore and verify share.

Parts are written with Parquet page checksums (`parquet_bytes`) and read with them verified. Page
checksums do not cover the Parquet footer, where a flipped byte can silently turn a column's values into
nulls, so each part also carries a CRC32C of its column names and of every column's values (canonical
JSON) in its key-value metadata (`COLUMN_CHECKSUMS_KEY`), recomputed on read for the columns a reader asks for (verify reads them
all). Each part is fetched whole (transient storage faults retried, see `storage.retrying`) and parsed on
its own; a part that does not parse — truncated, a page or column checksum mismatch, not Parquet at all, a
column whose values do not fit the schema's type, a value no reader can represent — is *damaged*: its rows
are left out and it is reported by name (`DamagedPart`), while every other part reads normally. Storage
errors are not damage: they raise (`PartsError`, one line). Parts of earlier releases have neither
checksum and read as before.

The schema is imposed on read: a column a part lacks (it was written before the column existed)
reads as null, so every table has exactly the requested columns with the schema's types. Parts are
fetched a few at a time in threads (object-store latency) and yielded in name order; memory holds
a few parts, never the whole manifest.
"""

from __future__ import annotations

import concurrent.futures
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import pyarrow as pa

from pipeline.format.manifest_part import (  # the part format, re-exported: callers import it from here too
    COLUMN_CHECKSUMS_KEY,
    SCHEMAS,
    WRITE_OPTIONS,
    DamagedPart,
    PartsError,
    column_checksum,
    parquet_bytes,
    parse_part,
    referenced_columns,
    statistics_columns,
)
from pipeline.store.storage import describe, filesystem, full_uri, join, read_bytes, retrying

__all__ = [
    "COLUMN_CHECKSUMS_KEY", "PREFETCH", "SCHEMAS", "WRITE_OPTIONS", "ArchiveParts", "DamagedPart", "PartsError",
    "column_checksum", "parquet_bytes", "parse_part", "referenced_columns", "statistics_columns",
]  # fmt: skip

#: Parts fetched at once (object-store latency), in threads.
PREFETCH = 8


#: Uncompacted parts from which a whole-archive read says that `vidarc compact` would speed it up.
UNCOMPACTED_NOTE = 10_000


class UncompactedManifest(UserWarning):
    """A whole-archive read met many uncompacted manifest parts (one line, with the fix)."""


class ArchiveParts:
    """The parts under `out/<folder>/` (folder: "manifest", "verify" or "reference"), listed once.

    The manifest is resolved by `pipeline.read.manifest_layout` (per-video parts, committed packs and
    compacted files, each row exactly once); verify and reference results are plain parts (the
    reference's `compacted-*` files too, read first: name order; a reader keys their rows, so a row in a
    compacted file and in a part counts once, the part's copy last). `tables(columns, filter)` yields
    readable tables; damaged files are skipped and collected in `damaged`. Raises PartsError when the
    folder cannot be listed or a file fetched.
    """

    def __init__(self, out: str, folder: str = "manifest", *, endpoint_url: str | None = None) -> None:
        if folder not in SCHEMAS:
            raise ValueError(f"folder must be one of {sorted(SCHEMAS)}, got {folder!r}")
        self.out, self.folder, self.schema = out, folder, SCHEMAS[folder]
        self.fs, self.root = filesystem(out, endpoint_url=endpoint_url)
        self.damaged: list[DamagedPart] = []
        self._damaged_seen: set[str] = set()
        self.plan: Any = None
        path = join(self.root, folder)
        try:
            if folder == "manifest":
                from pipeline.read.manifest_layout import plan_manifest

                self.plan = retrying(full_uri(self.fs, path), lambda: plan_manifest(self.fs, self.root))
                found = [*self.plan.paths, *(p for p, _ in self.plan.damaged)]  # damaged: named on read
            else:
                found = retrying(full_uri(self.fs, path), lambda: self._find(path))
        except Exception as exc:
            raise PartsError(
                f"{out}: cannot list {folder}/ ({describe(exc, full_uri(self.fs, path))})"
            ) from None
        self.paths = sorted(
            p for p in found if p.endswith(".parquet") and ".tmp-" not in p.rsplit("/", 1)[-1]
        )
        uncompacted = len(self.plan.parts) if self.plan is not None else 0
        if uncompacted >= UNCOMPACTED_NOTE:
            warnings.warn(
                f"{out}: {uncompacted} manifest parts are not compacted, so this read opens each one; "
                f"`vidarc compact {out}` merges them into a few key-sorted files (an archive run does it "
                "at its end unless --no-compact)",
                UncompactedManifest,
                stacklevel=2,
            )

    def _find(self, path: str) -> list[str]:
        try:
            return list(self.fs.find(path)) if self.fs.exists(path) else []
        except FileNotFoundError:
            return []

    def __len__(self) -> int:
        return len(self.paths)

    def uri(self, path: str) -> str:
        return full_uri(self.fs, path)

    def tables(
        self, columns: Sequence[str] | None = None, filter_expression: Any = None, *, batch_rows: int = 65536
    ) -> Iterator[pa.Table]:
        """One table per readable part, in name order (`columns` default: all of the schema); compacted
        files `batch_rows` rows at a time."""
        wanted = list(columns) if columns is not None else self.schema.names
        read_columns = wanted
        if filter_expression is not None:  # projection: the columns asked for and those the filter reads
            read_columns = list(dict.fromkeys([*wanted, *referenced_columns(filter_expression, self.schema)]))
        if self.plan is not None:
            yield from self._plan_tables(wanted, read_columns, filter_expression, batch_rows)
            return
        gone: list[str] = []
        yield from self._path_tables(self.paths, wanted, read_columns, filter_expression, gone)
        if gone and self.folder == "reference":
            yield from self._path_tables(self._appeared(), wanted, read_columns, filter_expression, [])

    def _appeared(self) -> list[str]:
        """The reference's compacted files listed now but not when this reader listed: a part gone when
        fetched was absorbed by one of them (`pipeline.tools.compact_reference` deletes parts only once
        their compacted file is in place, and never deletes a compacted file), so reading them after the
        parts loses no row. Their rows come after the parts' (a reader keeps the last copy of a row):
        the same values, but for a part rewritten after that compaction *during* this read."""
        path = join(self.root, self.folder)
        try:
            self.fs.invalidate_cache(path)  # s3fs keeps listings: this one must be made now
            found = retrying(full_uri(self.fs, path), lambda: self._find(path))
        except Exception as exc:
            raise PartsError(
                f"{self.out}: cannot list {self.folder}/ ({describe(exc, self.uri(path))})"
            ) from None
        from pipeline.read.manifest_layout import file_kind

        listed = set(self.paths)
        return sorted(p for p in found if p not in listed and file_kind(p.rsplit("/", 1)[-1]) == "compacted")

    def _path_tables(
        self,
        paths: list[str],
        wanted: list[str],
        read_columns: list[str],
        filter_expression: Any,
        gone: list[str],
    ) -> Iterator[pa.Table]:
        """`paths`' readable tables in order; the paths removed since the listing go to `gone`."""
        with concurrent.futures.ThreadPoolExecutor(max_workers=PREFETCH) as pool:
            pending: list[tuple[str, concurrent.futures.Future[bytes]]] = []
            queue = iter(paths)
            for path in queue:
                pending.append((path, pool.submit(read_bytes, self.fs, path)))
                if len(pending) >= PREFETCH:
                    break
            while pending:
                path, future = pending.pop(0)
                following = next(queue, None)
                if following is not None:
                    pending.append((following, pool.submit(read_bytes, self.fs, following)))
                table = self._parse(path, future, read_columns, gone)
                if table is None:
                    continue
                if filter_expression is not None:
                    table = table.filter(filter_expression).select(wanted)
                yield table

    def _plan_tables(
        self, wanted: list[str], read_columns: list[str], filter_expression: Any, batch_rows: int
    ) -> Iterator[pa.Table]:
        from pipeline.read.manifest_layout import iter_tables

        try:
            for table in iter_tables(
                self.plan,
                read_columns,
                batch_rows,
                on_damage=self._damage,
                filter_expression=filter_expression,
            ):
                if filter_expression is not None:
                    table = table.filter(filter_expression).select(wanted)
                yield table
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise  # a filter the columns cannot evaluate: the caller's error, not damage
        except Exception as exc:
            raise PartsError(describe(exc, f"{self.out}/manifest")) from None

    def _damage(self, path: str, reason: str) -> None:
        if path not in self._damaged_seen:
            self._damaged_seen.add(path)
            members: tuple[str, ...] = ()
            if self.plan is not None:
                from pipeline.read.manifest_layout import pack_id

                ident = pack_id(path.rsplit("/", 1)[-1])
                members = tuple(self.plan.pack_members.get(ident, ())) if ident else ()
            self.damaged.append(DamagedPart(self.uri(path), self.folder, reason, members))

    def _parse(
        self, path: str, future: concurrent.futures.Future[bytes], columns: Sequence[str], gone: list[str]
    ) -> pa.Table | None:
        try:
            data = future.result()
        except FileNotFoundError:  # removed since the listing (a rerun replacing a failed video's part,
            gone.append(path)  # a reference part absorbed by a compaction)
            return None
        except Exception as exc:
            raise PartsError(describe(exc, self.uri(path))) from None
        try:
            return parse_part(data, self.schema, columns)
        except ValueError as exc:
            self._damage(path, str(exc))
            return None

    def read(self, columns: Sequence[str] | None = None, filter_expression: Any = None) -> pa.Table:
        """Every readable part's rows in one table (for the small column sets ls/restore/verify use)."""
        wanted = list(columns) if columns is not None else self.schema.names
        tables = list(self.tables(wanted, filter_expression))
        if not tables:
            return pa.Table.from_arrays(
                [pa.array([], type=self.schema.field(n).type) for n in wanted],
                schema=pa.schema([self.schema.field(n) for n in wanted]),
            )
        return pa.concat_tables(tables)

    def damaged_keys(self) -> dict[str, DamagedPart]:
        """video_key -> its damaged manifest part (a pack's part: each of its members)."""
        return {key: d for d in self.damaged for key in d.video_keys}
