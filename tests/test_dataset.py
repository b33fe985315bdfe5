"""Archives as training data: `read_archive` (Ray Data), `ArchiveClipDataset` (torch) and `vidarc export`.

Real archives made here by the writer itself (x264, and GLVC with the bundled model), real ranged
reads counted by the reader, a real local Ray cluster and the moto S3 server.
"""

from __future__ import annotations

import io
import json
import math
import shutil
import tarfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from codec.base import RateTarget
from codec.registry import create_codec
from pipeline.dataset import (
    ArchiveClipDataset,
    ClipSpec,
    DamagedManifestWarning,
    DatasetError,
    plan_archive,
    read_archive,
)
from pipeline.dataset.export import export_archive
from pipeline.format.container_header import ContainerHeader
from pipeline.metrics import psnr_rgb
from pipeline.read.reader import ArchiveReader
from pipeline.read.restore import restore_video

FPS = Fraction(24)


def write_archive(out: Path, key: str, frames: np.ndarray, codec, *, gop_frames: int, quality: float,
                  audio_source: Path | None = None) -> list:  # fmt: skip
    """One video committed by the writer (no Ray): container, manifest part with real PSNR, marker.
    Returns each GOP's `EncodedGop`."""
    from pipeline.archive.gop_result import GopResult
    from pipeline.archive.plan import plan_gops
    from pipeline.archive.video_writer import VideoJob, commit_video

    spans = tuple(plan_gops(len(frames), gop_frames, None))
    encoded, metas = [], []
    for span in spans:
        gop = frames[span.first_frame : span.first_frame + span.frame_count]
        result = codec.encode(gop, RateTarget("quality", quality), FPS)
        encoded.append(result)
        metas.append(
            GopResult(payload_bytes=len(result.payload), bpp=8 * len(result.payload) / gop.size * 3,
                      kbps=1.0, device="cpu", params=result.params,
                      metrics={"psnr": psnr_rgb(gop, result.reconstruction)})
        )  # fmt: skip
    identity = codec.describe()
    header = ContainerHeader(
        **{k: identity[k] for k in ("codec", "codec_version", "model_id", "model_sha256", "decoder_options")},
        width=frames.shape[2], height=frames.shape[1], frame_count=len(frames), fps_num=24,
        fps_den=1, vfr=False, rotation=0, target={"kind": "quality", "value": quality}, video_key=key,
    )  # fmt: skip
    source = str(audio_source) if audio_source else str(out / f"{key}.mp4")
    job = VideoJob(
        video_key=key, source_uri=source, source_bytes=1, out=str(out), run_id="r1", endpoint_url=None,
        header=header, spans=spans, has_audio=audio_source is not None,
    )  # fmt: skip
    commit_video(job, metas, [e.payload for e in encoded])
    return encoded


@pytest.fixture(scope="module")
def x264_archive(tmp_path_factory, clip: np.ndarray, sample_dir: Path) -> Path:
    """Two x264 videos with 4-frame GOPs: `alpha` (12 frames, 3 GOPs, with audio) and `beta` (8, 2)."""
    out = tmp_path_factory.mktemp("dataset") / "x264"
    codec = create_codec("x264")
    write_archive(out, "alpha", clip[:12], codec, gop_frames=4, quality=20,
                  audio_source=sample_dir / "sub" / "with-audio.mp4")  # fmt: skip
    write_archive(out, "beta", clip[12:20], codec, gop_frames=4, quality=35)
    return out


@pytest.fixture(scope="module")
def glvc_archive(tmp_path_factory, clip: np.ndarray):
    """One GLVC video (bundled model, 9 frames of 40×32 in GOPs of 5 + 4, coded padded to its block), the
    codec, and per GOP the encoder's output and the latents its self-check decoded from the payload."""
    out = tmp_path_factory.mktemp("dataset") / "glvc"
    codec = create_codec("glvc")
    seen = []
    decode_latents = codec._decode_latents
    codec._decode_latents = lambda *a, **k: seen.append(decode_latents(*a, **k)) or seen[-1]  # a spy
    encoded = write_archive(out, "gamma", np.ascontiguousarray(clip[:9, :32, :40]), codec, gop_frames=5,
                            quality=40)  # fmt: skip
    assert len(seen) == 2  # one self-check decode per GOP
    codec._decode_latents = decode_latents
    return out, codec, encoded, [s.latents for s in seen]


