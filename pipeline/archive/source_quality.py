"""A migrated video's PSNR against its original source (`source_psnr`), where that source still exists.

A migration's quality columns measure the new encode against the frames it was given, the parent's
decode; what a user also wants is how far the new generation is from the original. The source may be
long gone (that is often why archives are migrated), so this is best effort and never made up:

- measured in the commit task, before the video's rows are written, on a seeded sample of its GOPs
  (`--source-fraction F`: round(F·n) of its n GOPs, at least one, chosen by a hash of the video key
  and GOP index, so a rerun measures the same GOPs); 0 switches it off. A sample, not every GOP: the
  check decodes the new payload and the source again, on the CPU, beside the commit;
- only when the source at `source_uri` still is what was archived: the same sha256 as the parent's
  header recorded (and the same frame count). A source that changed since, cannot be read, is frozen or
  is gone gives null with the reason;
- the new GOP is decoded from its payload (the bytes a reader will get, on the CPU), the source GOP
  from the source (8-bit RGB), and their RGB PSNR is stored.

Every GOP left null says why in `metrics_note` ("source_psnr: ...").
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from pipeline.archive.gop_result import GopResult
from pipeline.archive.video_writer import VideoJob


def sampled_gops(video_key: str, gops: int, fraction: float) -> list[int]:
    """The GOPs of a video whose source PSNR is measured: round(fraction·gops), at least one (none
    when fraction is 0), the lowest by sha256 of "key/index"."""
    if fraction <= 0 or gops < 1:
        return []
    count = min(gops, max(1, round(fraction * gops)))
    ranked = sorted(range(gops), key=lambda i: hashlib.sha256(f"{video_key}/{i}".encode()).digest())
    return sorted(ranked[:count])


def measure(job: VideoJob, metas: list[GopResult], payloads: list[bytes]) -> list[GopResult]:
    """`metas` with `source_psnr` on the sampled GOPs (and a note on every GOP left null)."""
    check = job.source_check or {}
    fraction = float(check.get("fraction") or 0)
    chosen = sampled_gops(job.video_key, len(job.spans), fraction)
    values: dict[int, float] = {}
    reason = "not measured (--source-fraction 0)" if not chosen else None
    if chosen:
        try:
            values = _measure(job, chosen, payloads, check.get("model"))
        except _Unavailable as exc:
            reason = str(exc)
    out = []
    for i, meta in enumerate(metas):
        if i in values:
            meta = dataclasses.replace(meta, source_psnr=values[i])
        else:
            why = reason or f"GOP not in the source sample (--source-fraction {fraction:g})"
            note = meta.metrics_note
            meta = dataclasses.replace(
                meta, metrics_note=f"{note}; source_psnr: {why}" if note else f"source_psnr: {why}"
            )
        out.append(meta)
    return out


class _Unavailable(Exception):
    """The original source cannot be compared with (gone, changed, unreadable): one line."""


def _measure(job: VideoJob, chosen: list[int], payloads: list[bytes], model: str | None) -> dict[int, float]:
    from codec.registry import decoder_for
    from pipeline.metrics.fidelity import psnr_rgb
    from pipeline.sources import media
    from pipeline.store.storage import describe, filesystem

    uri, header = job.source_uri, job.header
    try:
        fs, path = filesystem(uri, endpoint_url=job.endpoint_url)
        if not fs.exists(path):
            raise _Unavailable(f"the original source {uri} no longer exists")
        info = media.probe(uri, endpoint_url=job.endpoint_url, sha256=True)
    except _Unavailable:
        raise
    except (media.NotAVideo, media.SourceError) as exc:
        raise _Unavailable(f"the original source cannot be read ({exc})") from None
    except Exception as exc:  # frozen, denied, unreachable
        raise _Unavailable(describe(exc, uri)) from None
    expected = header.source_sha256
    if not expected:
        raise _Unavailable("the parent recorded no source sha256, so the source cannot be confirmed")
    if info.source_sha256 != expected:
        raise _Unavailable(f"the original source {uri} changed since it was archived (sha256 differs)")
    if info.frame_count != header.frame_count:
        raise _Unavailable(
            f"the original source has {info.frame_count} frames, the archive {header.frame_count}"
        )
    width, height = header.width, header.height
    decoder = decoder_for(header, model=model, device="cpu")
    values = {}
    for i in chosen:
        span = job.spans[i]
        pts = (
            tuple(info.frame_pts[span.first_frame : span.first_frame + span.frame_count])
            if info.frame_pts
            else None
        )
        source = media.decode_spans(
            uri,
            [(span.first_frame, span.frame_count, pts)],
            endpoint_url=job.endpoint_url,
            size=(width, height),
        )[0]
        recon = decoder.decode(payloads[i], span.frame_count, width, height)
        values[i] = float(psnr_rgb(_eight_bit(source), _eight_bit(recon)))
    return values


def _eight_bit(frames: np.ndarray) -> np.ndarray:
    if frames.dtype == np.uint16:
        return ((frames.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return frames
