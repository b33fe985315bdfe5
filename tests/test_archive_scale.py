"""Dataset scale end to end on the local Ray cluster: an input list archived by two shards into one OUT,
with the list's caption/license/split and per-video targets in the manifest, seen whole by ls and audit."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.audit.reader import open_manifest
from pipeline.inspect import list_archive
from pipeline.keys import shard_of


def _quiet() -> ProgressDisplay:
    return ProgressDisplay(Counters(), live=False, interval=3600)


def test_input_list_archived_by_two_shards_into_one_out(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(4):
        shutil.copy(sample_dir / "short.mkv", videos / f"clip-{i}.mkv")
    (videos / "notes.txt").write_text("not a video\n")
    listing = tmp_path / "dataset.csv"
    listing.write_text(
        "uri,caption,license,split,target_kbps\n"
        "videos/clip-0.mkv,a red bus,cc-by,train,\n"
        f'{videos / "clip-1.mkv"},"two cats, one dog",cc0,val,40\n'
        "videos/clip-2.mkv,,,test,\n"
        "videos/clip-3.mkv,,,train,-5\n"  # an invalid target: this video fails, the others go on
        "videos/notes.txt,,,,\n"
        ",missing uri,,,\n"
    )
    out = tmp_path / "out"

    def shard(i: int):
        config = ArchiveConfig(
            src=str(listing), out=str(out), shard=(i, 2), skip_metrics=fast_metrics, run_id=f"shard-{i}"
        )
        return run_archive(config, display=_quiet())

    results = [shard(0), shard(1)]
    summaries = [r.summary for r in results]
    assert sum(s["files_listed"] for s in summaries) == 5 and all(
        s["list_rows_without_uri"] == 1 for s in summaries
    )
    assert [s["files_listed"] + s["files_in_other_shards"] for s in summaries] == [5, 5]
    assert sum(s["videos_ok"] for s in summaries) == 3 and sum(s["videos_failed"] for s in summaries) == 1
    assert sum(s["not_videos_total"] for s in summaries) == 1

    listed = {v.source_uri.rsplit("/", 1)[-1]: v for v in list_archive(str(out))}
    assert {name: v.status for name, v in listed.items()} == {
        "clip-0.mkv": "ok",
        "clip-1.mkv": "ok",
        "clip-2.mkv": "ok",
        "clip-3.mkv": "failed",
    }
    assert "target" in listed["clip-3.mkv"].error and "row 4" in listed["clip-3.mkv"].error
    owners = {name: shard_of(v.video_key, 2) for name, v in listed.items()}
    assert {name for name, owner in owners.items() if owner == 0} == {
        Path(u).name for u in _sources(out, "shard-0")
    }

    rows = {r["source_uri"].rsplit("/", 1)[-1]: r for r in open_manifest(str(out)).to_table().to_pylist()}
    assert (rows["clip-0.mkv"]["caption"], rows["clip-0.mkv"]["license"], rows["clip-0.mkv"]["split"]) == (
        "a red bus",
        "cc-by",
        "train",
    )
    assert rows["clip-1.mkv"]["caption"] == "two cats, one dog"
    assert (rows["clip-1.mkv"]["target_kind"], rows["clip-1.mkv"]["target_value"]) == ("kbps", 40.0)
    assert rows["clip-0.mkv"]["target_kind"] == "quality"  # the job's default
    assert rows["clip-2.mkv"]["caption"] is None and rows["clip-2.mkv"]["split"] == "test"

    again = shard(0)  # each shard resumes on its own: nothing left to do
    assert (
        again.summary["videos_ok"] == 0 and again.summary["videos_skipped_done"] == summaries[0]["videos_ok"]
    )


def _sources(out: Path, run_id: str) -> set[str]:
    """Source URIs of the videos a run committed or failed (from the manifest)."""
    table = pq.read_table(out / "manifest", columns=["run_id", "source_uri"]).to_pylist()
    return {r["source_uri"] for r in table if r["run_id"] == run_id}


def test_packed_archive_lists_restores_verifies_inspects_and_compacts(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    from pipeline.compact import compact
    from pipeline.inspect import inspect_object
    from pipeline.restore import restore_video
    from pipeline.verify import run_verify

    src = tmp_path / "src"
    src.mkdir()
    for i in range(3):
        shutil.copy(sample_dir / "short.mkv", src / f"clip-{i}.mkv")
    shutil.copy(sample_dir / "sub" / "with-audio.mp4", src / "talk.mp4")
    out = tmp_path / "out"
    config = ArchiveConfig(src=str(src), out=str(out), pack_mb=0.004, gop_frames=8, skip_metrics=fast_metrics)
    result = run_archive(config, display=_quiet())
    assert result.exit_code == 0 and result.summary["videos_ok"] == 4
    packs = sorted((out / "packs").iterdir())
    assert len(packs) >= 2 and not (out / "videos").exists()  # no single-video objects
    assert len(list((out / "markers" / "packs").iterdir())) == len(packs)
    assert not (out / "markers" / "done").exists()  # one marker per pack, none per video

    listed = list_archive(str(out))
    assert len(listed) == 4 and {v.status for v in listed} == {"ok"}
    talk = next(v for v in listed if v.source_uri.endswith("talk.mp4"))
    restored = restore_video(str(out), "talk.mp4", str(tmp_path / "talk.mkv"))
    assert restored.frame_count == 37 and restored.audio and restored.archive_uri.endswith(".vdrc")
    assert "/packs/" in restored.archive_uri

    report = run_verify(str(out), scan="full")
    assert report.ok, report.failures
    assert report.gops_total == sum(v.gops for v in listed) and report.containers_checked == 4

    pack_of_talk = restored.archive_uri
    whole = inspect_object(pack_of_talk)
    assert whole["kind"] == "pack" and talk.video_key in [m["video_key"] for m in whole["members"]]
    one = inspect_object(pack_of_talk, video=talk.video_key)
    assert one["header"]["video_key"] == talk.video_key and one["totals"]["frames"] == 37
    assert one["gops"][0]["offset"] >= one["pack_member"]["offset"]
    # ranged reads of its own range only: its footer (the whole member when small), its GOPs, its audio
    assert restored.bytes_read <= 2 * one["pack_member"]["length"] < 2 * one["object_bytes"]

    again = run_archive(config, display=_quiet())  # the packs' markers make every video done
    assert again.summary["videos_skipped_done"] == 4 and again.summary["videos_ok"] == 0

    compacted = compact(str(out))
    assert compacted.parts_absorbed == len(packs)
    assert [(v.video_key, v.status, v.gops) for v in list_archive(str(out))] == [
        (v.video_key, v.status, v.gops) for v in listed
    ]
    assert run_verify(str(out), scan="full").ok
