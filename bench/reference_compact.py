"""What compacting the classic reference's parts saves `vidarc audit` (and `ls`): CPU-seconds of the
command on an archive of N videos whose reference rows sit in N `reference/part-*.parquet` files, then
on the same archive after `vidarc compact` (`pipeline/tools/compact_reference.py`), with the JSON each
prints checked identical.

The base archive is real (`vidarc archive SRC BASE --reference x265 --no-compact`, e.g. on `samples/`);
synthetic video i is base video i % B under a new key (its manifest rows and reference rows with
`video_key`, `source_uri` and `archive_uri` replaced, written by `parquet_bytes` with valid checksums,
and a done marker). The manifest is then compacted *without* the reference (`compact(...,
reference_min_parts=huge)`) and indexed (`backfill_index`, as `vidarc compact` does), so the
before/after difference is the reference parts alone.

    python bench/reference_compact.py BASE WORK --videos 10000

CPU-seconds are the child's user + system time (`RUSAGE_CHILDREN`), each command run `--repeat` times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def build(base: Path, out: Path, videos: int) -> dict[str, int]:
    """The synthetic archive at `out` (removed first): `videos` videos, every one with a reference part."""
    from pipeline.format.keys import video_key
    from pipeline.format.runinfo import manifest_path, marker_path, write_json
    from pipeline.format.schema import MANIFEST_SCHEMA, REFERENCE_SCHEMA
    from pipeline.read.manifest import ArchiveParts, parquet_bytes
    from pipeline.store.storage import filesystem, write_bytes

    manifest = ArchiveParts(str(base), "manifest").read().to_pylist()
    reference = ArchiveParts(str(base), "reference").read().to_pylist()
    bases = sorted({row["video_key"] for row in reference})
    if not bases:
        raise SystemExit(f"{base}: no reference rows (archive it with --reference)")
    by_key = {key: ([r for r in manifest if r["video_key"] == key], [r for r in reference if r["video_key"] == key])
              for key in bases}  # fmt: skip
    shutil.rmtree(out, ignore_errors=True)
    fs, root = filesystem(str(out))
    rows = 0
    for i in range(videos):
        original = bases[i % len(bases)]
        name = original.rsplit("-", 1)[0]
        uri = f"file:///synthetic/{i:07d}/{name}"
        key = video_key(uri, i, name)
        names = {"video_key": key, "source_uri": uri, "archive_uri": f"{out}/videos/{key}.vdrc"}
        manifest_rows, reference_rows = by_key[original]
        new_manifest = [{**r, **{k: v for k, v in names.items() if k in r}} for r in manifest_rows]
        new_reference = [{**r, **{k: v for k, v in names.items() if k in r}} for r in reference_rows]
        write_bytes(fs, manifest_path(root, key), parquet_bytes(new_manifest, MANIFEST_SCHEMA))
        write_bytes(
            fs, f"{root}/reference/part-{key}.parquet", parquet_bytes(new_reference, REFERENCE_SCHEMA)
        )
        write_json(fs, marker_path(root, "done", key), {"video_key": key, "source_uri": uri})
        rows += len(new_reference)
    return {"videos": videos, "reference_parts": videos, "reference_rows": rows}


def cpu_of(argv: list[str]) -> tuple[float, float, str]:
    """(CPU-seconds user + system, wall seconds, stdout) of one child process (and whatever children it
    waited for: `RUSAGE_CHILDREN`)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), RAY_AUTH_MODE="disabled")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=env, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="a real archive written with --reference")
    parser.add_argument("work", type=Path, help="where the synthetic archive is built (replaced)")
    parser.add_argument("--videos", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    from pipeline.read.locate import backfill_index
    from pipeline.tools.compact import compact

    out = args.work / "archive"
    started = time.perf_counter()
    built = build(args.base, out, args.videos)
    manifest_only = compact(str(out), reference_min_parts=sys.maxsize)
    assert manifest_only.reference.parts_absorbed == 0
    backfill_index(str(out))  # what `vidarc compact` does besides compacting: done here, before
    print(f"built {built} in {time.perf_counter() - started:.0f} s; manifest compacted, reference parts kept")
    python = sys.executable
    commands = {
        "audit": [python, "-m", "jobs.cli", "audit", str(out), "--json"],
        "ls": [python, "-m", "jobs.cli", "ls", str(out), "--json"],
    }
    result: dict[str, object] = {"built": built}
    outputs: dict[str, dict[str, str]] = {}
    for stage in ("before", "after"):
        if stage == "after":
            cpu, wall, said = cpu_of([python, "-m", "jobs.cli", "compact", str(out)])
            result["compact"] = {
                "cpu_s": round(cpu, 2),
                "wall_s": round(wall, 2),
                "said": said.strip()[-300:],
            }
            print(f"vidarc compact: {cpu:.2f} CPU-s ({wall:.1f} s wall): {said.strip()}")
        for name, argv in commands.items():
            runs = [cpu_of(argv) for _ in range(args.repeat)]
            outputs.setdefault(name, {})[stage] = runs[0][2]
            cpus = [round(c, 2) for c, _, _ in runs]
            result[f"{name}_{stage}_cpu_s"] = cpus
            print(f"{name} {stage}: CPU-s {cpus}, wall {[round(w, 1) for _, w, _ in runs]}")
    parts = sorted(p.name.split("-")[0] for p in (out / "reference").iterdir())
    result["reference_files_after"] = {kind: parts.count(kind) for kind in sorted(set(parts))}
    for name, by_stage in outputs.items():
        same = json.loads(by_stage["before"]) == json.loads(by_stage["after"])
        result[f"{name}_json_identical"] = same
        print(f"{name} --json identical before and after: {same}")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