def _gop_reads(archive: Path) -> dict[str, dict[int, int]]:
    """{video_key: {gop_index: payload length}} from the containers themselves."""
    result = {}
    for path in sorted((archive / "videos").glob("*.vdrc")):
        result[path.stem] = {g.index: g.length for g in ArchiveReader(str(path)).index().gops}
    return result


def _index_bytes(archive: Path, key: str) -> int:
    reader = ArchiveReader(str(archive / "videos" / f"{key}.vdrc"))
    reader.index()
    return reader.bytes_read


# ---- planning: filters before payload reads -------------------------------------------------------------
def test_where_prunes_gops_before_any_payload_is_read(x264_archive: Path) -> None:
    dataset = ArchiveClipDataset(str(x264_archive), where="video_key == 'alpha' and gop_index >= 1",
                                 shuffle=False)  # fmt: skip
    rows = list(dataset)
    assert [(r["video_key"], r["gop_index"], r["first_frame"]) for r in rows] == [
        ("alpha", 1, 4),
        ("alpha", 2, 8),
    ]
    lengths = _gop_reads(x264_archive)
    # one index read for alpha, one ranged read per selected GOP; beta and GOP 0 never touched
    assert dataset.reader.reads == 3
    assert (
        dataset.reader.bytes_read
        == _index_bytes(x264_archive, "alpha") + lengths["alpha"][1] + lengths["alpha"][2]
    )
    assert sum(r["bytes_read"] for r in rows) == dataset.reader.bytes_read
    assert all(r["psnr"] > 25 and r["codec"] == "x264" for r in rows)  # manifest columns ride along


def test_bad_options_and_filters_are_one_line_errors(x264_archive: Path, tmp_path: Path) -> None:
    cases = [
        ({"where": "vmaf >>= 3"}, "--where"),
        ({"where": "colour == 'red'"}, "unknown column 'colour'"),
        ({"columns": ("video_key", "nope")}, "unknown manifest column"),
        ({"where": "psnr > 1000"}, "no GOP matches where='psnr > 1000'"),
        ({"spec": ClipSpec(clip_frames=9)}, "clip_frames is longer than every GOP"),
        ({"spec": ClipSpec(output="latents")}, "coded with x264, which has no latents"),
    ]
    for options, needle in cases:
        with pytest.raises(DatasetError, match=needle.replace("(", r"\(")) as info:
            plan_archive(str(x264_archive), **options)
        assert "\n" not in str(info.value)
    with pytest.raises(DatasetError, match="clip_frames applies to output='frames' only"):
        ClipSpec(output="latents", clip_frames=4)
    with pytest.raises(DatasetError, match="stride needs clip_frames"):
        ClipSpec(stride=2)
    with pytest.raises(DatasetError, match="no manifest parts"):
        plan_archive(str(tmp_path))


# ---- frames equal restore; latents equal the encoder's ------------------------------------------------
def test_frames_equal_restore(x264_archive: Path, tmp_path: Path) -> None:
    rows = list(ArchiveClipDataset(str(x264_archive), where="video_key == 'alpha'", shuffle=False))
    frames = np.concatenate([r["frames"].numpy() for r in rows])
    restore_video(str(x264_archive), "alpha", str(tmp_path / "alpha.mkv"))  # lossless FFV1: exact frames
    with av.open(str(tmp_path / "alpha.mkv")) as container:
        restored = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert frames.shape == restored.shape == (12, 48, 64, 3)
    assert np.array_equal(frames, restored)


