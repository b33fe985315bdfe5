"""The write side: the archive job on Ray (`vidarc archive SRC OUT`).

Modules, in the order a video meets them: `discovery` (list and probe SRC), `plan` (GOP spans),
`driver` (`run_archive`: the job from start to summary), `scheduler` (the loop over probes, GOPs and
commits), `actors` (the encode actor pool) running `encode_worker` (codec + metrics, quality searches
via `quality_target`), `searches` (per-video search bookkeeping, cached by `search_cache`),
`video_writer` (container, manifest part, done marker), `failures` (failed rows and markers),
`summary` (summary.json), `progress` (live counters), `config` (the job's options).

The write side uses the read side (container format, storage, run records); the read side never
imports anything from here.

`run_archive`, `ArchiveResult` and `ArchiveError` are loaded on first use (PEP 562): importing a
small module of this package (say `plan`) loads that module alone, not the driver, Ray and every
module the driver needs, and no module here reaches itself through the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.archive.driver import ArchiveResult, run_archive
    from pipeline.archive.errors import ArchiveError

__all__ = ["ArchiveError", "ArchiveResult", "run_archive"]
_HOMES = {"ArchiveResult": "pipeline.archive.driver", "run_archive": "pipeline.archive.driver",
          "ArchiveError": "pipeline.archive.errors"}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
