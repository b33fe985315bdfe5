"""Dataset scale end to end on the local Ray cluster: an input list archived by two shards into one OUT —
shard 0 packed (`--pack`), shard 1 one object per video — with the list's caption/license/split and
per-video targets in the manifest; ls, restore, verify, inspect and audit see the whole archive, before
and after `vidarc compact`, and each shard resumes on its own."""

from __future__ import annotations

import shutil
from pathlib import Path

from pipeline.archive import run_archive
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.audit.summary import audit_archive
from pipeline.audit.videos import list_archive
from pipeline.dataset.clips import ClipReader
from pipeline.dataset.plan import plan_archive
from pipeline.format.keys import list_video_key, shard_of
from pipeline.read.inspect import inspect_object
from pipeline.read.restore import restore_video
from pipeline.tools.compact import compact
from pipeline.tools.verify import run_verify


def _quiet() -> ProgressDisplay:
    return ProgressDisplay(Counters(), live=False, interval=3600)


def _names_per_shard(folder: Path, wanted: int) -> list[str]:
    """Clip names whose list keys fall `wanted` into each of 2 shards (keys hash the absolute URI)."""
    names: dict[int, list[str]] = {0: [], 1: []}
    i = 0
    while min(len(v) for v in names.values()) < wanted:
        name = f"clip-{i}.mkv"
        owner = shard_of(list_video_key(str(folder / name), None), 2)
        if len(names[owner]) < wanted:
            names[owner].append(name)
        i += 1
    return names[0] + names[1]


def test_input_list_by_two_shards_packed_and_not_into_one_out(
    sample_dir: Path, tmp_path: Path, ray_address: str, fast_metrics: tuple[str, ...]
) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = _names_per_shard(videos, 2)  # shard 0: clips[0:2], shard 1: clips[2:4]
    for name in clips[:3]:
        shutil.copy(sample_dir / "short.mkv", videos / name)
    shutil.copy(sample_dir / "sub" / "with-audio.mp4", videos / clips[3])  # 37 frames and audio
    (videos / "notes.txt").write_text("not a video\n")
    listing = tmp_path / "dataset.csv"
    listing.write_text(
        "uri,caption,license,split,target_kbps\n"
        f"videos/{clips[0]},a red bus,cc-by,train,\n"
        f'{videos / clips[1]},"two cats, one dog",cc0,val,40\n'
        f"videos/{clips[2]},,,test,\n"
        f"videos/{clips[3]},,,train,\n"
        "videos/broken.mkv,,,train,-5\n"  # an invalid target: this row fails alone
        "videos/notes.txt,,,,\n"
        ",missing uri,,,\n"
    )
    out = tmp_path / "out"

    def shard(i: int, **options):
        config = ArchiveConfig(  # compact=False: the reads are checked before and after `compact`
            src=str(listing), out=str(out), shard=(i, 2), gop_frames=8, skip_metrics=fast_metrics,
            compact=False, **options,
        )  # fmt: skip
        return run_archive(config, display=_quiet())

    packed, single = shard(0, pack_mb=0.004), shard(1)
    summaries = [packed.summary, single.summary]
    assert [s["files_listed"] + s["files_in_other_shards"] for s in summaries] == [6, 6]
    assert sum(s["files_listed"] for s in summaries) == 6 and all(
        s["list_rows_without_uri"] == 1 for s in summaries
    )
    assert sum(s["videos_ok"] for s in summaries) == 4 and sum(s["videos_failed"] for s in summaries) == 1
    assert (packed.summary["videos_ok"], single.summary["videos_ok"]) == (2, 2)
    assert sum(s["not_videos_total"] for s in summaries) == 1
    assert len(list((out / "packs").iterdir())) >= 1 and len(list((out / "videos").iterdir())) == 2

    def listed() -> dict[str, tuple]:
        return {
            v.source_uri.rsplit("/", 1)[-1]: (v.video_key, v.status, v.gops, v.error)
            for v in list_archive(str(out))
        }

    before = listed()
    assert {name: entry[1] for name, entry in before.items()} == {
        **dict.fromkeys(clips, "ok"),
        "broken.mkv": "failed",
    }
    assert "target" in before["broken.mkv"][3] and "row 5" in before["broken.mkv"][3]

    rows = {}
    for table in _manifest(out):
        for row in table.to_pylist():
            rows.setdefault(row["source_uri"].rsplit("/", 1)[-1], row)
    assert (rows[clips[0]]["caption"], rows[clips[0]]["license"], rows[clips[0]]["split"]) == (
        "a red bus",
        "cc-by",
        "train",
    )
    assert rows[clips[1]]["caption"] == "two cats, one dog"
    assert (rows[clips[1]]["target_kind"], rows[clips[1]]["target_value"]) == ("kbps", 40.0)
    assert rows[clips[0]]["target_kind"] == "quality"  # the job's default
    assert rows[clips[0]]["member_offset"] is not None and rows[clips[2]]["member_offset"] is None

    # a packed video restores alone, by ranged reads of its own range in the pack
    restored = restore_video(str(out), clips[0], str(tmp_path / "packed.mkv"))
    assert "/packs/" in restored.archive_uri and restored.frame_count == 12
    whole = inspect_object(restored.archive_uri)
    assert whole["kind"] == "pack" and before[clips[0]][0] in [m["video_key"] for m in whole["members"]]
    one = inspect_object(restored.archive_uri, video=before[clips[0]][0])
    assert one["totals"]["frames"] == 12 and one["gops"][0]["offset"] >= one["pack_member"]["offset"]
    assert restored.bytes_read <= 2 * one["pack_member"]["length"]
    # training reads find packed videos in their packs too
    plan = plan_archive(str(out), where=f"video_key == '{before[clips[0]][0]}'")
    (packed_object,) = plan.objects
    assert packed_object.member == (one["pack_member"]["offset"], one["pack_member"]["length"])
    reader = ClipReader(plan.spec, plan.columns)
    frames = [row for gop in reader.read_object(packed_object) for row in reader.clips(gop)]
    assert sum(len(r["frames"]) for r in frames) == 12
    talk = restore_video(str(out), clips[3], str(tmp_path / "talk.mkv"))
    assert talk.frame_count == 37 and talk.audio and "/videos/" in talk.archive_uri

    report = run_verify(str(out), scan="full")
    assert report.ok, report.failures
    assert report.gops_total == 2 + 2 + 2 + 5 and report.containers_checked == 4
    # the decode proof reads through packs: every GOP, packed or not, proven exact by its digests
    assert report.checks()["exact"] == 11 and all(r["recon_digest_ok"] for r in report.rows)
    audited = audit_archive(str(out)).rows

    compacted = compact(str(out))
    assert compacted.parts_absorbed >= 3 and compacted.parts_left == 1  # the failed video's part stays
    assert listed() == before and audit_archive(str(out)).rows == audited
    after = run_verify(str(out), scan="full")
    assert after.ok and after.checks()["exact"] == 11  # and through compacted files

    for i, previous in enumerate(summaries):  # each shard resumes on its own: nothing left to do
        again = shard(i, **({"pack_mb": 0.004} if i == 0 else {}))
        assert (
            again.summary["videos_ok"] == 0 and again.summary["videos_skipped_done"] == previous["videos_ok"]
        )


def _manifest(out: Path):
    from pipeline.read.manifest_layout import iter_tables, plan_manifest
    from pipeline.store.storage import filesystem

    fs, root = filesystem(str(out))
    return iter_tables(plan_manifest(fs, root))
