"""`read_archive`: one or many archives as a Ray Dataset of clips (frames, GLVC latents, or both).

Two stages, the usual Ray Data shape for I/O then compute:
1. **Read** (`ArchiveDatasource`, Ray read tasks): the plan (`pipeline.dataset.plan`, manifest only)
   is split into read tasks by whole objects, balanced by payload bytes, so each object's index is read
   once; a task fetches its objects' selected GOPs by ranged reads and yields one block per object
   (payload bytes + manifest columns; compressed, so blocks are small).
2. **Decode** (`map_batches`, one GOP per batch): CPU tasks by default, each worker process building
   a decoder once and reusing it; with `num_gpus` (GLVC/GVC on GPUs) an actor pool whose actors hold
   the model. Each GOP becomes its clip rows.

Read-side rule: this module uses the read side (reader, container, codec registry) and Ray Data,
never the archive job (`pipeline.archive`), and it needs only the archive, never the sources.
"""

from __future__ import annotations

import collections.abc
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data import Dataset
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask
from ray.data.extensions import ArrowTensorArray

from pipeline.dataset.clips import ClipReader, GopPayload
from pipeline.dataset.plan import (
    DEFAULT_COLUMNS,
    ArchivePlan,
    ClipSpec,
    ObjectPlan,
    plan_archive,
)
from pipeline.format.schema import MANIFEST_SCHEMA

_PAYLOAD_FIELDS = [
    ("_archive_uri", pa.string()),
    ("_video_key", pa.string()),
    ("_gop", pa.string()),
    ("_entry", pa.string()),
    ("_header", pa.string()),
    ("_payload", pa.binary()),
    ("_bytes_read", pa.int64()),
]


def read_archive(
    out: str | collections.abc.Sequence[str],
    *,
    where: str | None = None,
    output: str = "frames",
    clip_frames: int | None = None,
    stride: int | None = None,
    columns: collections.abc.Sequence[str] = DEFAULT_COLUMNS,
    endpoint_url: str | None = None,
    device: str = "cpu",
    model: str | None = None,
    num_gpus: float | None = None,
    concurrency: int | None = None,
    override_num_blocks: int | None = None,
    allow_damaged: bool = False,
) -> Dataset:
    """Clips of archive(s) `out` as a `ray.data.Dataset`, read lazily when the dataset executes.

    Rows: the manifest `columns`, the clip's `video_key`, `gop_index`, `first_frame`, `frame_count`,
    `bytes_read` (the GOP's fetch cost, on its first clip), then `frames` (uint8 T×H×W×3) and/or
    `latents` (float32 C×F×h×w) with `tokenizer_id`, `latents_mean`, `latents_std`.

    `where` uses the audit's filter language and prunes GOPs in the manifest before any payload is
    read. `num_gpus` (e.g. 1 or 0.25; `device="cuda"` alone means 1) decodes on an actor pool of
    `concurrency` actors (default 1) with the model on the GPU; `concurrency` alone gives a CPU pool.
    A damaged manifest part is refused (DatasetError) unless `allow_damaged`, which reads the rest and
    warns (`DamagedManifestWarning`).
    Raises DatasetError (one line) for bad options, filters, manifests or an empty selection.
    """
    spec = ClipSpec(output=output, clip_frames=clip_frames, stride=stride)
    plan = plan_archive(
        out, where=where, spec=spec, columns=columns, endpoint_url=endpoint_url, allow_damaged=allow_damaged
    )
    if num_gpus and device == "cpu":
        device = "cuda"
    if device.startswith("cuda") and not num_gpus:
        num_gpus = 1  # a task without a GPU reservation sees no GPU at all
    payloads = ray.data.read_datasource(
        ArchiveDatasource(plan, endpoint_url=endpoint_url), override_num_blocks=override_num_blocks
    )
    options = {
        "spec": spec,
        "columns": plan.columns,
        "endpoint_url": endpoint_url,
        "device": device,
        "model": model,
    }
    if num_gpus or concurrency:
        return payloads.map_batches(
            GopDecoder,
            fn_constructor_kwargs=options,
            batch_size=1,
            batch_format="pyarrow",
            num_gpus=num_gpus or 0,
            concurrency=concurrency or 1,
        )
    return payloads.map_batches(decode_gops, fn_kwargs=options, batch_size=1, batch_format="pyarrow")


