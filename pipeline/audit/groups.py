"""How the audit groups rows: by codec and target, under one label every table and report uses."""

from __future__ import annotations

#: Target kinds that are bitrates (the others are quality metrics or a codec's own quality scale).
RATE_TARGETS = ("kbps", "bpp")


def group_label(codec: str | None, kind: str | None, value: float | None) -> str:
    """`x264 bpp=0.05`: a group's codec and target ("?" for what older rows lack)."""
    return f"{codec or '?'} {kind or '?'}={value:g}" if value is not None else f"{codec or '?'} {kind or '?'}"
