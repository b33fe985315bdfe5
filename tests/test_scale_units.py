"""Dataset-scale pieces alone: paged listings, the compact key set, shards, the work stream and input
lists (no Ray; the local store and the moto S3 server)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.archive.discovery import iter_sources, list_sources
from pipeline.archive.source_list import SourceList, SourceListError
from pipeline.archive.worklist import WorkList
from pipeline.format.keys import list_video_key, parse_shard, shard_of
from pipeline.format.runinfo import marker_keyset, marker_path, write_json
from pipeline.store.keyset import KeySet
from pipeline.store.listing import iter_pages
from pipeline.store.storage import filesystem


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x" * (len(name) + 1))


NAMES = ["b.mp4", "a/x.mp4", "a.mp4", "a/y/z.mp4", "a-b.mp4", "c/d.mkv", "a/w.mp4"]


def test_local_listing_pages_in_path_order(tmp_path: Path) -> None:
    _tree(tmp_path, NAMES)
    fs, root = filesystem(str(tmp_path))
    pages = list(iter_pages(fs, root, page_size=2))
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    paths = [o.path[len(root) + 1 :] for page in pages for o in page]
    assert paths == sorted(NAMES)  # the order S3 lists keys in
    assert {o.size for page in pages for o in page} == {len(n) + 1 for n in NAMES}
    unordered = [o.path for page in iter_pages(fs, root, ordered=False) for o in page]
    assert sorted(unordered) == sorted(str(tmp_path / n) for n in NAMES)
    assert list(iter_pages(fs, str(tmp_path / "missing"))) == []
    later = [o.path[len(root) + 1 :] for page in iter_pages(fs, root, start_after="a.mp4") for o in page]
    assert later == [n for n in sorted(NAMES) if n > "a.mp4"]  # what S3's StartAfter gives


def test_marker_names_come_back_in_key_order() -> None:
    """Markers list in name order ("<key>.json"); where one key is a prefix of another, key order
    differs ("a-1-2.json" lists before "a-1.json")."""
    from pipeline.audit.videos import marker_keys_in_key_order

    rng = __import__("random").Random(9)

    def key(parent: str) -> str:
        slug = "".join(rng.choice("ab-._1") for _ in range(rng.randint(0, 3)))
        return f"{parent}{rng.choice('-._') if parent else ''}{slug}-{rng.getrandbits(48):012x}"

    keys = [key("") for _ in range(300)]
    for _ in range(3):  # keys that extend other keys: a source named like another's key
        keys += [key(rng.choice(keys)) for _ in range(300)]
    by_name = sorted(set(keys), key=lambda k: k + ".json")
    assert by_name != sorted(set(keys))  # the case exists in this sample
    assert list(marker_keys_in_key_order(iter(by_name))) == sorted(set(keys))
    plain = sorted(f"clip-{i:05d}.mp4-{i * 7919 % 65521:012x}" for i in range(2000))
    consumed = []
    stream = marker_keys_in_key_order(consumed.append(k) or k for k in plain)
    for count, key in enumerate(stream, 1):
        assert key == plain[count - 1] and len(consumed) == count  # streamed: nothing held back


def test_a_large_local_folder_is_sorted_through_spilled_runs(tmp_path: Path, monkeypatch) -> None:
    """Past `SPILL_NAMES` a folder's names go to disk in sorted runs: same order, same entries."""
    from pipeline.store import listing

    rng = __import__("random").Random(4)
    names = sorted(
        {"".join(rng.choice("ab-._0zé") for _ in range(rng.randint(1, 9))) + ".json" for _ in range(300)}
    )
    _tree(tmp_path, [*names, "sub/inner.json", "sub-/x.json", "zz/y.json"])
    fs, root = filesystem(str(tmp_path))
    whole = [(o.path, o.size) for page in iter_pages(fs, root, page_size=7) for o in page]
    monkeypatch.setattr(listing, "SPILL_NAMES", 16)
    runs = []
    spill = listing._spilled_run
    monkeypatch.setattr(
        listing, "_spilled_run", lambda file, names: runs.append(len(names)) or spill(file, names)
    )
    assert [(o.path, o.size) for page in iter_pages(fs, root, page_size=7) for o in page] == whole
    assert len(runs) >= len(names) // 16  # the names went through runs on disk
    assert [p[len(root) + 1 :] for p, _ in whole] == sorted(
        [*names, "sub/inner.json", "sub-/x.json", "zz/y.json"]
    )
    partly = iter_pages(fs, root, page_size=5)
    assert len(next(partly)) == 5
    partly.close()  # a listing left early closes its runs' files


def test_s3_listing_pages_through_continuation_tokens(s3_endpoint: str, s3_bucket: str) -> None:
    fs, _ = filesystem(f"s3://{s3_bucket}", endpoint_url=s3_endpoint)
    for name in NAMES:
        fs.pipe_file(f"{s3_bucket}/src/{name}", b"x" * (len(name) + 1))
    fs.pipe_file(f"{s3_bucket}/srcx/other.mp4", b"not under src/")
    pages = list(iter_pages(fs, f"{s3_bucket}/src", page_size=3))
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [o.path for page in pages for o in page] == [f"{s3_bucket}/src/{n}" for n in sorted(NAMES)]
    later = [
        o.path for page in iter_pages(fs, f"{s3_bucket}/src", page_size=2, start_after="a.mp4") for o in page
    ]
    assert later == [f"{s3_bucket}/src/{n}" for n in sorted(NAMES) if n > "a.mp4"]  # S3 starts there
    # the archive's discovery gives the same entries as for a local copy of the collection
    entries = list_sources(f"s3://{s3_bucket}/src", endpoint_url=s3_endpoint, include=("*.mp4",))
    assert [e.relative for e in entries] == sorted(n for n in NAMES if n.endswith(".mp4"))


