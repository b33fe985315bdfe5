"""`vidarc export`: the selected part of an archive as files, for users who want files.

- `mp4`: one H.264 file per video, with its audio (`pipeline.read.restore.restore_video`, the restore's
  muxing), for each contiguous run of selected GOPs: `<video_key>.mp4` when the run is the whole video,
  else `<video_key>.f<first>-<stop>.mp4` (half-open frame range). Beside each, `<name>.json`: the video,
  the range and the manifest columns of its GOPs.
- `webdataset`: tar shards `shard-000000.tar`, ... of `clips_per_shard` clips. A sample's members share
  a key (`<video_key with dots as _>-g<gop>-f<first frame>`): `.mp4` (the clip's frames, H.264 CRF 10
  like restore's mp4, no audio), `.npy` (latents, float32 C×F×h×w, for `output` latents/both) and
  `.json` (manifest columns, clip place, tokenizer id and latent statistics). Tar is written with the
  standard library; any WebDataset reader (or `tarfile`) reads it.

No partial output: every file is written atomically, and if the export fails part-way, the files it
already wrote are removed before the error is raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import tarfile
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from codec.cores import usable_cores
from pipeline.dataset.clips import ClipReader, GopPayload
from pipeline.dataset.plan import (
    DEFAULT_COLUMNS,
    ArchivePlan,
    ClipSpec,
    DatasetError,
    ObjectPlan,
    plan_archive,
)
from pipeline.format.runinfo import json_text
from pipeline.read.ordered import ordered_map
from pipeline.read.restore import MP4_CRF, RestoreError, restore_video
from pipeline.store import thaw
from pipeline.store.storage import (
    StorageError,
    filesystem,
    frozen_message,
    full_uri,
    is_frozen,
    join,
    open_atomic,
    redact,
    write_bytes,
)
from pipeline.store.storage_class import is_cold

FORMATS = ("mp4", "webdataset")


@dataclasses.dataclass(frozen=True)
class ExportResult:
    files: list[str]
    clips: int
    gops: int
    bytes_read: int


def export_archive(
    out: str | Sequence[str],
    dest: str,
    *,
    fmt: str = "mp4",
    where: str | None = None,
    output: str = "frames",
    clip_frames: int | None = None,
    stride: int | None = None,
    clips_per_shard: int = 1000,
    columns: Sequence[str] = DEFAULT_COLUMNS,
    endpoint_url: str | None = None,
    device: str = "cpu",
    model: str | None = None,
    allow_damaged: bool = False,
    wait: bool = False,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export the GOPs of `out` matching `where` into folder `dest` (local or fsspec URL).

    Raises DatasetError with one line (and leaves nothing behind) for bad options, a bad filter, an
    empty selection, a damaged object or an unwritable DEST.
    """
    if fmt not in FORMATS:
        raise DatasetError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "mp4" and (output != "frames" or clip_frames is not None):
        raise DatasetError("--format mp4 writes whole videos' frames; --output/--clip-frames need webdataset")
    if clips_per_shard < 1:
        raise DatasetError(f"--clips-per-shard must be at least 1, got {clips_per_shard}")
    spec = ClipSpec(output=output, clip_frames=clip_frames, stride=stride)
    plan = plan_archive(
        out, where=where, spec=spec, columns=columns, endpoint_url=endpoint_url, allow_damaged=allow_damaged
    )
    require_thawed(plan, endpoint_url=endpoint_url, wait=wait, progress=progress)
    fs, root = filesystem(dest, endpoint_url=endpoint_url)
    written: list[str] = []
    try:
        fs.makedirs(root, exist_ok=True)
        if fmt == "mp4":
            return _export_mp4(plan, fs, root, written, endpoint_url, device, model)
        return _export_webdataset(plan, fs, root, written, clips_per_shard, endpoint_url, device, model)
    except BaseException as exc:
        for path in written:
            with contextlib.suppress(Exception):
                fs.rm_file(path)
        if isinstance(exc, (DatasetError, KeyboardInterrupt)):
            raise
        if isinstance(exc, (RestoreError, StorageError)):
            raise DatasetError(str(exc).splitlines()[0]) from None
        if is_frozen(exc):  # moved to a cold class by a lifecycle rule: the manifest did not say
            raise DatasetError(frozen_message(str(getattr(exc, "filename", None) or out))) from None
        if isinstance(exc, OSError):
            raise DatasetError(f"{dest}: cannot write ({type(exc).__name__}: {redact(str(exc))})") from None
        raise


