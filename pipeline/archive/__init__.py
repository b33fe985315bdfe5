"""The write side: the archive job on Ray (`vidarc archive SRC OUT`).

Modules, in the order a video meets them: `discovery` (list and probe SRC), `plan` (GOP spans),
`driver` (`run_archive`: the job from start to summary), `scheduler` (the loop over probes, GOPs and
commits), `actors` (the encode actor pool) running `encode_worker` (codec + metrics, quality searches
via `quality_target`), `searches` (per-video search bookkeeping, cached by `search_cache`),
`video_writer` (container, manifest part, done marker), `failures` (failed rows and markers),
`summary` (summary.json), `progress` (live counters), `config` (the job's options).

The write side uses the read side (container format, storage, run records); the read side never
imports anything from here.
"""

from pipeline.archive.driver import ArchiveResult, run_archive
from pipeline.archive.errors import ArchiveError

__all__ = ["ArchiveError", "ArchiveResult", "run_archive"]
