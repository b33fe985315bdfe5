"""The services every part of the driver loop shares, and nothing else: the run's settings and
identity, the encode pool, the Ray tasks, the counters and display, the run's tally, and OUT. The
scheduler and its collaborators (searches, references, the floor, packs, commits, leases) are given
this, never each other: a collaborator that needs the loop to act gets a callback for that one act."""

from __future__ import annotations

import dataclasses
from typing import Any

from pipeline.archive.actors import EncodePool
from pipeline.archive.config import ArchiveConfig
from pipeline.archive.progress import Counters, ProgressDisplay
from pipeline.archive.summary import RunTally
from pipeline.archive.tasks import RemoteTasks


@dataclasses.dataclass
class RunContext:
    cfg: ArchiveConfig
    run_id: str
    identity: dict[str, Any]  # the codec's identity (name, version, model, decoder options)
    pool: EncodePool
    counters: Counters
    display: ProgressDisplay
    tally: RunTally
    out_fs: Any
    out_root: str
    ray: Any  # the `ray` module (imported once, by the scheduler)
    tasks: RemoteTasks