def test_glvc_latents_equal_the_encoders_without_a_pixel_decode(glvc_archive) -> None:
    out, codec, encoded, latents = glvc_archive
    rows = list(ArchiveClipDataset(str(out), output="both", shuffle=False))
    assert [(r["gop_index"], r["frame_count"]) for r in rows] == [(0, 5), (1, 4)]
    s = codec.tokenizer.spatial_factor  # 8 for Wan's VAE, 4 for the bundled vidarc-tiny@4
    for row, gop, coded in zip(rows, encoded, latents, strict=True):
        # the encoder's decoded latents (coded at a padded size), cropped to the frame area (32×40 px)
        assert coded.shape[:3] == (1, 16, 2) and coded.shape[3] * s >= 32 and coded.shape[4] * s >= 40
        assert row["latents"].shape == (16, 2, 32 // s, 40 // s)
        assert torch.equal(row["latents"], coded[0, :, :, : 32 // s, : 40 // s])
        assert np.array_equal(row["frames"].numpy(), gop.reconstruction)
        assert row["tokenizer_id"].startswith("vidarc-tiny@4/tokenizer@")
        assert row["latents_mean"].shape == row["latents_std"].shape == (16,)
    payload = encoded[1].payload
    full = codec.decode_latents(payload, 4, 40, 32)  # the codec's method: the coded (padded) latents
    assert torch.equal(full, latents[1])
    assert np.array_equal(codec.tokenizer.decode(full)[:4, :32, :40], encoded[1].reconstruction)


# ---- the torch dataset: sharding, shuffling, resuming -------------------------------------------------
def _keys(rows) -> list[tuple[str, int]]:
    return [(r["video_key"], int(r["first_frame"])) for r in rows]


def test_shuffle_is_deterministic_and_workers_keep_the_global_order(x264_archive: Path) -> None:
    options = {"clip_frames": 2, "stride": 1, "seed": 7, "batch_size": 3, "columns": ("video_key", "psnr")}
    dataset = ArchiveClipDataset(str(x264_archive), **options)
    first = _keys(dataset)
    assert len(first) == len(dataset) == 5 * 3  # 5 GOPs of 4 frames, 3 windows each
    assert first == _keys(ArchiveClipDataset(str(x264_archive), **options))  # same seed, same order
    assert first != _keys(ArchiveClipDataset(str(x264_archive), **{**options, "seed": 8}))
    dataset.set_epoch(1)
    assert sorted(_keys(dataset)) == sorted(first) and _keys(dataset) != first
    dataset.set_epoch(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    batches = list(loader)
    assert [
        (k, int(f)) for b in batches for k, f in zip(b["video_key"], b["first_frame"], strict=True)
    ] == first
    assert batches[0]["frames"].shape == (3, 2, 48, 64, 3) and batches[0]["psnr"].dtype == torch.float64
    # ranks split the global batches; together they are the epoch
    ranks = [_keys(ArchiveClipDataset(str(x264_archive), rank=r, world_size=2, **options)) for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == sorted(first) and not set(ranks[0]) & set(ranks[1])


def test_resume_skips_consumed_clips_without_reading_them(x264_archive: Path) -> None:
    options = {"clip_frames": 2, "seed": 3, "batch_size": 2}
    dataset = ArchiveClipDataset(str(x264_archive), **options)
    dataset.set_epoch(2)
    everything = _keys(dataset)
    iterator = iter(dataset)
    consumed = [next(iterator) for _ in range(6)]
    state = dataset.state_dict()
    assert (state["epoch"], state["position"]) == (2, 6)

    resumed = ArchiveClipDataset(str(x264_archive), **options)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(2)  # the loop's usual call keeps the resume point of the same epoch
    rest = list(resumed)
    assert _keys(consumed) + _keys(rest) == everything
    remaining_gops = {(r["video_key"], r["gop_index"]) for r in rest}
    assert resumed.reader.reads == len({k for k, _ in remaining_gops}) + len(remaining_gops)
    with pytest.raises(DatasetError, match="another selection"):
        ArchiveClipDataset(str(x264_archive), **{**options, "seed": 4}).load_state_dict(state)


# ---- Ray Data ------------------------------------------------------------------------------------------
def test_ray_dataset_from_s3_reads_each_selected_gop_once(
    x264_archive: Path, ray_address: str, s3_endpoint: str, s3_bucket: str
) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint})
    fs.put(str(x264_archive), f"{s3_bucket}/arch", recursive=True)
    uri = f"s3://{s3_bucket}/arch"
    dataset = read_archive(uri, where="psnr > 0 and not (video_key == 'beta' and gop_index == 0)",
                           clip_frames=2, endpoint_url=s3_endpoint)  # fmt: skip
    dataset = dataset.materialize()
    numeric = dataset.select_columns(["frames", "first_frame"])  # torch batches take no text columns
    batch = next(iter(numeric.iter_torch_batches(batch_size=4)))  # what a training loop consumes
    assert batch["frames"].shape == (4, 2, 48, 64, 3) and batch["frames"].dtype == torch.uint8
    rows = sorted(dataset.take_all(), key=lambda r: (r["video_key"], r["first_frame"]))
    lengths = _gop_reads(x264_archive)
    selected = {("alpha", 0), ("alpha", 1), ("alpha", 2), ("beta", 1)}
    assert {(r["video_key"], r["gop_index"]) for r in rows} == selected
    assert len(rows) == 2 * len(selected)  # two 2-frame clips per 4-frame GOP
    expected_bytes = sum(lengths[k][g] for k, g in selected) + sum(
        _index_bytes(x264_archive, k) for k in ("alpha", "beta")
    )
    assert sum(r["bytes_read"] for r in rows) == expected_bytes  # each index and selected GOP once
    local = {_k: r for r in ArchiveClipDataset(str(x264_archive), clip_frames=2, shuffle=False)
             for _k in [(r["video_key"], int(r["first_frame"]))]}  # fmt: skip
    for row in rows:
        assert row["frames"].shape == (2, 48, 64, 3)
        assert np.array_equal(row["frames"], local[(row["video_key"], row["first_frame"])]["frames"].numpy())
        assert row["source_uri"] and row["psnr"] > 20 and row["fps"] == 24.0


def test_ray_stages_carry_glvc_latents_as_tensor_columns(glvc_archive) -> None:
    """The datasource's read task and the decode stage, run in this process (no Ray workers: a worker
    would load torch and the model again)."""
    from pipeline.dataset.ray_source import ArchiveDatasource, GopDecoder

    out, codec, _, latents = glvc_archive
    s = codec.tokenizer.spatial_factor
    plan = plan_archive(str(out), spec=ClipSpec(output="latents"), columns=("video_key", "psnr"))
    (task,) = ArchiveDatasource(plan).get_read_tasks(4)  # one object: one task, its index read once
    assert task.metadata.num_rows == 2 and task.metadata.size_bytes == plan.payload_bytes
    (block,) = list(task())
    assert block.column("_payload").to_pylist()[0][:4] == b"GLVC"
    decode = GopDecoder(spec=plan.spec, columns=plan.columns, endpoint_url=None, device="cpu", model=None)
    table = decode(block.slice(1, 1))
    assert table.column_names == ["video_key", "psnr", "gop_index", "first_frame", "frame_count",
                                  "bytes_read", "latents", "latents_mean", "latents_std", "tokenizer_id"]  # fmt: skip
    row = table.to_pylist()[0]
    assert (row["gop_index"], row["first_frame"], row["frame_count"]) == (1, 5, 4)
    assert np.array_equal(row["latents"], latents[1][0, :, :, : 32 // s, : 40 // s].numpy())
    assert row["tokenizer_id"].startswith("vidarc-tiny@4/") and len(row["latents_mean"]) == 16


# ---- export ------------------------------------------------------------------------------------------------
def test_export_mp4_with_audio_and_sidecars(x264_archive: Path, tmp_path: Path) -> None:
    from jobs.cli import app

    dest = tmp_path / "mp4"
    result = CliRunner().invoke(app, ["export", str(x264_archive), str(dest), "--where", "gop_index != 1"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in dest.iterdir())
    assert names == ["alpha.f0-4.json", "alpha.f0-4.mp4", "alpha.f8-12.json", "alpha.f8-12.mp4",
                     "beta.f0-4.json", "beta.f0-4.mp4"]  # fmt: skip
    with av.open(str(dest / "alpha.f8-12.mp4")) as container:
        assert container.streams.audio  # the video's audio, cut to the range
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    archived = np.concatenate([r["frames"].numpy() for r in ArchiveClipDataset(
        str(x264_archive), where="video_key == 'alpha' and gop_index == 2", shuffle=False)])  # fmt: skip
    assert frames.shape == archived.shape and psnr_rgb(archived, frames) > 38  # CRF 10
    sidecar = json.loads((dest / "alpha.f8-12.json").read_text())
    assert (sidecar["first_frame"], sidecar["frame_count"], sidecar["gops"][0]["gop_index"]) == (8, 4, 2)


def test_export_webdataset_shards(glvc_archive, x264_archive: Path, tmp_path: Path) -> None:
    out, codec, _, latents = glvc_archive
    s = codec.tokenizer.spatial_factor
    result = export_archive(str(out), str(tmp_path / "glvc"), fmt="webdataset", output="latents",
                            clips_per_shard=1)  # fmt: skip
    assert sorted(Path(f).name for f in result.files) == ["shard-000000.tar", "shard-000001.tar"]
    with tarfile.open(tmp_path / "glvc" / "shard-000001.tar") as shard:
        members = {m.name: shard.extractfile(m).read() for m in shard.getmembers()}
    key = "gamma-g00001-f0000005"
    assert sorted(members) == [f"{key}.json", f"{key}.npy"]
    expected = latents[1][0, :, :, : 32 // s, : 40 // s].numpy()
    assert np.array_equal(np.load(io.BytesIO(members[f"{key}.npy"])), expected)
    meta = json.loads(members[f"{key}.json"])
    assert (meta["video_key"], meta["first_frame"], meta["frame_count"]) == ("gamma", 5, 4)
    assert len(meta["latents_std"]) == 16 and meta["fps"] == 24.0 and math.isfinite(meta["psnr"])

    result = export_archive(str(x264_archive), str(tmp_path / "x264"), fmt="webdataset", clip_frames=4,
                            where="video_key == 'beta'")  # fmt: skip
    assert result.clips == 2 and [Path(f).name for f in result.files] == ["shard-000000.tar"]
    with tarfile.open(result.files[0]) as shard:
        names = shard.getnames()
        clip_mp4 = shard.extractfile("beta-g00001-f0000004.mp4").read()
    assert names == [f"beta-g0000{g}-f000000{4 * g}.{x}" for g in (0, 1) for x in ("mp4", "json")]
    with av.open(io.BytesIO(clip_mp4)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    archived = next(
        iter(ArchiveClipDataset(str(x264_archive), where="video_key == 'beta' and gop_index == 1"))
    )
    assert frames.shape == (4, 48, 64, 3) and psnr_rgb(archived["frames"].numpy(), frames) > 32


def _shard_members(folder: Path) -> list[tuple[str, str, bytes]]:
    out = []
    for path in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(path) as shard:
            out += [(path.name, m.name, shard.extractfile(m).read()) for m in shard.getmembers()]
    return out


def _shard_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("shard-*.tar"))}


def test_export_decodes_gops_side_by_side_into_the_same_shards(
    glvc_archive, x264_archive: Path, tmp_path: Path, monkeypatch
) -> None:
    """GOPs are decoded (and their clips encoded) on several threads, and the shards hold the same
    samples in the same order, byte for byte, as with one: GLVC frames and latents, x264 clips. The
    shard files are the same bytes too (members carry a fixed time): an export is reproducible."""
    from pipeline.dataset import export as export_module

    out = glvc_archive[0]
    exports = {}
    for workers in (1, 3):
        monkeypatch.setattr(export_module, "export_workers", lambda workers=workers: workers)
        for name, archive, options in (
            ("glvc", out, {"output": "both", "clips_per_shard": 1}),
            ("x264", x264_archive, {"clip_frames": 2, "clips_per_shard": 3}),
        ):
            dest = tmp_path / f"{name}-{workers}"
            export_archive(str(archive), str(dest), fmt="webdataset", **options)
            exports[name, workers] = _shard_members(dest)
            exports[name, workers, "bytes"] = _shard_bytes(dest)
    for name in ("glvc", "x264"):
        assert exports[name, 1] == exports[name, 3] and len(exports[name, 1]) > 4
        assert exports[name, 1, "bytes"] == exports[name, 3, "bytes"]  # and the same files, byte for byte
    names = [member for _, member, _ in exports["glvc", 1]]
    assert names == [f"gamma-g0000{g}-f000000{5 * g}.{x}" for g in (0, 1) for x in ("npy", "mp4", "json")]


def test_export_errors_are_one_line_and_leave_nothing(x264_archive: Path, tmp_path: Path) -> None:
    from jobs.cli import app

    broken = tmp_path / "broken"
    shutil.copytree(x264_archive, broken)
    path = broken / "videos" / "beta.vdrc"
    data = bytearray(path.read_bytes())
    data[ArchiveReader(str(path)).index().gops[1].offset + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    dest = tmp_path / "wds"
    runner = CliRunner()
    for args, needle in [
        ([str(broken), str(dest), "--format", "webdataset", "--clips-per-shard", "1"], "CRC32C"),
        ([str(x264_archive), str(dest), "--format", "tar"], "--format must be one of mp4, webdataset"),
        ([str(x264_archive), str(dest), "--output", "latents"], "--format mp4 writes whole videos"),
        ([str(x264_archive), str(dest), "--format", "webdataset", "--output", "latents"], "has no latents"),
    ]:
        result = runner.invoke(app, ["export", *args])
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
        assert not dest.exists() or list(dest.iterdir()) == []  # shards written before the error are gone


def test_a_damaged_manifest_part_is_refused_unless_allowed_then_named(
    x264_archive: Path, tmp_path: Path
) -> None:
    from jobs.cli import app

    broken = tmp_path / "broken"
    shutil.copytree(x264_archive, broken)
    part = broken / "manifest" / "part-beta.parquet"
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])  # truncated: beta's rows are unreadable

    with pytest.raises(
        DatasetError, match=r"1 damaged manifest part.*part-beta\.parquet.*allow_damaged=True"
    ):
        plan_archive(str(broken))
    with pytest.raises(DatasetError, match=r"part-beta\.parquet"):
        ArchiveClipDataset(str(broken))
    with pytest.warns(DamagedManifestWarning, match=r"part-beta\.parquet.*left out"):
        plan = plan_archive(str(broken), allow_damaged=True)
    assert {o.video_key for o in plan.objects} == {"alpha"} and len(plan.damaged) == 1
    assert "part-beta.parquet" in plan.damaged[0]

    runner = CliRunner()
    dest = tmp_path / "mp4"
    refused = runner.invoke(app, ["export", str(broken), str(dest)])
    assert refused.exit_code == 2 and "--allow-damaged" in refused.output and not dest.exists()
    allowed = runner.invoke(app, ["export", str(broken), str(dest), "--allow-damaged"])
    assert allowed.exit_code == 0, allowed.output
    assert "warning: 1 damaged manifest part" in allowed.output and "exported 1 mp4 files" in allowed.output
