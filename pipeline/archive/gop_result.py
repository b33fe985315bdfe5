"""What the encode actor returns for one GOP besides its payload: the driver reads it for progress, the
floor, the reference and searches; the commit task turns it into the GOP's manifest row.

A plain dataclass (it crosses Ray pickled), one field per thing a reader of it uses, so a misspelled
key is an AttributeError where it is made, not a null column in every manifest.
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class GopResult:
    """One coded GOP's record; `error` set (and nothing else) when the codec refused it."""

    payload_bytes: int = 0
    bpp: float = 0.0
    kbps: float = 0.0
    encode_seconds: float = 0.0
    device: str | None = None
    #: The settings the rate control chose (`EncodedGop.params`; a quality search's record under
    #: "quality_search"), stored as the row's `codec_params`.
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: The decode proof (`pipeline.format.digests`): null where the codec skipped its pixel decode.
    recon_sha256: str | None = None
    exact_sha256: str | None = None
    fingerprint: bytes | None = None
    #: Quality columns measured on this GOP (`pipeline.metrics.METRIC_COLUMNS`; None: not computed).
    metrics: dict[str, float | None] = dataclasses.field(default_factory=dict)
    metrics_note: str | None = None
    #: A migrated GOP's PSNR against the original source (`source_quality`), where measured.
    source_psnr: float | None = None
    #: Device-seconds per stage and the device kind (`EncodeWorker._compute`; `accounting.row_columns`).
    compute: dict[str, Any] = dataclasses.field(default_factory=dict)
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> GopResult:
        """A GOP the codec refused: one line naming it."""
        return cls(error=error)

    def metric(self, name: str) -> float | None:
        """The GOP's value of quality metric `name` (None: not measured)."""
        return self.metrics.get(name)

    def quality_columns(self) -> dict[str, Any]:
        """The manifest row's quality columns: the measured metrics, the note, `source_psnr`."""
        return {**self.metrics, "metrics_note": self.metrics_note, "source_psnr": self.source_psnr}
