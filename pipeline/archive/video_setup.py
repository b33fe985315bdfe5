"""From a probed source to the plan of its archive object: GOP spans, the container header (geometry,
rate, colour, codec identity, target, what is kept of the source's precision, lineage of a migration)
and the `VideoJob` the writer commits. Pure bookkeeping: no Ray, no storage."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

from codec.errors import CodecError
from codec.registry import codec_class
from pipeline.archive import discovery
from pipeline.archive.plan import plan_gops
from pipeline.archive.run_context import RunContext
from pipeline.archive.video_writer import VideoJob
from pipeline.format.container_header import ContainerHeader
from pipeline.sources import media


class JobBuilder:
    def __init__(self, ctx: RunContext, floor_record: dict[str, Any] | None) -> None:
        self.ctx = ctx
        self.floor_record = floor_record  # the header's `quality_floor` record (None: no floor)
        self.codec_class = codec_class(ctx.cfg.codec)
        self.gop_cache: dict[Fraction, int | str] = {}

    def build(self, outcome: discovery.ProbeOutcome, probe_seconds: float) -> VideoJob | str:
        """The video's job, or a one-line reason it cannot be archived (a GOP length the codec refuses)."""
        ctx, cfg = self.ctx, self.ctx.cfg
        entry, info = outcome.entry, outcome.info
        assert info is not None
        gop_frames = self.gop_frames(info.fps)
        if isinstance(gop_frames, str):
            return f"{entry.uri}: {gop_frames}"
        spans = tuple(plan_gops(info.frame_count, gop_frames, info.frame_pts, info.keyframe_pts))
        identity = ctx.identity
        fields = dict(
            info.header_fields(),
            **{k: identity.get(k) for k in ("codec", "codec_version", "model_id", "model_sha256")},
            decoder_options=identity.get("decoder_options") or {},
            entropy_coder=identity.get("entropy_coder"),
            video_key=entry.key,
            source_uri=entry.uri,
            source_bytes=entry.size,
            target=entry.target.to_record() if entry.target else cfg.target_record(),
            gop_frames=gop_frames,
            run_id=ctx.run_id,
            **precision(identity, info),
        )
        if entry.metadata:
            fields["source_metadata"] = dict(entry.metadata)
        if outcome.lineage is not None:  # a migration: what is known of the source, and the parent
            fields.update(outcome.inherited or {}, lineage=outcome.lineage)
        if cfg.quality_goal is not None:
            fields["quality_goal"] = cfg.quality_goal.as_record()
        if self.floor_record is not None:
            fields["quality_floor"] = self.floor_record
        header = ContainerHeader.from_dict(fields)
        if header.source_note:
            ctx.tally.warning(
                {"video_key": entry.key, "source_uri": entry.uri, "warning": header.source_note}
            )
            ctx.display.log(f"warning: {entry.uri}: {header.source_note}")
        return VideoJob(
            video_key=entry.key,
            source_uri=entry.uri,
            source_bytes=entry.size,
            out=cfg.out,
            run_id=ctx.run_id,
            endpoint_url=cfg.endpoint_url,
            header=header,
            spans=spans,
            has_audio=info.has_audio,
            metadata=entry.metadata,
            compute={"probe": probe_seconds},
            storage_class=cfg.storage_class,
            lineage=outcome.lineage,
            parent=entry.parent,
            source_check=self.source_check() if entry.parent is not None else None,
        )

    def source_check(self) -> dict[str, Any]:
        """A migrated video's `source_psnr` settings (`source_quality`)."""
        spec = self.ctx.cfg.migration
        return {"fraction": spec.source_fraction if spec else 0.0, "model": self.ctx.cfg.model}

    def gop_frames(self, fps: Fraction) -> int | str:
        """The GOP length for a video at `fps`, or a one-line reason it cannot be used. Computed here
        from the codec's class: the driver never waits on an actor (behind its queued encodes)."""
        if fps not in self.gop_cache:
            try:
                self.gop_cache[fps] = self.codec_class.gop_frames_for(self.ctx.cfg.gop_frames, fps)
            except CodecError as exc:
                self.gop_cache[fps] = str(exc)
        return self.gop_cache[fps]


def precision(identity: dict[str, Any], info: media.VideoInfo) -> dict[str, Any]:
    """What the archive keeps of the source's precision (`coded_bit_depth`, `coded_chroma`), and a note of
    anything it does not keep: a truncated source, bits or chroma the codec cannot store."""
    kept = int(identity.get("max_bit_depth") or 8)
    coded = min(info.bit_depth, kept) if info.bit_depth > 8 else 8
    chroma = identity.get("coded_chroma")
    notes = [info.source_note()] if info.source_note() else []
    if coded < info.bit_depth:
        notes.append(f"{info.bit_depth}-bit source coded at {coded} bits ({identity.get('codec')})")
    if chroma and info.chroma in ("4:4:4", "4:2:2", "rgb", "4:4:0") and chroma != info.chroma:
        notes.append(f"{info.chroma} source coded as {chroma}")
    return {"coded_bit_depth": coded, "coded_chroma": chroma, "source_note": "; ".join(notes) or None}
