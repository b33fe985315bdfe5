"""Which manifest files hold which rows: per-video parts, pack parts and compacted files, resolved so that
every reader sees each row exactly once — before, during and after a compaction (`pipeline.tools.compact`).

Files under `OUT/manifest/`:

    part-<video_key>.parquet      one video's rows (written by its commit, or its failed row)
    pack-<pack_id>.parquet        every video of a pack; counts only once `markers/packs/<pack_id>.json`
                                  exists (the pack's commit writes it last)
    compacted-<stamp>.parquet     many parts merged by `vidarc compact`: their rows plus two columns,
                                  `source_part` (the part's file name) and `source_sha256` (of its bytes),
                                  and in its key-value metadata `vidarc.compaction`: {"replaces":
                                  {older compacted file name: [video keys whose rows this file supersedes]},
                                  "merges": [compacted files whose rows it holds, merged into it]}

The rules a reader applies (`plan_manifest`):
1. A part whose name *and* bytes (sha256) are recorded by a compacted file is covered: compaction wrote
   the compacted file and had not yet deleted the part (it deletes parts only after the compacted
   file is in place; a crash in between leaves such parts). It is skipped.
2. A part not covered is read, and the rows of its videos in every compacted file are dropped: the
   part was written after the compaction (a video redone after its done marker was deleted).
3. A compacted file's rows of the keys a later compacted file `replaces` are dropped.
4. A reader that listed a part which is gone when it reads it lost a race with a compaction: it
   re-lists and reads that part's rows from the new compacted file (`ManifestPlan.recover`).
5. A compacted file another readable compacted file `merges` is superseded: its rows (less those
   readers dropped from it) are in the merged file, so it is not read. Compaction deletes it once the
   merged file is older than a grace period (`pipeline.tools.compact_merge`), so a reader that planned with
   it before the merge still finds it.
Compaction is one writer at a time per archive (it takes `manifest/_compaction.lock`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import fsspec

from pipeline.store.listing import iter_objects
from pipeline.store.storage import join, read_bytes

PART_PREFIX = "part-"
PACK_PREFIX = "pack-"
COMPACTED_PREFIX = "compacted-"
SUFFIX = ".parquet"
SOURCE_PART = "source_part"
SOURCE_SHA256 = "source_sha256"
COMPACTION_KEY = b"vidarc.compaction"


def file_kind(name: str) -> str | None:
    """'part', 'pack' or 'compacted' for a manifest file name, None for anything else."""
    if not name.endswith(SUFFIX) or ".tmp-" in name:
        return None
    for prefix, kind in ((PART_PREFIX, "part"), (PACK_PREFIX, "pack"), (COMPACTED_PREFIX, "compacted")):
        if name.startswith(prefix):
            return kind
    return "part"  # any other *.parquet: an earlier release's part, read as one


def part_key(name: str) -> str | None:
    """The video key of `part-<key>.parquet`."""
    if name.startswith(PART_PREFIX) and name.endswith(SUFFIX):
        return name[len(PART_PREFIX) : -len(SUFFIX)]
    return None


def pack_id(name: str) -> str | None:
    if name.startswith(PACK_PREFIX) and name.endswith(SUFFIX):
        return name[len(PACK_PREFIX) : -len(SUFFIX)]
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclasses.dataclass
class CompactedFile:
    path: str
    size: int
    #: video keys whose rows here are superseded (by later compacted files or by newer parts)
    drop_keys: set[str] = dataclasses.field(default_factory=set)
    #: from its metadata: older compacted file name -> keys it replaces there
    replaces: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: from its metadata: the compacted files merged into it (rule 5)
    merges: list[str] = dataclasses.field(default_factory=list)
    #: rows in the file (its footer), before `drop_keys`: an upper bound of what it contributes
    num_rows: int = 0

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


@dataclasses.dataclass
class ManifestPlan:
    """What to read: `parts` whole, `compacted` files minus their `drop_keys`."""

    fs: Any
    root: str
    parts: list[tuple[str, int]]  # (path, size) of parts and committed pack parts to read
    compacted: list[CompactedFile]
    covered: list[str]  # parts already inside a compacted file (skipped; compaction deletes them)
    orphan_packs: list[str]  # pack parts without a pack marker (a commit that did not finish)
    pack_members: dict[str, list[str]]  # pack id -> its video keys (committed packs)
    #: part path -> keys to leave out of it: a video packed twice (two jobs on the same videos at
    #: once) counts in its latest pack only, and a video in a pack not in a stale part of its own
    part_drops: dict[str, set[str]] = dataclasses.field(default_factory=dict)
    #: compacted files whose footer or source columns do not parse: (path, reason); none of their
    #: rows can be read, so readers name them (`iter_tables`) and read every other file
    damaged: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    #: compacted files merged into another (rule 5): path -> the path of the file that holds them now
    superseded: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def paths(self) -> list[str]:
        """Every file to read, parts first (their keys decide what compacted files drop)."""
        return [p for p, _ in self.parts] + [c.path for c in self.compacted]

    def without_dropped(self, path: str, table: Any) -> Any:
        """`table`, rows of part `path`, less the videos readers leave out of it (`part_drops`)."""
        drop = self.part_drops.get(path)
        if not drop:
            return table
        import pyarrow as pa
        import pyarrow.compute as pc

        keys = pa.array(sorted(drop), type=pa.string())
        return table.filter(pc.invert(pc.is_in(table.column("video_key"), value_set=keys)))

    def drop_keys(self, path: str) -> set[str]:
        """Video keys whose rows a reader must leave out of `path`."""
        for compacted in self.compacted:
            if compacted.path == path:
                return compacted.drop_keys
        return self.part_drops.get(path, set())

    def recover(self, missing: list[str]) -> list[tuple[str, set[str]]]:
        """Parts listed earlier and gone now (compacted meanwhile): [(new compacted file, the part names
        whose rows to read from it)]. Re-lists the folder; a part that is in no compacted file either was
        removed by a rerun (a failed video's part replaced): nothing to read for it."""
        known = {c.path for c in self.compacted}
        wanted = {p.rsplit("/", 1)[-1] for p in missing}
        found: list[tuple[str, set[str]]] = []
        newer = [
            o.path
            for o in iter_objects(self.fs, join(self.root, "manifest"))
            if file_kind(o.path.rsplit("/", 1)[-1]) == "compacted" and o.path not in known
        ]
        for path in sorted(newer, reverse=True):  # the newest holds the latest copy
            try:
                sources = set(_sources(self.fs, path, wanted))
            except Exception as exc:
                if _damage_reason(exc) is None:
                    raise
                continue  # damaged: the next listing's plan names it
            if sources:
                found.append((path, set(sources)))
                wanted -= set(sources)
        return found


def plan_manifest(fs: fsspec.AbstractFileSystem, root: str, *, packs: bool = True) -> ManifestPlan:
    """List `root/manifest/` once and resolve parts, packs and compacted files (rules above)."""
    parts: dict[str, tuple[str, int]] = {}
    compacted: list[CompactedFile] = []
    pack_parts: dict[str, tuple[str, int]] = {}
    for item in iter_objects(fs, join(root, "manifest")):
        name = item.path.rsplit("/", 1)[-1]
        kind = file_kind(name)
        if kind == "compacted":
            compacted.append(CompactedFile(item.path, item.size))
        elif kind == "pack":
            pack_parts[name] = (item.path, item.size)
        elif kind == "part":
            parts[name] = (item.path, item.size)
    members = committed_packs(fs, root) if (packs and pack_parts) or compacted else {}
    orphans = [path for name, (path, _) in pack_parts.items() if pack_id(name) not in members]
    part_drops: dict[str, set[str]] = {}
    latest: dict[str, str] = {}  # video key -> the latest committed pack holding it
    for name in sorted(pack_parts):  # pack ids start with their run id: later runs sort later
        if pack_id(name) in members:
            for key in members[pack_id(name)]:
                if key in latest:
                    part_drops.setdefault(pack_parts[latest[key]][0], set()).add(key)
                latest[key] = name
    for name, entry in pack_parts.items():
        if pack_id(name) in members:
            parts[name] = entry
    for key in latest:
        single = f"{PART_PREFIX}{key}{SUFFIX}"
        if single in parts:
            part_drops.setdefault(parts[single][0], set()).add(key)
    compacted.sort(key=lambda c: c.name)
    covered: list[str] = []
    damaged: list[tuple[str, str]] = []
    superseded: dict[str, str] = {}
    if compacted:
        recorded: dict[str, str] = {}  # part name -> sha256 recorded by the newest compacted file
        readable = []
        for c in compacted:
            try:
                c.replaces, c.merges, c.num_rows = _compaction_metadata(fs, c.path)
            except Exception as exc:
                reason = _damage_reason(exc)
                if reason is None:
                    raise  # storage, not damage
                damaged.append((c.path, reason))  # its parts, if still there, are read as parts
                continue
            readable.append(c)
        merged_into = {name: c.path for c in readable for name in c.merges}
        superseded = {c.path: merged_into[c.name] for c in readable if c.name in merged_into}
        compacted = []
        for c in readable:
            if c.path in superseded:
                continue  # rule 5: its rows are in the file that merged it
            try:
                sources = _sources(fs, c.path, set(parts))
            except Exception as exc:
                reason = _damage_reason(exc)
                if reason is None:
                    raise
                damaged.append((c.path, reason))
                continue
            compacted.append(c)
            recorded.update(sources)
        by_name = {c.name: c for c in compacted}
        for c in compacted:
            for older, keys in c.replaces.items():
                if older in by_name:
                    by_name[older].drop_keys.update(keys)
        for name in [n for n in parts if n in recorded]:
            path, _ = parts[name]
            try:
                digest = sha256_hex(fs.cat_file(path))
            except FileNotFoundError:  # deleted by a compaction since the listing: it is covered
                digest = recorded[name]
            if digest == recorded[name]:
                covered.append(path)
                del parts[name]
        newer_keys = set()
        for name in parts:
            key = part_key(name)
            if key is not None:
                newer_keys.add(key)
            elif pack_id(name) in members:
                newer_keys.update(members[pack_id(name)])
        for c in compacted:
            c.drop_keys |= newer_keys
    return ManifestPlan(
        fs=fs,
        root=root,
        parts=sorted(parts.values()),
        compacted=compacted,
        covered=sorted(covered),
        orphan_packs=sorted(orphans),
        pack_members=members,
        part_drops=part_drops,
        damaged=damaged,
        superseded=superseded,
    )


def _damage_reason(exc: BaseException) -> str | None:
    """One-line reason when a compacted file's bytes do not parse; None for a storage error (missing,
    denied, unreachable), which is not damage and is raised."""
    from pipeline.store.storage import is_transient

    chain: list[BaseException] = []
    error: BaseException | None = exc
    while error is not None and len(chain) < 10:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if is_transient(exc) or any(isinstance(e, (PermissionError, FileNotFoundError)) for e in chain):
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300]


