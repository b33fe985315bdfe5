"""Temporal stability: does the decoded video flicker where the source does not?

Definition (`temporal_flicker`, 8-bit luma units, lower is better, 0 = the codec's error does not change
from frame to frame): with Y_s and Y_r the BT.709 luma of source and reconstruction,

    flicker = mean over t, pixels of | (Y_r[t+1] - Y_r[t]) - (Y_s[t+1] - Y_s[t]) |

i.e. how far the decoded frame-to-frame change departs from the source's own change. Equivalently it is
the mean absolute *temporal difference of the error* e[t] = Y_r[t] - Y_s[t]. A constant error (a
slightly dark but steady picture) scores 0 however large it is, because per-frame metrics (PSNR,
LPIPS) already charge for it; an error that changes sign or texture between frames — pumping brightness,
boiling grain, crawling hallucinated detail from a generative decoder — scores high even when each
frame alone looks fine. Motion in the source cancels out because the source's own change is subtracted.
Errors that are independent from frame to frame (std σ) score about 1.13·σ: temporal noise is flicker
too, so compare codecs at similar PSNR, where a steadier decoder scores lower.

It needs no learned weights, so it is always available (null only for single-frame GOPs). An
LPIPS-based variant would weigh textures perceptually but depends on backbone weights; the luma
definition is kept as the column so archives without those weights stay comparable.
"""

from __future__ import annotations

import numpy as np

from pipeline.metrics.fidelity import pixel_metrics

SINGLE_FRAME_NOTE = "temporal_flicker: single-frame GOP has no frame-to-frame change"


def temporal_flicker(source: np.ndarray, recon: np.ndarray) -> tuple[float | None, str | None]:
    """(flicker, None), or (None, note) for a GOP with fewer than two frames. Computed in
    `fidelity.pixel_metrics`' single pass, beside PSNR and PSNR-Y, which share its luma error."""
    flicker = pixel_metrics(source, recon).temporal_flicker
    if flicker is None:
        return None, SINGLE_FRAME_NOTE
    return flicker, None
