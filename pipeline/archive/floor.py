"""The quality floor: no video is archived under a measured quality without saying so.

A neural codec can fail on content unlike what its model was trained on: the bundled GLVC model turns
a colour-bar test pattern into about 10 dB with wrong colours and a fine checkerboard into 6 dB, while
it keeps natural footage near 23–24 dB at 0.05 bpp. Nothing in the archive's rate control notices
(the rate is met), so the floor checks each video's *measured* quality before its commit.

Per video, not per GOP: a container holds one codec (its header names the decoder), so the unit that
can be coded again with another codec is the whole video. The value checked is the video's
frame-weighted mean over its measured GOPs (`--metrics-every`), the figure `ls` and `compare` show
for it. The worst GOP is deliberately not the test: one bad GOP (a slate of colour bars before a
programme) would otherwise send a whole hour of well-coded footage to the fallback codec; a mean under
the floor means the video as a whole is bad.

A video under the floor is either coded again, all of its GOPs, with the `--fallback` classic codec at
the same rate target (`fallback_target`), or, without a fallback, failed with one line that names it.
The manifest keeps both sides: `floor_metric`/`floor_value` on every row of a checked video, and on a
fallback's rows the attempt (`attempt_codec`, `attempt_psnr`, `attempt_vmaf`, `attempt_bytes`) and
`fallback_of` (the codec that fell under the floor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from codec.base import RateTarget
from codec.registry import CLASSIC_CODECS
from pipeline.archive.config import DEFAULT_QUALITY
from pipeline.archive.gop_result import GopResult
from pipeline.format.container_header import ContainerHeader

#: Codecs whose floor is on unless switched off (`--min-psnr 0`): their failures are content-dependent
#: and silent (`codec.registry.NEURAL_CODECS`). Classic codecs degrade gracefully with rate, so their
#: floor is off unless asked for; they are what a video under the floor can be coded again with.
FALLBACK_CODECS: tuple[str, ...] = CLASSIC_CODECS


@dataclasses.dataclass(frozen=True)
class Floor:
    """A floor on one metric of each video's measured quality (higher is better for both)."""

    metric: str  # "psnr" | "vmaf"
    value: float

    @property
    def flag(self) -> str:
        return f"--min-{self.metric}"

    def words(self, score: float) -> str:
        """'PSNR 11.2 dB' / 'VMAF 41.0'."""
        unit = " dB" if self.metric == "psnr" else ""
        return f"{self.metric.upper()} {score:.1f}{unit}"

    def limit_words(self) -> str:
        unit = " dB" if self.metric == "psnr" else ""
        return f"{self.value:g}{unit}"


def floor_of(min_psnr: float | None, min_vmaf: float | None) -> Floor | None:
    """The floor a resolved configuration asks for (0 or None: off)."""
    if min_vmaf:
        return Floor("vmaf", float(min_vmaf))
    if min_psnr:
        return Floor("psnr", float(min_psnr))
    return None


def video_score(results: Iterable[GopResult], frame_counts: Iterable[int], metric: str) -> float | None:
    """The frame-weighted mean of `metric` over the GOPs that measured it (None: none did)."""
    total = weight = 0.0
    for result, frames in zip(results, frame_counts, strict=True):
        value = result.metric(metric)
        if value is None or value != value:  # null or NaN: not measured
            continue
        total += float(value) * frames
        weight += frames
    return total / weight if weight else None


def under_floor_reason(source_uri: str, floor: Floor, score: float) -> str:
    """The one line a video failed under the floor gets (no fallback was given)."""
    return (
        f"{source_uri}: {floor.words(score)} is under the floor of {floor.limit_words()} ({floor.flag}); "
        f"archive it with --fallback x265 or lower the floor"
    )


def fallback_target(target: RateTarget | None, fallback: str) -> RateTarget:
    """The fallback's rate target: the same bits (`--target-bpp`/`--target-kbps`) — the point of the
    comparison is quality at equal rate —; a codec-native `--quality` (given, the default, or the
    setting a quality target's search chose) means nothing to another codec, so the fallback's own
    default CRF (`DEFAULT_QUALITY`) takes its place."""
    if target is not None and target.kind in ("bpp", "kbps"):
        return target
    return RateTarget("quality", DEFAULT_QUALITY[fallback])


def attempt_record(
    floor: Floor, codec: str, results: list[GopResult], frame_counts: list[int]
) -> dict[str, Any]:
    """What the manifest keeps of an attempt that fell under the floor (the video's means)."""
    return {
        "attempt_codec": codec,
        "attempt_psnr": video_score(results, frame_counts, "psnr"),
        "attempt_vmaf": video_score(results, frame_counts, "vmaf"),
        "attempt_bytes": sum(r.payload_bytes for r in results),
        "fallback_of": codec,
    }


#: The manifest columns of the floor, in `MANIFEST_SCHEMA` order.
FLOOR_COLUMNS: tuple[str, ...] = (
    "floor_metric",
    "floor_value",
    "attempt_codec",
    "attempt_psnr",
    "attempt_vmaf",
    "attempt_bytes",
    "fallback_of",
)


def floor_columns(header: ContainerHeader) -> dict[str, Any]:
    """A row's floor columns from its container header's `quality_floor` record (all null when the
    video was archived without a floor)."""
    record = header.extra.get("quality_floor") or {}
    return {
        "floor_metric": record.get("metric"),
        "floor_value": record.get("value"),
        **{name: record.get(name) for name in FLOOR_COLUMNS[2:]},
    }