def committed_packs(fs: fsspec.AbstractFileSystem, root: str) -> dict[str, list[str]]:
    """pack id -> member video keys, from `markers/packs/` (one small read per pack)."""
    from pipeline.format.runinfo import iter_pack_markers

    return {str(m["pack_id"]): [str(k) for k in m["members"]] for m in iter_pack_markers(fs, root)}


def _compaction_metadata(
    fs: fsspec.AbstractFileSystem, path: str
) -> tuple[dict[str, list[str]], list[str], int]:
    """(replaces, merges, rows) from a compacted file's footer (empty for a file that records neither)."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as handle:
        footer = pq.ParquetFile(handle).metadata
    metadata, rows = footer.metadata or {}, footer.num_rows
    raw = metadata.get(COMPACTION_KEY)
    if not raw:
        return {}, [], rows
    try:
        record = json.loads(raw)
        replaces = {str(k): [str(x) for x in v] for k, v in record.get("replaces", {}).items()}
        merges = [str(name) for name in record.get("merges", [])]
    except (ValueError, AttributeError, TypeError):
        return {}, [], rows
    return replaces, merges, rows


def _sources(fs: fsspec.AbstractFileSystem, path: str, names: set[str]) -> dict[str, str]:
    """{part name: sha256} for the parts among `names` that compacted file `path` absorbed."""
    if not names:
        return {}
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    wanted = pa.array(sorted(names), type=pa.string())
    found: dict[str, str] = {}
    with fs.open(path, "rb") as handle:
        for batch in pq.ParquetFile(handle).iter_batches(
            columns=[SOURCE_PART, SOURCE_SHA256], batch_size=65536
        ):
            hits = batch.filter(pc.is_in(batch.column(0), value_set=wanted))
            found.update(zip(hits.column(0).to_pylist(), hits.column(1).to_pylist(), strict=True))
    return found


def iter_tables(
    plan: ManifestPlan,
    columns: list[str] | None = None,
    batch_rows: int = 65536,
    *,
    on_damage: Callable[[str, str], None] | None = None,
    filter_expression: Any = None,
) -> Iterator[Any]:
    """The manifest's rows as Arrow tables with `columns` of the manifest schema (default: all), each
    row exactly once: parts whole, compacted files by row group minus their dropped keys, and the rows
    of parts that a concurrent compaction moved (`ManifestPlan.recover`).

    Every file is checked as it is read (`manifest.parse_part`: page checksums, column checksums; page
    checksums for compacted files). A file that does not parse is damage, not a crash: its rows are
    left out and `on_damage(path, reason)` is called (without it, ValueError is raised).

    `filter_expression` (optional, on the columns read) is pushed into the scan of compacted files:
    row groups whose statistics cannot match are not read (key-sorted files prune key filters to a
    row group or two). Parts are small and filtered after they are parsed; callers filter again."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipeline.format.schema import MANIFEST_SCHEMA

    wanted = list(columns) if columns is not None else MANIFEST_SCHEMA.names
    schema = pa.schema([MANIFEST_SCHEMA.field(n) for n in wanted])

    def damage(path: str, reason: str) -> None:
        if on_damage is None:
            raise ValueError(f"{path}: {reason}")
        on_damage(path, reason)

    def conform(table: pa.Table) -> pa.Table:
        return conform_to(table, schema)

    def compacted(path: str, keep: Any) -> Any:
        try:
            with plan.fs.open(path, "rb") as handle:
                parquet = pq.ParquetFile(handle, page_checksum_verification=True)
                names = parquet.schema_arrow.names
                present = [n for n in {*wanted, "video_key", SOURCE_PART} if n in names]
                for batch in parquet.iter_batches(columns=present, batch_size=batch_rows):
                    table = pa.Table.from_batches([batch])
                    mask = keep(table)
                    if mask is not None:
                        table = table.filter(mask)
                    if table.num_rows:
                        yield conform(table)
        except FileNotFoundError:
            raise
        except Exception as exc:  # a damaged compacted file: the rows before the damage were yielded
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            damage(path, f"{type(exc).__name__}: {text}"[:300])

    for path, reason in plan.damaged:
        damage(path, reason)
    read_columns = list(dict.fromkeys([*wanted, "video_key"]))
    missing: list[str] = []
    part_paths = [p for p, _ in plan.parts]
    pinned = pinned_keys(filter_expression)
    if pinned is not None:  # a filter on keys only: other videos' own parts cannot match
        part_paths = [
            p
            for p in part_paths
            if part_key(p.rsplit("/", 1)[-1]) in pinned or part_key(p.rsplit("/", 1)[-1]) is None
        ]
    # parts are small: yielded a few hundred at a time, as one table (callers pay a fixed cost per table)
    yield from part_tables(plan, part_paths, read_columns, schema, on_damage=damage, missing=missing)
    for item in plan.compacted:
        drop = pa.array(sorted(item.drop_keys), type=pa.string())
        if filter_expression is not None:
            yield from _pruned(plan, item.path, wanted, filter_expression, drop, conform, damage, batch_rows)
            continue
        yield from compacted(
            item.path,
            lambda t, drop=drop: (
                pc.invert(pc.is_in(t.column("video_key"), value_set=drop)) if len(drop) else None
            ),
        )
    if missing:
        for path, names in plan.recover(missing):
            wanted_sources = pa.array(sorted(names), type=pa.string())
            yield from compacted(
                path, lambda t, s=wanted_sources: pc.is_in(t.column(SOURCE_PART), value_set=s)
            )


