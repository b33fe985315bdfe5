"""`GlvcCodec`: generative latent video compression (tokenizer + latent codec) behind the codec interface.

Encode path for one GOP: pad the frames (replicate) to the codec's block size and the GOP to 1+4k frames
(repeating the last frame) -> tokenizer encode once -> latent codec at a quality index (searched on the
real bitstream size for kbps/bpp targets; only the latent codec reruns per candidate) -> payload ->
self-check: the encoder decodes its own payload's symbols and refuses to return on any difference ->
synthesis + tokenizer decode once for the reconstruction, cropped back — only when the caller asks for
the reconstruction (`reconstruct=True`: the GOP's quality is measured); the self-check never needs it.

Several threads may encode or decode at once (`thread_safe`). On a GPU the tokenizer passes take the
codec's `DeviceStage` one at a time, while the latent codec (entropy coding on the CPU) of one GOP runs
beside the next GOP's tokenizer pass, each thread on its own CUDA stream (`codec.gpu`). On the CPU every
pass runs on one torch thread and GOPs run side by side (`codec.cpu_threads`), so the pixels a decode
gives do not depend on the machine's core count and verify on the machine that wrote the archive says
*exact*. Payloads do not depend
on that concurrency, with one nuance: a kbps/bpp search starts at the index of the GOP coded just
before, which under concurrency is whichever finished first, so its `evaluations` may differ from a
one-at-a-time run (the chosen index does not, wherever bits grow with the index).

The quality index runs 0..63, higher = more bits and better quality; a `quality` target is the index.
"""

from __future__ import annotations

import hashlib
import math
import threading
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from codec.base import Codec, EncodedGop, RateTarget, check_frames
from codec.cpu_threads import one_thread_on_cpu
from codec.entropy import EntropyCodingError, EntropyProfileError, profile_by_id, symbols_sha256
from codec.errors import (
    CodecError,
    CorruptPayloadError,
    ModelLoadError,
    ModelMismatchError,
    UnsupportedFormatError,
    UnsupportedInputError,
)
from codec.glvc.bitstream import GlvcHeader, pack_payload, unpack_payload
from codec.glvc.latent_codec import LATENT_STRIDE, CompressedLatents, LatentCodec
from codec.glvc.tokenizer import Tokenizer, load_tokenizer
from codec.gpu import DeviceStage, PinnedUploader, compile_by_default, thread_stream
from codec.modeldir import ModelDir, bundled_model_path, load_model_dir
from codec.wan import glvc_vae_dir

#: The components of a GLVC model: the Wan VAE (`tokenizer/`, or `vae/` in an official Wan folder) and
#: the latent codec; the codec's identity is their digest.
COMPONENTS = ["tokenizer", "latent_codec"]
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_RATE_TOLERANCE = 0.10


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedInputError(f"glvc: device {device!r} requested but no CUDA device is available")
    return torch.device(device)


