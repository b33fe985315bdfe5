"""The quality floor in the driver loop: check a video once all its GOPs are coded, before its commit.

The floor itself (what is measured, per video and why, the default levels) is `floor.py`. Here:
- a video whose frame-weighted mean is under the floor, without `--fallback`, fails with one line
  (`floor.under_floor_reason`), so the run exits 1 and the summary lists it;
- with `--fallback x265`, its GOPs are queued again for the fallback codec, at the same rate target
  (`floor.fallback_target`), on a fallback encode actor started the first time one is needed (a run
  whose videos all pass never pays for it). The attempt's bytes are dropped; its codec, quality and
  size go into the header's `quality_floor` record and from there into every manifest row. The
  fallback's own result is stored whatever it measures (it is the best the job can do at that rate;
  the row says so, `fallback_of`), with a warning when it too is under the floor.

The fallback actor is a classic-codec `EncodeWorker` on CPU (no GPU asked), with half a CPU so that it
never starves the decode tasks feeding it while the main pool holds its own CPUs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pipeline.archive.actors import EncodePool
from pipeline.archive.errors import ArchiveError
from pipeline.archive.floor import (
    Floor,
    attempt_record,
    fallback_target,
    floor_of,
    under_floor_reason,
    video_score,
)
from pipeline.archive.gop_result import GopResult
from pipeline.archive.run_context import RunContext
from pipeline.archive.video_state import Video

#: CPUs the fallback encode actor reserves (Ray's logical CPUs; its encoder may use more threads).
FALLBACK_ACTOR_CPUS = 0.5

#: The codec identity fields a fallback replaces in the video's header.
IDENTITY_FIELDS: tuple[str, ...] = ("codec", "codec_version", "model_id", "model_sha256", "entropy_coder")


class FloorKeeper:
    """Checks each finished video against the run's floor; starts and holds the fallback pool."""

    def __init__(
        self,
        ctx: RunContext,
        *,
        fail: Callable[[Video, str], None],
        code_again: Callable[[Video], None],
    ) -> None:
        """`fail(video, reason)`: the loop records the video as failed; `code_again(video)`: the loop
        drops its coded GOPs and queues them all again (for the fallback codec)."""
        self.ctx, self.fail, self.code_again = ctx, fail, code_again
        self.cfg = ctx.cfg
        self.floor: Floor | None = floor_of(ctx.cfg.min_psnr, ctx.cfg.min_vmaf)
        self.pool: EncodePool | None = None
        self.pool_error: str | None = None
        self.identity: dict[str, Any] = {}
        self.fallbacks = 0  # videos coded again with the fallback
        self.unchecked = 0  # videos without a measured value of the floor's metric

    def header_record(self) -> dict[str, Any] | None:
        """The header's `quality_floor` record of a video checked against the floor."""
        return None if self.floor is None else {"metric": self.floor.metric, "value": self.floor.value}

    def holds(self, video: Video) -> bool:
        """Called with every GOP of `video` coded: True when the floor took the video (failed, or
        queued again for the fallback), False when it goes on to its commit."""
        floor = self.floor
        if floor is None:
            return False
        spans = video.job.spans
        metas = [video.metas[span.index] for span in spans]
        score = video_score(metas, [span.frame_count for span in spans], floor.metric)
        if score is None:
            self._unchecked(video, floor)
            return False
        if score >= floor.value:
            return False
        if video.fallback:  # the best the job can do at this rate: stored, and said
            self._warn(
                video,
                f"the fallback {self.cfg.fallback} reaches {floor.words(score)}, still under the floor of {floor.limit_words()} ({floor.flag})",
            )
            return False
        fallback = self.cfg.fallback
        if fallback is None:
            self.fail(video, under_floor_reason(video.job.source_uri, floor, score))
            return True
        self._fall_back(video, floor, score, fallback, metas)
        return True

    def _unchecked(self, video: Video, floor: Floor) -> None:
        """No GOP measured the floor's metric (VMAF failed, metrics switched off): archived, with a
        warning rather than in silence."""
        self.unchecked += 1
        self._warn(video, f"quality floor not checked: no GOP has a {floor.metric} value")

    def _warn(self, video: Video, note: str) -> None:
        """A warning in the log and in summary.json (printed by the CLI)."""
        self.ctx.tally.warning(
            {"video_key": video.job.video_key, "source_uri": video.job.source_uri, "warning": note}
        )
        self.ctx.display.log(f"warning: {video.job.source_uri}: {note}")

    def _fall_back(
        self, video: Video, floor: Floor, score: float, fallback: str, metas: list[GopResult]
    ) -> None:
        """Queue all of the video's GOPs again for the fallback codec, its header naming the fallback."""
        if self.start_pool() is None:  # the fallback codec cannot run: the video fails, saying both
            reason = under_floor_reason(video.job.source_uri, floor, score).split(";")[0]
            self.fail(video, f"{reason}; --fallback {fallback} cannot start: {self.pool_error}")
            return
        spans = video.job.spans
        attempt = attempt_record(floor, str(video.job.header.codec), metas, [s.frame_count for s in spans])
        target = fallback_target(video.target, fallback)
        header = video.job.header.updated(
            **{k: self.identity.get(k) for k in IDENTITY_FIELDS},
            decoder_options=self.identity.get("decoder_options") or {},
            target=target.to_record(),
            quality_floor={**(self.header_record() or {}), **attempt},
        )
        video.job = dataclasses.replace(video.job, header=header)
        video.target = target
        video.fallback = True
        self.code_again(video)
        self.fallbacks += 1
        self.ctx.display.log(
            f"{video.job.source_uri}: {floor.words(score)} is under the floor of {floor.limit_words()} "
            f"({floor.flag}); coding it again with {fallback}"
        )

    def start_pool(self) -> EncodePool | None:
        """The fallback encode pool (one CPU actor), started the first time a video needs it; None
        (and `pool_error` says why) when it cannot start."""
        if self.pool is None and self.pool_error is None:
            cfg = self.cfg
            assert cfg.fallback is not None
            fallback_cfg = dataclasses.replace(
                cfg,
                codec=cfg.fallback,
                model=None,
                device="cpu",
                num_gpus_per_actor=0.0,
                actors=1,
                cpus_per_actor=FALLBACK_ACTOR_CPUS,
                codec_options={},
                quality_goal=None,
                actor_resources=dict(cfg.task_resources),  # where the CPU work runs
            )
            try:
                self.pool, self.identity = EncodePool.start(fallback_cfg)
            except ArchiveError as exc:
                self.pool_error = str(exc)
        return self.pool

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.stop()

    def summary(self) -> dict[str, Any] | None:
        """The `quality_floor` section of summary.json."""
        if self.floor is None:
            return None
        return {
            "metric": self.floor.metric,
            "value": self.floor.value,
            "fallback": self.cfg.fallback,
            "fallback_videos": self.fallbacks,
            "unchecked_videos": self.unchecked,
        }
