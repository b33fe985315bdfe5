"""Driver memory of discovery at dataset scale: a synthetic listing of N sources and M done markers.

Usage (repository root; a benchmark, not a test: run it niced):

    nice -n 19 python bench/scale_discovery.py --sources 10000000 --done 9990000
    nice -n 19 python bench/scale_discovery.py --sources 1000000 --done 999000 --compare

No videos and no object store: a fake S3 (`FakeListingS3`, an s3fs filesystem whose ListObjectsV2
answers from a generated key space: `src/part-NNNNN/clip-NNNNNNNN.mp4`, sizes from the index, and one
done marker per done source) feeds the same code the archive driver runs (`WorkList`: done and failed
marker KeySets, the streamed source listing, the done check per batch, `--shard`). Each measurement runs
in a fresh process, and reports the process's peak RSS (ru_maxrss), seconds, and what the stream
yielded. With `--with-ray` the process also starts a local Ray driver first (as `vidarc archive` does),
so its baseline is included.

`--compare` also measures, in its own process, what the driver held before streaming discovery: every
SourceEntry in a list and the done markers' names in a Python set (the fsspec listing dict that
`find` built on top of that is left out, so the old figure is a lower bound).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fsspec
from s3fs import S3FileSystem

from pipeline.format.keys import video_key

BUCKET = "bench"
PER_FOLDER = 1000


class FakeListingS3(S3FileSystem):
    """An S3 filesystem whose only call, ListObjectsV2, is answered from a generated key space
    (registered as `benchs3://`, so the archive code opens it like any fsspec URL)."""

    protocol = ("benchs3",)
    sources = 0
    done = 0

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, anon=True, **kwargs)

    async def _call_s3(self, method, *akwarglist, **kwargs):
        if method != "list_objects_v2":
            raise NotImplementedError(f"the fake S3 only lists, not {method}")
        prefix, start = kwargs["Prefix"], int(kwargs.get("ContinuationToken") or 0)
        count = kwargs.get("MaxKeys", 1000)
        if prefix == "src/":
            stop = min(self.sources, start + count)
            contents = [{"Key": _source_key(i), "Size": _size(i)} for i in range(start, stop)]
            total = self.sources
        elif prefix == "out/markers/done/":
            stop = min(self.done, start + count)
            contents = [{"Key": f"out/markers/done/{_key(i)}.json", "Size": 200} for i in range(start, stop)]
            total = self.done
        else:
            contents, stop, total = [], 0, 0
        reply = {"Contents": contents, "IsTruncated": stop < total}
        if stop < total:
            reply["NextContinuationToken"] = str(stop)
        return reply

    def isfile(self, path) -> bool:  # SRC is a prefix
        return False


fsspec.register_implementation("benchs3", FakeListingS3, clobber=True)


def _source_key(i: int) -> str:
    return f"src/part-{i // PER_FOLDER:05d}/clip-{i:08d}.mp4"


def _size(i: int) -> int:
    return 100_000 + (i * 7919) % 900_000


def _key(i: int) -> str:
    relative = _source_key(i).removeprefix("src/")
    return video_key(f"benchs3://{BUCKET}/{_source_key(i)}", _size(i), relative)


def _measure(args: argparse.Namespace) -> dict:
    if args.with_ray:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    FakeListingS3.sources, FakeListingS3.done = args.sources, args.done
    fs = FakeListingS3()
    started = time.perf_counter()
    if args.mode == "old":
        from pipeline.archive.discovery import SourceEntry

        entries = []
        for i in range(args.sources):
            uri, relative = f"benchs3://{BUCKET}/{_source_key(i)}", _source_key(i).removeprefix("src/")
            entries.append(
                SourceEntry(uri=uri, relative=relative, size=_size(i), key=video_key(uri, _size(i), relative))
            )
        done = {_key(i) for i in range(args.done)}
        todo = [e for e in entries if e.key not in done]
        result = {"todo": len(todo), "listed": len(entries), "done": len(done)}
    else:
        from pipeline.archive.worklist import WorkList

        work = WorkList(
            src=f"benchs3://{BUCKET}/src",
            out_fs=fs,
            out_root=f"{BUCKET}/out",
            endpoint_url=None,
            shard=tuple(map(int, args.shard.split("/"))) if args.shard else None,
        )
        keyset_seconds = time.perf_counter() - started
        todo = sum(1 for _ in work.entries())
        counts = work.counts
        result = {
            "todo": todo,
            "listed": counts.files_listed,
            "other_shards": counts.other_shards,
            "done": counts.already_done,
            "done_keyset_mb": work.done.nbytes / 1e6,
            "keyset_seconds": round(keyset_seconds, 1),
        }
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return result


def _run(mode: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--measure",
        mode,
        "--sources",
        str(args.sources),
        "--done",
        str(args.done),
    ]
    if args.shard:
        command += ["--shard", args.shard]
    if args.with_ray:
        command.append("--with-ray")
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sources", type=int, default=10_000_000)
    parser.add_argument("--done", type=int, default=9_990_000)
    parser.add_argument("--shard", default=None, help="i/n")
    parser.add_argument("--with-ray", action="store_true", help="start a local Ray driver first")
    parser.add_argument("--compare", action="store_true", help="also measure the old in-memory listing")
    parser.add_argument("--measure", choices=("new", "old"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        args.mode = args.measure
        print(json.dumps(_measure(args)))
        return
    new = _run("new", args)
    print(f"streaming: {json.dumps(new)}")
    if args.compare:
        old = _run("old", args)
        print(f"in memory: {json.dumps(old)}")
        print(f"peak RSS old/new: {old['peak_rss_mb'] / new['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