class GlvcCodec(Codec):
    """GLVC with a model directory holding the Wan VAE (`tokenizer/`, or `vae/` of an official Wan
    folder) and `latent_codec/` (default: the bundled model)."""

    name = "glvc"
    version = "1"
    gop_multiple = 4
    gop_offset = 1
    thread_safe = True

    def __init__(
        self,
        *,
        model: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
        compile: bool | None = None,
        channels_last: bool = False,
        **unknown: Any,
    ) -> None:
        """`compile` (default: on CUDA) runs the tokenizer's networks through `torch.compile`, eager
        where that fails; `channels_last` stores its activations channels-last. Neither changes the
        entropy-coded symbols, so neither is a decoder option."""
        if unknown:
            raise UnsupportedInputError(
                f"glvc does not understand option(s) {', '.join(sorted(unknown))}; "
                "it takes model, device, dtype, compile, channels_last"
            )
        self.torch_device = resolve_device(device)
        self.device = self.torch_device.type
        self.dtype_policy = dtype or "auto"
        if dtype in (None, "auto"):
            vae_dtype = torch.bfloat16 if self.torch_device.type == "cuda" else torch.float32
        elif dtype in _DTYPES:
            vae_dtype = _DTYPES[dtype]
        else:
            raise UnsupportedInputError(
                f"glvc: dtype must be auto or one of {', '.join(_DTYPES)}, got {dtype!r}"
            )
        self.model_dir = _open_model(model)
        self.model_id = self.model_dir.model_id
        vae_dir, vae_component = glvc_vae_dir(self.model_dir.path)
        if not (self.model_dir.path / "latent_codec").is_dir():
            raise ModelLoadError(
                f"model {self.model_id} has a Wan VAE but no latent_codec/; make a GLVC model with "
                f"`vidarc train glvc --tokenizer {self.model_dir.path} --out MODEL --name N --version V`"
            )
        self.model_sha256 = self.model_dir.components_digest([vae_component, "latent_codec"])
        try:
            compiled = compile if compile is not None else compile_by_default(self.torch_device)
            self.tokenizer: Tokenizer = load_tokenizer(
                vae_dir, self.torch_device, vae_dtype, compile=compiled, channels_last=channels_last
            )
            self.latent_codec = LatentCodec.from_pretrained(self.model_dir.component("latent_codec"))
        except CodecError:
            raise
        except Exception as exc:  # diffusers/safetensors/config errors: one line, naming the model
            raise ModelLoadError(
                f"model {self.model_dir.path}: cannot load GLVC weights ({_first_line(exc)})"
            ) from None
        self.latent_codec.to(self.torch_device).eval()
        try:  # the pinned entropy profile, checked against the installed coder before any work
            self.entropy_profile = self.latent_codec.tables.profile
        except EntropyProfileError as exc:
            raise UnsupportedFormatError(f"model {self.model_id}: {exc}") from None
        if self.tokenizer.latent_channels != self.latent_codec.config.latent_channels:
            raise ModelLoadError(
                f"model {self.model_id}: tokenizer has {self.tokenizer.latent_channels} latent channels, "
                f"the latent codec expects {self.latent_codec.config.latent_channels}"
            )
        self.block = self.tokenizer.spatial_factor * LATENT_STRIDE
        self.num_q = self.latent_codec.config.num_q
        self._last_q: int | None = None
        self._latent_cache: tuple[Any, torch.Tensor] | None = None  # (frames key, latents) of the last GOP
        self.stage = DeviceStage(self.torch_device)  # tokenizer passes: timed (one at a time on a GPU)
        self._uploader = PinnedUploader(self.torch_device)
        self._code_lock = threading.Lock()  # rate search + self-check: in order, one GOP at a time

    def entropy_coder(self) -> dict[str, str]:
        return self.entropy_profile.record()

    def decoder_options(self) -> dict[str, Any]:
        """What a decoder must be built with beyond the payload: the VAE's dtype policy ("auto": bf16
        on GPUs, float32 on CPUs). The entropy-coded symbols never depend on it; the pixels do, slightly."""
        return {"dtype": self.dtype_policy}

    @property
    def quality_range(self) -> tuple[int, int]:
        """(worst, best) quality index, for quality-targeted searches (`pipeline.quality_target`)."""
        return 0, self.num_q - 1

    # -- geometry -------------------------------------------------------------------------------------------
    @classmethod
    def default_gop_frames(cls, fps: Fraction) -> int:
        """About two seconds, rounded to 1+4k frames (the tokenizer's causal GOP shape)."""
        return 1 + 4 * max(1, round(2 * float(fps) / 4))

    def check_geometry(self, width: int, height: int) -> None:
        if width < self.block or height < self.block:
            raise UnsupportedInputError(
                f"glvc needs frames of at least {self.block}x{self.block} (one latent block), got {width}x{height}"
            )
        if width > 65535 or height > 65535:
            raise UnsupportedInputError(f"glvc cannot code {width}x{height} frames")

    def padded_size(self, width: int, height: int) -> tuple[int, int]:
        b = self.block
        return -(-width // b) * b, -(-height // b) * b

    def coded_frames(self, frames: int) -> int:
        return 1 + 4 * math.ceil((frames - 1) / 4)

    def _pad(self, frames: np.ndarray) -> np.ndarray:
        count, height, width = frames.shape[:3]
        pw, ph = self.padded_size(width, height)
        extra = self.coded_frames(count) - count
        return np.pad(frames, ((0, extra), (0, ph - height), (0, pw - width), (0, 0)), mode="edge")

    # -- encode ------------------------------------------------------------------------------------------------
    def encode(
        self, frames: np.ndarray, target: RateTarget, fps: Fraction, *, reconstruct: bool = True
    ) -> EncodedGop:
        check_frames(frames, self.name)
        count, height, width = frames.shape[:3]
        self.check_geometry(width, height)
        if count > 65535:
            raise UnsupportedInputError(f"glvc: a GOP of {count} frames is too long")
        one_thread_on_cpu(self.torch_device)  # the reconstruction must be the decoder's bytes
        with thread_stream(self.torch_device):
            return self._encode(frames, target, Fraction(fps), reconstruct)

    def _encode(self, frames: np.ndarray, target: RateTarget, fps: Fraction, reconstruct: bool) -> EncodedGop:
        count, height, width = frames.shape[:3]
        pw, ph = self.padded_size(width, height)
        latents = self._latents(frames)
        header = GlvcHeader(self.model_id, self.model_sha256, width, height, pw, ph, count,
                            self.coded_frames(count), 0, self.entropy_profile.id)  # fmt: skip

        def encode_at(q: int) -> tuple[bytes, CompressedLatents]:
            coded = self.latent_codec.compress(latents, q)
            return pack_payload(_with_q(header, q), coded.data), coded

        budget = target.bits_budget(width, height, count, fps)
        if budget is None:
            q = self._quality_index(target.value)
            with self._code_lock:
                (payload, coded), reached, evaluations = encode_at(q), True, 1
                decoded = self._self_check(payload, coded, synthesize=reconstruct)
        else:
            with self._code_lock:
                q, (payload, coded), reached, evaluations = self._search(encode_at, budget)
                decoded = self._self_check(payload, coded, synthesize=reconstruct)
        recon = None
        if reconstruct:
            with self.stage.run():
                recon = self.tokenizer.decode(decoded.latents)[:count, :height, :width]
        return EncodedGop(
            payload,
            recon,
            {"q_index": q, "target_reached": bool(reached), "evaluations": evaluations},
            exact_digest=symbols_sha256(coded.symbols),
        )

    def _search(self, encode_at, budget: float):
        """The rate search, warm-started at the previous GOP's index (the caller holds the code lock)."""
        from codec.ratecontrol import search_rate  # the encoder's: a decoder never loads it

        result = search_rate(
            encode_at,
            lambda r: 8.0 * len(r[0]),
            budget,
            0,
            self.num_q - 1,
            bits_increase_with_param=True,
            tolerance=_RATE_TOLERANCE,
            start=self._last_q,
        )
        self._last_q = result.param
        return result.param, result.result, result.reached, result.evaluations

    def _latents(self, frames: np.ndarray) -> torch.Tensor:
        """The tokenizer's latents of `frames`, reused when the same GOP is coded again.

        A quality-targeted search (`pipeline.quality_target`) codes one GOP at several quality indices;
        the tokenizer is ~95% of GLVC's time and its output does not depend on the index, so it runs
        once. The key is the frames' shape and a 256-bit BLAKE2b digest (a few ms per 4 MB), never their
        memory address: a collision would silently code another GOP, so a 32-bit checksum is not enough.
        """
        key = (frames.shape, hashlib.blake2b(np.ascontiguousarray(frames).data, digest_size=32).digest())
        cached = self._latent_cache
        if cached is not None and cached[0] == key:
            if self.torch_device.type == "cuda":  # made on another thread's stream: keep it alive here
                cached[1].record_stream(torch.cuda.current_stream(self.torch_device))
            return cached[1]
        pixels = self._uploader.upload(self._pad(frames))  # before the stage: overlaps the GOP before
        with self.stage.run():
            latents = self.tokenizer.encode(pixels).to(self.torch_device)
        self._latent_cache = (key, latents)
        return latents

    def _quality_index(self, value: float) -> int:
        q = round(value)
        if not 0 <= q < self.num_q:
            raise UnsupportedInputError(
                f"glvc quality is a quality index in 0..{self.num_q - 1}, got {value:g}"
            )
        return int(q)

    def _self_check(self, payload: bytes, coded: CompressedLatents, *, synthesize: bool):
        """Entropy-decode the payload and refuse it unless every symbol is the one coded; the latent
        synthesis (needed for pixels only) runs when `synthesize`."""
        header, body = unpack_payload(payload)
        decoded = self._decode_latents(header, body, synthesize=synthesize)
        same = len(decoded.symbols) == len(coded.symbols) and all(
            np.array_equal(a, b) for a, b in zip(decoded.symbols, coded.symbols, strict=True)
        )
        if not same:
            raise CodecError(
                "glvc self-check failed: decoding the payload gave other symbols than were coded"
            )
        return decoded

    # -- decode ------------------------------------------------------------------------------------------------
    def decode(self, payload: bytes, frame_count: int, width: int, height: int) -> np.ndarray:
        return self.decode_with_digest(payload, frame_count, width, height)[0]

    def exact_digest(self, payload: bytes, frame_count: int, width: int, height: int) -> str:
        """sha256 of the decoded latent symbols (`codec.entropy.symbols_sha256`): entropy decoding
        only, no synthesis or pixel decode. Identical on every device (the table selection is exact)."""
        header, body = self._checked_payload(payload, frame_count, width, height)
        with thread_stream(self.torch_device):
            return symbols_sha256(self._decode_latents(header, body, synthesize=False).symbols)

    def decode_with_digest(
        self, payload: bytes, frame_count: int, width: int, height: int
    ) -> tuple[np.ndarray, str]:
        header, body = self._checked_payload(payload, frame_count, width, height)
        one_thread_on_cpu(self.torch_device)  # the same pixels whatever the core count
        with thread_stream(self.torch_device):
            decoded = self._decode_latents(header, body)
            with self.stage.run():
                frames = self.tokenizer.decode(decoded.latents)[:frame_count, :height, :width]
        return frames, symbols_sha256(decoded.symbols)

    def _checked_payload(
        self, payload: bytes, frame_count: int, width: int, height: int
    ) -> tuple[GlvcHeader, bytes]:
        header, body = unpack_payload(payload)
        if header.model_sha256 != self.model_sha256:  # the id is a label; the weights' digest decides
            raise ModelMismatchError(
                f"GLVC payload was made with model {header.model_id} (sha256 {header.model_sha256[:12]}…); "
                f"this decoder holds {self.model_id} (sha256 {self.model_sha256[:12]}…)"
            )
        if (header.frames, header.width, header.height) != (frame_count, width, height):
            raise CorruptPayloadError(
                f"GLVC payload holds {header.frames} frames of {header.width}x{header.height}, "
                f"expected {frame_count} of {width}x{height}"
            )
        return header, body

    def _decode_latents(self, header: GlvcHeader, body: bytes, *, synthesize: bool = True):
        expected = (*self.padded_size(header.width, header.height), self.coded_frames(header.frames))
        if (
            header.padded_width,
            header.padded_height,
            header.coded_frames,
        ) != expected or header.q_index >= self.num_q:
            raise CorruptPayloadError("GLVC payload header is damaged (padded geometry or quality index)")
        try:
            profile = profile_by_id(header.profile)
        except EntropyProfileError as exc:
            raise UnsupportedFormatError(f"GLVC payload: {exc}") from None
        if profile != self.entropy_profile:
            raise ModelMismatchError(
                f"GLVC payload is coded with entropy profile {profile.name}; the model's latent codec "
                f"uses {self.entropy_profile.name}"
            )
        s = self.tokenizer.spatial_factor
        try:
            return self.latent_codec.decompress(
                body,
                header.q_index,
                self.tokenizer.latent_frames(header.coded_frames),
                header.padded_height // s,
                header.padded_width // s,
                device=self.torch_device,
                synthesize=synthesize,
            )
        except EntropyCodingError as exc:
            raise CorruptPayloadError(f"GLVC payload is damaged ({exc})") from None

    # -- latents for training (no tokenizer decode) --------------------------------------------------------------
    def decode_latents(self, payload: bytes, frame_count: int, width: int, height: int) -> torch.Tensor:
        """The GOP's latents from the entropy decode alone: [1, C, F, h, w] float32, normalised with the
        tokenizer's latents_mean/std as Wan pipelines expect, at the coded (padded) size.

        Why: the latent codec's output is exactly the input of Wan-family diffusion training, so a
        training reader skips the VAE decode (most of GLVC's decode time). Same checks as `decode`.
        """
        header, body = self._checked_payload(payload, frame_count, width, height)
        return self._decode_latents(header, body).latents

    def latent_space(self) -> dict[str, Any]:
        """What a consumer of `decode_latents` needs: the tokenizer's identity (the digest of its
        weights), its per-channel statistics (to undo the normalisation) and its strides."""
        _, component = glvc_vae_dir(self.model_dir.path)  # tokenizer/, or vae/ of an official Wan folder
        try:
            digest = self.model_dir.components_digest([component])
        except (ModelLoadError, KeyError):  # a card that pins no files of it: the codec's identity
            digest = str(self.model_sha256)
        return {
            "tokenizer_id": f"{self.model_id}/{component}@{digest[:16]}",
            "latents_mean": self.tokenizer.mean.flatten().cpu().tolist(),
            "latents_std": self.tokenizer.std.flatten().cpu().tolist(),
            "spatial_factor": self.tokenizer.spatial_factor,
            "temporal_factor": self.tokenizer.temporal_factor,
        }


def _with_q(header: GlvcHeader, q: int) -> GlvcHeader:
    return GlvcHeader(**{**header.__dict__, "q_index": q})


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _open_model(model: str | None) -> ModelDir:
    if model is None:
        path = bundled_model_path()
        if not (path / "model_card.json").is_file():
            raise ModelLoadError(
                f"the bundled GLVC model is not installed at {path.name} (codec/models/{path.name}); "
                "pass --model DIR pointing at a GLVC model directory"
            )
        model = str(path)
    return load_model_dir(model)
