"""Check that the direct build of the compacted layout (`bench/synthetic_archive.build_compacted_direct`)
makes the same archive as the parts layout compacted by the real `vidarc compact`, as readers see it.

    nice -n 19 python -m bench.check_direct_compacted --work /tmp/scale-reads --n 2000 --batch 250

Builds N synthetic videos twice from the cached base archive (WORK/base, made by bench/scale_reads.py):
`WORK/check-direct/n<N>/parts` (one manifest part per video, then `compact` and the index backfill
`vidarc compact` does for an archive without `index/FORMAT.json`) and `.../direct` (one
compacted file per batch, then `compact`, which merges them once there are 8 or more, then the merged
files removed as `bench.scale_reads --direct-compacted` does), then compares, with each archive's own
folder replaced by ROOT: the manifest rows readers see (`plan_manifest` + `iter_tables`, every column),
`source_part`, the done markers and index entries (every file, byte for byte), and the output of
`vidarc ls --json`, `vidarc audit --json` and `vidarc restore` of a few keys (stdout and the restored
file's sha256). Exits 1 on any difference. A check, not a timed benchmark; a few minutes at N = 2,000.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import synthetic_archive as sa  # noqa: E402


def build_both(work: Path, n: int, batch: int) -> tuple[str, str]:
    from pipeline.read.locate import backfill_index
    from pipeline.tools.compact import compact

    base_out = sa.make_base(work)
    bases = sa.load_base(base_out)
    meta = {"base": sa.base_fingerprint(base_out)}
    folder = work / "check-direct" / f"n{n}"
    shutil.rmtree(folder, ignore_errors=True)
    parts, direct = str(folder / "parts"), str(folder / "direct")
    pool = work / "linkpool"

    started = time.perf_counter()
    sa.Replicator(bases, base_out, parts, endpoint_url=None, pool_dir=pool, threads=2).run(
        0, n, label="parts"
    )
    report = compact(parts)
    indexed = backfill_index(
        parts
    )  # what `vidarc compact` does next for an archive without index/FORMAT.json
    print(f"parts layout + compact: {time.perf_counter() - started:.1f} s; {report.line()}; index backfilled "
          f"({indexed} videos)", flush=True)  # fmt: skip

    started = time.perf_counter()
    rep = sa.Replicator(bases, base_out, direct, endpoint_url=None, pool_dir=pool, threads=4, parts=False)
    built = sa.build_compacted_direct(rep, n, meta, batch=batch, label="direct")
    report = compact(direct)  # merges the batch files once there are MERGE_MIN_FILES of them
    removed = compact(direct, merged_grace_seconds=0).superseded_removed
    print(f"direct build: {time.perf_counter() - started:.1f} s ({built}); {report.line()}; "
          f"{removed} merged-away files removed", flush=True)  # fmt: skip
    return parts, direct


def manifest_rows(root: str) -> object:
    import pyarrow as pa

    from pipeline.read.manifest_layout import plan_manifest
    from pipeline.store.storage import filesystem

    fs, path = filesystem(root)
    plan = plan_manifest(fs, path)
    from pipeline.read.manifest_layout import iter_tables

    table = pa.concat_tables(list(iter_tables(plan)))
    return table.sort_by([("video_key", "ascending"), ("gop_index", "ascending")])


def compacted_layout(root: str) -> list[str]:
    import pyarrow.parquet as pq

    lines = []
    for path in sorted((Path(root) / "manifest").glob("*.parquet")):
        meta = pq.ParquetFile(path).metadata
        groups = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        keys = sorted(k.decode() for k in (meta.metadata or {}))
        lines.append(f"{path.name}: {meta.num_rows} rows, row groups {groups}, metadata {keys}")
    return lines


def normalize(text: str, root: str) -> str:
    from pipeline.store.storage import redact

    return text.replace(root, "ROOT").replace(redact(root), "ROOT")


def tree(root: str, folder: str) -> dict[str, str]:
    base = Path(root) / folder
    return {p.relative_to(base).as_posix(): normalize(p.read_text(), root) for p in base.rglob("*.json")}


def cli(root: str, *args: str, tmp: Path) -> tuple[str, str | None]:
    """(normalized stdout + exit code, sha256 of the file written at tmp/out.mp4, if any)."""
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    argv = [sys.executable, "-m", "jobs.cli", *[a.replace("{tmp}", str(tmp)) for a in args]]
    run = subprocess.run(argv, cwd=REPO, env=sa.child_env(), capture_output=True, text=True)
    out = tmp / "out.mp4"
    digest = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None
    text = normalize(run.stdout, root).replace(str(tmp), "TMP") + f"\n[exit {run.returncode}]"
    return text, digest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="/tmp/scale-reads")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument(
        "--batch", type=int, default=250, help="videos per compacted file of the direct build"
    )
    parser.add_argument("--keys", type=int, default=3, help="videos restored from each archive")
    args = parser.parse_args(argv)
    work = Path(args.work).resolve()
    parts, direct = build_both(work, args.n, args.batch)
    failures = []

    for root in (parts, direct):
        print(f"{root}:\n  " + "\n  ".join(compacted_layout(root)))

    a, b = manifest_rows(parts), manifest_rows(direct)
    if a.num_rows != b.num_rows or a.column_names != b.column_names:
        failures.append(f"manifest: {a.num_rows} vs {b.num_rows} rows")
    else:
        for name in a.column_names:
            x, y = a.column(name).to_pylist(), b.column(name).to_pylist()
            if name == "archive_uri":
                x = [normalize(v, parts) if v else v for v in x]
                y = [normalize(v, direct) if v else v for v in y]
            if x != y:
                failures.append(f"manifest column {name} differs")
    print(f"manifest rows as readers see them: {a.num_rows} rows, {len(a.column_names)} columns compared")

    import pyarrow.parquet as pq

    def sources(root: str) -> list[tuple[str, str]]:
        tables = [
            pq.read_table(p, columns=["video_key", "source_part"])
            for p in (Path(root) / "manifest").glob("*.parquet")
        ]
        return sorted(
            {(k, s) for t in tables for k, s in zip(*(c.to_pylist() for c in t.columns), strict=True)}
        )

    if sources(parts) != sources(direct):
        failures.append("source_part differs")

    for folder in ("markers", "index"):
        x, y = tree(parts, folder), tree(direct, folder)
        if x != y:
            differ = sorted(set(x) ^ set(y)) or [k for k in x if x[k] != y.get(k)]
            failures.append(f"{folder}/: {len(x)} vs {len(y)} files; first difference {differ[:3]}")
        print(f"{folder}/: {len(x)} files compared")

    tmp = work / "check-direct" / "tmp"
    keys = [sa.synthetic_name(sa.load_base(work / "base" / "out")[i % sa.BASE_VIDEOS], i)[0]
            for i in (0, args.n // 2, args.n - 1)][: args.keys]  # fmt: skip
    commands = [("ls", "{root}", "--json"), ("audit", "{root}", "--json")]
    commands += [("restore", "{root}", key, "{tmp}/out.mp4") for key in keys]
    for command in commands:
        results = []
        for root in (parts, direct):
            results.append(cli(root, *[c.replace("{root}", root) for c in command], tmp=tmp))
        same = results[0] == results[1]
        label = " ".join(command[:1] + command[2:]).replace("{tmp}/", "")
        print(f"vidarc {label}: {'same' if same else 'DIFFERENT'} ({len(results[0][0])} chars of output"
              + (f", restored file sha256 {results[0][1][:12]}" if results[0][1] else "") + ")", flush=True)  # fmt: skip
        if not same:
            failures.append(f"vidarc {label}: {results[0][0][:300]!r} vs {results[1][0][:300]!r}")
    shutil.rmtree(tmp, ignore_errors=True)
    for failure in failures:
        print(f"DIFFERENCE: {failure}")
    print("equivalent" if not failures else f"{len(failures)} differences")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
