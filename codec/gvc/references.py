"""Coding of GVC's side information: reference/boundary stills and I2V's tail latent residual.

An archive cannot take the reference implementation's "free first frame": every pixel the decoder sees
must come from the payload. I2V's first frame and FLF2V's boundary frames are therefore coded as stills
and counted in the rate. The still coders are SVT-AV1 on a single frame (a key frame is AV1's intra
coder, close to AVIF) through `codec.classic.Av1Codec`, and — where the model directory holds a GLVC
latent codec — a one-frame GLVC GOP (its intra path). Both hit a bit budget on the actual bytes; the
one with the lower error at the budget is kept, and its name is stored in the section.

Tail residual (I2V): Δ = x0[:, −1] − x̂0[:, −1], the last latent frame's error after sampling. It is
quantised uniformly with one step size (stored as float32) and the integer symbols are zlib-coded
(the project's learned entropy coder works on GLVC latents, not on these residuals). The step is
searched so the section fits its share of the budget.
"""

from __future__ import annotations

import struct
import zlib
from fractions import Fraction

import numpy as np
import torch

from codec.base import Codec, RateTarget
from codec.errors import CodecError, CorruptPayloadError

TAIL_CODER = "q8-zlib"
_STILL_FPS = Fraction(1)
_TAIL_HEADER = struct.Struct("<f")
#: CRF for stills when the GOP has a quality (atoms per step) target rather than a bit budget.
QUALITY_TARGET_CRF = 40


class StillCoders:
    """The still coders GVC may use for reference frames, built on first use, looked up by name.

    "av1" is always available; "glvc" (a one-frame GLVC GOP: the tokenizer's first latent frame through
    the latent codec's intra path) is offered when the model directory holds a GLVC latent codec.
    """

    def __init__(self, glvc_model: str | None = None, device: str = "cpu") -> None:
        self.glvc_model, self.device = glvc_model, device
        self._built: dict[str, Codec] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return ("av1", "glvc") if self.glvc_model is not None else ("av1",)

    def get(self, name: str) -> Codec:
        if name not in self.names:
            raise CorruptPayloadError(
                f"GVC reference frame uses still coder {name!r}, which this decoder lacks"
            )
        if name not in self._built:  # the classes themselves, not the registry (which builds GVC)
            if name == "glvc":
                from codec.glvc.codec import GlvcCodec

                self._built[name] = GlvcCodec(model=self.glvc_model, device=self.device)
            else:
                from codec.classic import Av1Codec

                self._built[name] = Av1Codec()
        return self._built[name]


def code_still(
    frame: np.ndarray, bits_budget: float | None, coders: StillCoders
) -> tuple[str, bytes, np.ndarray]:
    """(coder name, bytes, decoded frame) for one uint8 H×W×3 still.

    With a budget, every available coder encodes at it and the best PSNR among those within 10% of
    the budget wins (the smallest payload if none is); without one, AV1 at QUALITY_TARGET_CRF.
    """
    height, width = frame.shape[:2]
    if bits_budget is None:
        encoded = coders.get("av1").encode(frame[None], RateTarget("quality", QUALITY_TARGET_CRF), _STILL_FPS)
        return "av1", encoded.payload, encoded.reconstruction[0]
    target = RateTarget("bpp", max(bits_budget, 64.0) / (width * height))
    candidates = []
    for name in coders.names:
        try:
            encoded = coders.get(name).encode(frame[None], target, _STILL_FPS)
        except CodecError:
            if name == "av1":
                raise
            continue  # e.g. GLVC refuses a geometry: AV1 still codes it
        mse = float(np.mean((encoded.reconstruction[0].astype(np.float64) - frame) ** 2))
        fits = 8 * len(encoded.payload) <= 1.10 * max(bits_budget, 64.0)
        candidates.append((not fits, mse if fits else len(encoded.payload), name, encoded))
    _, _, name, encoded = min(candidates, key=lambda c: (c[0], c[1]))
    return name, encoded.payload, encoded.reconstruction[0]


def decode_still(coder: str, data: bytes, width: int, height: int, coders: StillCoders) -> np.ndarray:
    return coders.get(coder).decode(data, 1, width, height)[0]


def code_tail_residual(
    residual: torch.Tensor, max_bytes: int | None, step: float = 0.05
) -> tuple[bytes, torch.Tensor]:
    """(bytes, dequantised residual) for a float32 latent residual; searches the step to fit max_bytes."""
    array = residual.detach().to(torch.float32).cpu().numpy()

    def encode(q_step: float) -> bytes:
        symbols = np.clip(np.round(array / q_step), -127, 127).astype(np.int8)
        return _TAIL_HEADER.pack(q_step) + zlib.compress(symbols.tobytes(), 9)

    data = encode(step)
    if max_bytes is not None:
        q_step = step
        for _ in range(40):  # geometric search upwards: coarser steps, fewer bytes
            if len(data) <= max_bytes:
                break
            q_step *= 1.25
            data = encode(q_step)
    return data, decode_tail_residual(data, tuple(residual.shape)).to(residual.device)


def decode_tail_residual(data: bytes, shape: tuple[int, ...]) -> torch.Tensor:
    if len(data) < _TAIL_HEADER.size:
        raise CorruptPayloadError("GVC tail residual section is truncated")
    (q_step,) = _TAIL_HEADER.unpack(data[: _TAIL_HEADER.size])
    count = int(np.prod(shape))
    try:
        raw = zlib.decompressobj().decompress(data[_TAIL_HEADER.size :], count + 1)
    except zlib.error:
        raise CorruptPayloadError("GVC tail residual section is damaged") from None
    if len(raw) != count or not np.isfinite(q_step) or q_step <= 0:
        raise CorruptPayloadError("GVC tail residual section does not match the latent geometry")
    symbols = np.frombuffer(raw, dtype=np.int8).astype(np.float32).reshape(shape)
    return torch.from_numpy(symbols * np.float32(q_step))