def test_keyset_membership_is_exact_and_compact() -> None:
    keys = [f"clip-{i:07d}.mp4-{i * 7919 % 1000003:012x}" for i in range(20_000)]
    keyset = KeySet()
    for start in range(0, len(keys), 3000):  # pages
        keyset.add(keys[start : start + 3000])
    with pytest.raises(RuntimeError):
        keyset.contains_many(keys[:1])
    keyset.freeze()
    assert len(keyset) == 20_000 and keyset.nbytes == 16 * 20_000
    assert keyset.contains_many(keys[::7]).all()
    others = [k + "x" for k in keys[:5000]] + ["", "clip"]
    assert not keyset.contains_many(others).any()
    assert (
        keys[123] in keyset
        and "nope" not in keyset
        and KeySet().freeze().contains_many(["a"]).tolist() == [False]
    )


def test_shards_partition_the_keys() -> None:
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/3", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(bad)
    keys = [f"video-{i}" for i in range(3000)]
    owners = [shard_of(k, 4) for k in keys]
    assert owners == [shard_of(k, 4) for k in keys]  # stable
    counts = [owners.count(i) for i in range(4)]
    assert sum(counts) == 3000 and min(counts) > 600  # every shard gets a fair share


def test_worklist_streams_the_shard_minus_done_and_failed(tmp_path: Path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    names = [f"d{i % 7}/clip-{i:03d}.mp4" for i in range(60)]
    _tree(src, names)
    entries = list_sources(str(src))
    fs, root = filesystem(str(out))
    done, failed = entries[:10], entries[10:15]
    for entry in done:
        write_json(fs, marker_path(root, "done", entry.key), {"video_key": entry.key})
    for entry in failed:
        write_json(fs, marker_path(root, "failed", entry.key), {"video_key": entry.key})
    assert len(marker_keyset(fs, root, "done")) == 10

    def work(**options) -> WorkList:
        return WorkList(src=str(src), out_fs=fs, out_root=root, endpoint_url=None, **options)

    plain = work()
    assert plain.peek() == entries[15]  # listing stops at the first video to do
    todo = list(plain.entries())
    assert todo == entries[15:]
    counts = plain.counts
    assert (counts.files_listed, counts.already_done, counts.previously_failed) == (60, 10, 5)
    assert [e.key for e in work(retry_failed=True).entries()] == [e.key for e in entries[10:]]

    shards = [work(shard=(i, 3)) for i in range(3)]
    keys = [{e.key for e in w.entries()} for w in shards]
    assert set.union(*keys) == {e.key for e in entries[15:]} and sum(map(len, keys)) == 45
    assert all(w.counts.files_listed + w.counts.other_shards == 60 for w in shards)


def _write_lists(folder: Path) -> dict[str, Path]:
    rows = [
        {
            "url": "videos/a.mp4",
            "caption": "a cat",
            "license": "cc-by",
            "split": "train",
            "target_kbps": 50.0,
        },
        {"url": "s3://bucket/b.mp4", "caption": None, "license": None, "split": "val", "target_kbps": None},
        {"url": "", "caption": "no uri", "license": None, "split": None, "target_kbps": None},
        {"url": "/abs/c.mp4", "caption": "bad target", "license": None, "split": None, "target_kbps": -3.0},
    ]
    folder.mkdir()
    paths = {"parquet": folder / "list.parquet", "csv": folder / "list.csv", "jsonl": folder / "list.jsonl"}
    pq.write_table(pa.Table.from_pylist(rows), paths["parquet"])
    header = "url,caption,license,split,target_kbps,extra\n"
    body = "".join(
        ",".join(
            "" if r[k] is None else str(r[k]) for k in ("url", "caption", "license", "split", "target_kbps")
        )
        + ",ignored\n"
        for r in rows
    )
    paths["csv"].write_text(header + body)
    paths["jsonl"].write_text(
        "".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows)
    )
    return paths


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_input_lists_in_three_formats(tmp_path: Path, kind: str) -> None:
    path = _write_lists(tmp_path / "lists")[kind]
    source_list = SourceList(str(path))
    assert source_list.has_targets
    rows = list(source_list.rows())
    assert [r.uri for r in rows] == [
        str(tmp_path / "lists" / "videos" / "a.mp4"),
        "s3://bucket/b.mp4",
        "/abs/c.mp4",
    ]
    assert rows[0].metadata == {"caption": "a cat", "license": "cc-by", "split": "train"}
    assert rows[0].target.kind == "kbps" and rows[0].target.value == 50 and rows[0].error is None
    assert rows[1].metadata == {"split": "val"} and rows[1].target is None
    assert rows[2].error and "row 4" in rows[2].error and "/abs/c.mp4" in rows[2].error
    assert source_list.stats.rows == 4 and source_list.stats.rows_without_uri == 1
    entries = list(iter_sources(str(path)))
    assert entries[1].key == list_video_key("s3://bucket/b.mp4", None) and entries[1].size is None
    assert entries[0].metadata["caption"] == "a cat"


def test_bad_input_lists_are_one_line_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("name,caption\nx.mp4,hello\n")
    with pytest.raises(SourceListError, match="no URI column"):
        SourceList(str(bad))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not parquet at all")
    with pytest.raises(SourceListError, match="cannot read the list"):
        SourceList(str(garbage))