class ArchiveDatasource(Datasource):
    """The selected GOPs of a plan, read by whole objects: one block of payloads per object."""

    def __init__(self, plan: ArchivePlan, *, endpoint_url: str | None = None) -> None:
        super().__init__()
        self.plan, self.endpoint_url = plan, endpoint_url

    def estimate_inmemory_data_size(self) -> int | None:
        return self.plan.payload_bytes

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        tasks = []
        for group in balance_objects(self.plan.objects, max(1, parallelism)):
            metadata = BlockMetadata(
                num_rows=sum(len(o.gops) for o in group),
                size_bytes=sum(o.payload_bytes for o in group),
                input_files=[o.archive_uri for o in group],
                exec_stats=None,
            )
            tasks.append(
                ReadTask(
                    _read_fn(group, self.plan, self.endpoint_url),
                    metadata,
                    schema=payload_schema(self.plan.columns),
                    per_task_row_limit=per_task_row_limit,
                )
            )
        return tasks


def _read_fn(group: list[ObjectPlan], plan: ArchivePlan, endpoint_url: str | None):
    def read() -> collections.abc.Iterator[pa.Table]:
        reader = ClipReader(plan.spec, plan.columns, endpoint_url=endpoint_url)
        schema = payload_schema(plan.columns)
        for obj in group:
            rows = [fetched.to_row() for fetched in reader.read_object(obj)]
            yield pa.Table.from_pylist(rows, schema=schema)

    return read


def balance_objects(objects: tuple[ObjectPlan, ...], groups: int) -> list[list[ObjectPlan]]:
    """Objects in at most `groups` groups of similar payload bytes (largest first, to the lightest
    group); an object is never split, so its index is read once."""
    bins: list[tuple[int, int, list[ObjectPlan]]] = [(0, i, []) for i in range(min(groups, len(objects)))]
    for obj in sorted(objects, key=lambda o: (-o.payload_bytes, o.archive_uri)):
        size, number, members = min(bins)
        members.append(obj)
        bins[bins.index((size, number, members))] = (size + obj.payload_bytes, number, members)
    return [members for _, _, members in sorted(bins, key=lambda b: b[1]) if members]


def payload_schema(columns: tuple[str, ...]) -> pa.Schema:
    return pa.schema([MANIFEST_SCHEMA.field(c) for c in columns] + [pa.field(*f) for f in _PAYLOAD_FIELDS])


# ---- decode stage --------------------------------------------------------------------------------------
def decode_gops(batch: pa.Table, **options: Any) -> pa.Table:
    """Decode stage as a task: the process-wide decoder cache in `ClipReader.decoder` keeps models."""
    return GopDecoder(**options)(batch)


class GopDecoder:
    """Decode stage as an actor (GPU or CPU): the decoder is built on first use and kept."""

    def __init__(
        self,
        *,
        spec: ClipSpec,
        columns: tuple[str, ...],
        endpoint_url: str | None,
        device: str,
        model: str | None,
    ) -> None:
        self.columns = columns
        self.reader = ClipReader(spec, columns, endpoint_url=endpoint_url, device=device, model=model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for row in batch.to_pylist():
            rows.extend(self.reader.clips(GopPayload.from_row(row, self.columns)))
        return clips_table(rows, self.columns)


def clips_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> pa.Table:
    """Clip rows as an Arrow table: manifest types for manifest columns, tensor columns for arrays."""
    names = list(dict.fromkeys((*columns, "video_key", "gop_index", "first_frame", "frame_count")))
    arrays: dict[str, pa.Array] = {
        name: pa.array([r[name] for r in rows], type=MANIFEST_SCHEMA.field(name).type) for name in names
    }
    arrays["bytes_read"] = pa.array([r["bytes_read"] for r in rows], type=pa.int64())
    for name in ("frames", "latents", "latents_mean", "latents_std"):
        if rows and name in rows[0]:
            arrays[name] = ArrowTensorArray.from_numpy([np.asarray(r[name]) for r in rows])
    if rows and "tokenizer_id" in rows[0]:
        arrays["tokenizer_id"] = pa.array([r["tokenizer_id"] for r in rows], type=pa.string())
    return pa.table(arrays)