def conform_to(table: Any, schema: Any) -> Any:
    """`table` with exactly `schema`'s columns and types (a column it lacks: nulls). Parsed parts
    usually have the schema already, and this runs once per part, so that case returns at once
    (`Table.column_names` builds a new list on each call: it is read once)."""
    import pyarrow as pa

    if table.schema.equals(schema):
        return table
    present = set(table.column_names)
    arrays = []
    for field in schema:
        if field.name in present:
            column = table.column(field.name)
            arrays.append(column if column.type == field.type else column.cast(field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=schema)


_KEY_TERM = re.compile(r'\(video_key == "((?:[^"\\]|\\.)*)"\)')


def pinned_keys(expression: Any) -> set[str] | None:
    """The video keys a filter selects when it is nothing but `video_key == K` terms joined by `or`
    (`export --where "video_key = 'K'"`), else None. Read from the expression's text; anything else
    (an `and`, another column, a function) is None, so the caller reads everything."""
    if expression is None:
        return None
    text = str(expression)
    keys = [json.loads(f'"{raw}"') for raw in _KEY_TERM.findall(text)]
    rebuilt = _KEY_TERM.sub("K", text)
    while True:
        shorter = rebuilt.replace("(K or K)", "K")
        if shorter == rebuilt:
            break
        rebuilt = shorter
    return set(keys) if keys and rebuilt == "K" else None


def _pruned(
    plan: ManifestPlan,
    path: str,
    wanted: list[str],
    expression: Any,
    drop: Any,
    conform: Callable[[Any], Any],
    damage: Callable[[str, str], None],
    batch_rows: int,
) -> Iterator[Any]:
    """A compacted file scanned with `expression` pushed down (row groups pruned by statistics, page
    checksums verified), minus the dropped keys. A filter the columns cannot evaluate is the caller's
    error and raised; anything else the file's bytes cause is damage."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    options = ds.ParquetFragmentScanOptions(page_checksum_verification=True)
    file_format = ds.ParquetFileFormat(default_fragment_scan_options=options)
    if len(drop):
        expression = expression & pc.invert(pc.is_in(pc.field("video_key"), value_set=drop))
    try:
        dataset = ds.dataset(path, format=file_format, filesystem=plan.fs)
        present = [n for n in dict.fromkeys([*wanted, "video_key"]) if n in dataset.schema.names]
        from pipeline.format.manifest_part import referenced_columns
        from pipeline.format.schema import MANIFEST_SCHEMA

        if not set(referenced_columns(expression, MANIFEST_SCHEMA)) <= set(dataset.schema.names):
            # a file written before a column the filter names: read it whole (the caller filters)
            expression = pc.invert(pc.is_in(pc.field("video_key"), value_set=drop)) if len(drop) else None
        batches = dataset.to_batches(
            columns=present, filter=expression, batch_size=batch_rows, use_threads=False
        )
        for batch in batches:
            if batch.num_rows:
                yield conform(pa.Table.from_batches([batch]))
    except (FileNotFoundError, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        damage(path, f"{type(exc).__name__}: {text}"[:300])


def done_keys(fs: fsspec.AbstractFileSystem, root: str) -> set[str]:
    """Video keys that are done: a done marker, or a member of a committed pack."""
    from pipeline.format.runinfo import list_markers

    keys = set(list_markers(fs, root, "done"))
    for members in committed_packs(fs, root).values():
        keys.update(members)
    return keys


def container_location(
    fs: fsspec.AbstractFileSystem, root: str, row: dict[str, Any]
) -> tuple[str, tuple[int, int] | None]:
    """(path under OUT, pack member range or None) of the object holding a row's video. The archive
    may have been moved since it was written, so the object is looked up under OUT by name."""
    from pipeline.format.runinfo import container_path, pack_path

    if (
        row.get("member_offset") is not None
        and row.get("member_length") is not None
        and row.get("archive_uri")
    ):
        name = str(row["archive_uri"]).rsplit("/", 1)[-1].removesuffix(".vdrc")
        return pack_path(root, name), (int(row["member_offset"]), int(row["member_length"]))
    return container_path(root, row["video_key"]), None


PREFETCH = 8
PARTS_PER_TABLE = 256


def prefetched(
    fs: fsspec.AbstractFileSystem, paths: list[str], transform: Callable[[bytes], Any] | None = None
):
    """(path, bytes or None when gone) in order, `PREFETCH` fetches in flight (object-store latency);
    memory holds at most that many parts. `transform(bytes)` runs in the fetching thread too (parsing
    many small parts: pyarrow releases the GIL while it decodes), and its result is given instead."""
    import collections
    from concurrent.futures import ThreadPoolExecutor

    def get(path: str) -> Any:
        try:
            data = read_bytes(fs, path, small=True)
        except FileNotFoundError:
            return None
        return transform(data) if transform is not None else data

    with ThreadPoolExecutor(PREFETCH) as pool:
        pending: collections.deque = collections.deque()
        queue = iter(paths)
        for path in queue:
            pending.append((path, pool.submit(get, path)))
            if len(pending) >= PREFETCH:
                break
        while pending:
            path, future = pending.popleft()
            following = next(queue, None)
            if following is not None:
                pending.append((following, pool.submit(get, following)))
            yield path, future.result()


def parse_or_error(columns: list[str]) -> Callable[[bytes], Any]:
    from pipeline.format.manifest_part import parse_part
    from pipeline.format.schema import MANIFEST_SCHEMA

    def parse(data: bytes) -> Any:
        try:
            return parse_part(data, MANIFEST_SCHEMA, columns)
        except ValueError as exc:
            return exc

    return parse


#: Parsing a small part costs about 1.5 ms of pyarrow work (its footer, a zstd context for each page)
#: and Python: past this many parts, they are fetched and parsed in one process per core (chunks of
#: `CHUNK_PARTS`, in order), each chunk sent back as one table.
PROCESS_THRESHOLD = 2_000
CHUNK_PARTS = 256


@dataclasses.dataclass
class PartsChunk:
    """Parts parsed together (`parsed_chunks`): `table` holds the rows of the readable ones in their
    order (the columns asked for, with the manifest schema's types); for each of `paths`, `outcomes`
    says how many of those rows are its own, why it is damaged (a one-line reason) or None (gone)."""

    paths: list[str]
    outcomes: list[int | str | None]
    table: Any


def parsed_chunks(fs: Any, paths: list[str], wanted: list[str]) -> Iterator[PartsChunk]:
    """The parts `paths`, `CHUNK_PARTS` at a time, in order; in worker processes when there are many."""
    chunks = (paths[i : i + CHUNK_PARTS] for i in range(0, len(paths), CHUNK_PARTS))
    workers = min(os.cpu_count() or 1, 8)
    if len(paths) < PROCESS_THRESHOLD or workers < 2 or not _main_is_importable():
        for chunk in chunks:
            yield _parse_chunk(fs, chunk, wanted)
        return
    import collections
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_exit_with, initargs=(os.getpid(),)
    ) as pool:
        pending: collections.deque = collections.deque()
        for chunk in chunks:
            pending.append(pool.submit(_parse_chunk, fs, chunk, wanted))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done = pending.popleft().result()
            following = next(chunks, None)
            if following is not None:
                pending.append(pool.submit(_parse_chunk, fs, following, wanted))
            yield done


def part_tables(
    plan: ManifestPlan,
    paths: list[str],
    columns: list[str],
    schema: Any,
    *,
    on_damage: Callable[[str, str], None],
    missing: list[str],
    skip_empty: bool = False,
    arrange: Callable[[Any, list[int]], Any] | None = None,
) -> Iterator[Any]:
    """The rows of the parts `paths` (`columns` read, then `conform_to(schema)`), less the videos the
    plan leaves out of them, `PARTS_PER_TABLE` parts to a table (with `skip_empty`, parts left without
    rows do not count). A damaged part is named (`on_damage`), a gone one added to `missing`.
    `arrange(table, rows of each part)` may reorder a run of whole parts (each part within itself).

    A chunk of parts arrives as one table, so runs of whole parts are sliced from it, not rebuilt part
    by part; the tables are those a part-by-part reading gave (the same rows, the same boundaries)."""
    batch = _Batch(arrange or (lambda table, _: table))
    for chunk in parsed_chunks(plan.fs, paths, columns):
        table = conform_to(chunk.table, schema)
        offset = 0
        for path, outcome in zip(chunk.paths, chunk.outcomes, strict=True):
            if outcome is None:
                missing.append(path)
            elif isinstance(outcome, str):
                on_damage(path, outcome)
            else:
                if path in plan.part_drops:  # its rows less some videos (`video_key` is read)
                    rows = plan.without_dropped(path, chunk.table.slice(offset, outcome))
                    batch.add_alone(conform_to(rows, schema), skip_empty)
                else:
                    batch.add(table, offset, outcome, skip_empty)
                offset += outcome
                if batch.parts >= PARTS_PER_TABLE:
                    yield batch.take()
        batch.close_run()
    if batch.parts or batch.pieces:
        yield batch.take()


class _Batch:
    """The parts of the table being gathered: runs of whole parts of one chunk's table kept as one
    slice each (with the rows of each part, for `arrange`), parts less dropped videos on their own."""

    def __init__(self, arrange: Callable[[Any, list[int]], Any]) -> None:
        self.arrange = arrange
        self.pieces: list[Any] = []
        self.parts = 0
        self._run: tuple[Any, int, list[int]] | None = None  # (table, first row, rows of each part)

    def add(self, table: Any, start: int, rows: int, skip_empty: bool) -> None:
        """A whole part: rows [start, start + rows) of `table`, which follow the run's, if any."""
        if skip_empty and not rows:
            return
        if self._run is None or self._run[0] is not table:
            self.close_run()
            self._run = (table, start, [])
        self._run[2].append(rows)
        self.parts += 1

    def add_alone(self, table: Any, skip_empty: bool) -> None:
        """A part with some of its videos left out: not part of a run."""
        self.close_run()
        if skip_empty and not table.num_rows:
            return
        self.pieces.append(self.arrange(table, [table.num_rows]))
        self.parts += 1

    def close_run(self) -> None:
        if self._run is not None:
            table, start, sizes = self._run
            self.pieces.append(self.arrange(table.slice(start, sum(sizes)), sizes))
            self._run = None

    def take(self) -> Any:
        """The gathered parts' rows as one table; the batch starts anew."""
        import pyarrow as pa

        self.close_run()
        table = pa.concat_tables(self.pieces).combine_chunks()
        self.pieces, self.parts = [], 0
        return table


def _exit_with(reader_pid: int) -> None:
    """A parse worker's start: end with the reader that started it. A reader killed outright (SIGTERM,
    SIGKILL, an out-of-memory kill) runs no clean-up, and its workers — children of the forkserver,
    not of the reader — would otherwise wait on their queue forever."""
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(1.0)
            try:
                os.kill(reader_pid, 0)
            except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another user)
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-reader", daemon=True).start()


def _parse_chunk(fs: Any, paths: list[str], wanted: list[str]) -> PartsChunk:
    """A chunk of parts fetched (a few at a time, in threads) and parsed as they arrive, as one table:
    in a worker process, one table is cheaper to send back than a table per part. Parsing in the
    fetching threads instead costs more CPU (their GIL hand-offs) than it saves (measured)."""
    from pipeline.format.manifest_part import PartsParser
    from pipeline.format.schema import MANIFEST_SCHEMA

    parser = PartsParser(MANIFEST_SCHEMA, wanted)
    opened = [None if data is None else parser.open(data) for _, data in prefetched(fs, paths)]
    table, parsed = parser.finish([part for part in opened if part is not None])
    found = iter(parsed)
    outcomes = [None if part is None else next(found) for part in opened]
    return PartsChunk(paths, outcomes, table)


def _main_is_importable() -> bool:
    """Worker processes start by importing the main module again (forkserver): a program read from
    standard input or typed interactively has none, so its parts are parsed in threads instead."""
    import sys

    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)