def require_thawed(
    plan: ArchivePlan,
    *,
    endpoint_url: str | None,
    wait: bool = False,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Refuse, in one line naming them, objects the manifest records in GLACIER or DEEP_ARCHIVE that
    have no readable copy (one HEAD per such object; warm objects cost nothing), or wait for them."""
    cold: dict[str, list[str]] = {}
    for obj in plan.objects:
        if is_cold(obj.storage_class):
            cold.setdefault(obj.out, []).append(obj.archive_uri)
    for out, uris in cold.items():
        fs, _ = filesystem(out, endpoint_url=endpoint_url)
        paths = [filesystem(uri, endpoint_url=endpoint_url)[1] for uri in uris]
        try:
            thaw.require_readable(fs, paths, out=out, wait=wait, progress=progress)
        except StorageError as exc:
            raise DatasetError(str(exc).splitlines()[0]) from None


# ---- mp4 ---------------------------------------------------------------------------------------------------
def _export_mp4(
    plan: ArchivePlan, fs: Any, root: str, written: list[str], endpoint_url: str | None, device: str,
    model: str | None,
) -> ExportResult:  # fmt: skip
    reader = ClipReader(plan.spec, plan.columns, endpoint_url=endpoint_url)
    files, bytes_read = [], 0
    for obj in plan.objects:
        total = _video_frames(reader, obj)
        for run in _contiguous_runs(obj):
            first, stop = run[0].first_frame, run[-1].first_frame + run[-1].frame_count
            name = obj.video_key if (first, stop) == (0, total) else f"{obj.video_key}.f{first}-{stop}"
            path = join(root, name + ".mp4")
            written.append(path)
            result = restore_video(
                obj.out,
                obj.video_key,
                full_uri(fs, path),
                frames=(first, stop),
                endpoint_url=endpoint_url,
                device=device,
                model=model,
            )
            bytes_read += result.bytes_read
            sidecar = {
                "video_key": obj.video_key,
                "archive_uri": obj.archive_uri,
                "first_frame": first,
                "frame_count": stop - first,
                "fps": str(result.fps),
                "audio": result.audio,
                "gops": [g.column_values() | {"gop_index": g.gop_index} for g in run],
            }
            written.append(join(root, name + ".json"))
            write_bytes(fs, written[-1], _json_bytes(sidecar))
            files += [path, written[-1]]
    return ExportResult(
        files, clips=len(files) // 2, gops=plan.gop_count, bytes_read=bytes_read + reader.bytes_read
    )


def _video_frames(reader: ClipReader, obj: ObjectPlan) -> int:
    """The video's frame count from its container header (one small ranged read)."""
    return reader.header(obj.archive_uri, obj.member).frame_count


def _contiguous_runs(obj: ObjectPlan) -> list[list[Any]]:
    runs: list[list[Any]] = []
    for gop in obj.gops:
        if runs and runs[-1][-1].gop_index + 1 == gop.gop_index:
            runs[-1].append(gop)
        else:
            runs.append([gop])
    return runs


# ---- webdataset ----------------------------------------------------------------------------------------------
def _export_webdataset(
    plan: ArchivePlan, fs: Any, root: str, written: list[str], clips_per_shard: int,
    endpoint_url: str | None, device: str, model: str | None,
) -> ExportResult:  # fmt: skip
    """Payloads are fetched in order on this thread; each GOP's decode and its samples' encoding (an
    H.264 clip, an .npy) run on `export_workers()` threads side by side; samples are written in order,
    so the shards are the same whatever the number of workers (tested)."""
    reader = ClipReader(plan.spec, plan.columns, endpoint_url=endpoint_url, device=device, model=model)

    def samples(fetched: GopPayload) -> list[list[tuple[str, bytes]]]:
        fps = Fraction(int(fetched.header.fps_num), int(fetched.header.fps_den))
        return [sample_members(row, fps) for row in reader.clips(fetched)]

    fetched = (gop for obj in plan.objects for gop in reader.read_object(obj))
    with _ShardWriter(fs, root, clips_per_shard, written) as shards:
        for gop_samples in ordered_map(samples, fetched, export_workers(), name="vidarc-export"):
            for members in gop_samples:
                shards.add(members)
    return ExportResult(list(written), clips=shards.count, gops=plan.gop_count, bytes_read=reader.bytes_read)


def export_workers() -> int:
    """GOPs decoded and encoded at once: the usable cores (each neural pass on the CPU runs one torch
    thread, and libx264 clips are encoded side by side; on a GPU its passes queue on the device)."""
    return usable_cores()


class _ShardWriter:
    """Tar shards of `clips_per_shard` samples, each written atomically (streamed, never seeked)."""

    def __init__(self, fs: Any, root: str, clips_per_shard: int, written: list[str]) -> None:
        self.fs, self.root, self.per_shard, self.written = fs, root, clips_per_shard, written
        self.count = 0
        self.stack = contextlib.ExitStack()
        self.tar: tarfile.TarFile | None = None

    def add(self, members: list[tuple[str, bytes]]) -> None:
        if self.count % self.per_shard == 0:
            self.stack.close()  # the previous shard is complete: commit it
            self.stack = contextlib.ExitStack()
            path = join(self.root, f"shard-{self.count // self.per_shard:06d}.tar")
            self.written.append(path)
            handle = self.stack.enter_context(open_atomic(self.fs, path))
            self.tar = self.stack.enter_context(
                tarfile.open(fileobj=handle, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115
            )
        assert self.tar is not None
        for name, data in members:
            _add_member(self.tar, name, data)
        self.count += 1

    def __enter__(self) -> _ShardWriter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stack.__exit__(*exc_info)  # an error discards the open shard instead of committing it


def sample_key(row: dict[str, Any]) -> str:
    """WebDataset key: no dots (they separate a sample's extensions), unique per clip."""
    return f"{str(row['video_key']).replace('.', '_')}-g{int(row['gop_index']):05d}-f{int(row['first_frame']):07d}"


def sample_members(row: dict[str, Any], fps: Fraction) -> list[tuple[str, bytes]]:
    """One clip row as its WebDataset members (name, bytes): `.npy` latents, `.mp4` frames, `.json`."""
    key = sample_key(row)
    meta = {k: v for k, v in row.items() if k not in ("frames", "latents", "latents_mean", "latents_std")}
    meta["fps"] = float(fps)
    members = []
    if "latents" in row:
        meta["latents_mean"] = [float(v) for v in row["latents_mean"]]
        meta["latents_std"] = [float(v) for v in row["latents_std"]]
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(row["latents"], dtype=np.float32))
        members.append((f"{key}.npy", buffer.getvalue()))
    if "frames" in row:
        members.append((f"{key}.mp4", clip_mp4(row["frames"], fps)))
    members.append((f"{key}.json", _json_bytes(meta)))
    return members


def _add_member(shard: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    # a fixed time (as reproducible builds use): the same selection exports to the same bytes each time
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    shard.addfile(info, io.BytesIO(data))


def clip_mp4(frames: np.ndarray, fps: Fraction) -> bytes:
    """A clip as an in-memory mp4: H.264 at restore's CRF, 4:2:0 for even sizes, else 4:4:4, one
    encoder thread."""
    import av

    height, width = frames.shape[1:3]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.options = {"crf": str(MP4_CRF), "preset": "medium"}
        # one thread per clip: clips are encoded side by side (`export_workers`), so the cores are used
        # without each encoder starting a thread per core, and the bytes do not depend on the machine
        # (x264 cuts a frame into as many slices as it has threads)
        stream.codec_context.thread_count = 1
        for image in frames:
            container.mux(
                stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24"))
            )
        container.mux(stream.encode())
    return buffer.getvalue()


def _json_bytes(record: dict[str, Any]) -> bytes:
    def default(value: Any) -> Any:
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if isinstance(value, np.generic):
            return value.item()
        return str(value)

    return (json_text(record, default=default, sort_keys=True) + "\n").encode()
