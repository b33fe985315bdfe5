"""GVC: zero-shot video coding through a stochastic rectified-flow video model (GVCC, 2026).

The encoder runs the flow model's sampler as an SDE and, at every stochastic step and latent frame,
transmits which M of K seeded Gaussian atoms (with ±1 signs) best point from the current clean estimate
towards the true latent; the decoder replays the identical loop from those indices. See `sampler` for
the loop, `atoms` for device-independent codebooks, `subset_rank` for the index coding, `bitstream` for
the payload and `references` for the coded reference frames.

Rate is an exact function of the settings: header + reference sections + ⌈log2((C(K,M)·2^M)^n)⌉ bits for
n = coded steps × latent frames, so a bits target picks M before any network runs (`plan_atoms`).
`quality` means M directly. Achieved rates are always measured from the real bytes.

Modes (`mode=`): t2v (codebook only), i2v (first frame coded as an AV1 still, plus the quantised tail
latent residual), flf2v (first and last frames coded as stills). The codec contract requires every GOP
payload to decode alone, so FLF2V codes *both* boundary frames in every GOP rather than sharing one with
the neighbouring GOP as the paper does (which would make GOP g undecodable without GOP g−1); that costs
one extra still per GOP, and `bench/gvc_rd.py` reports the shared-boundary accounting beside it. Decoded
reference stills replace the generated frames they stand for in the output (both sides do the same).

Geometry: frames are edge-padded to multiples of 16 (VAE stride 8 × transformer patch 2) and to 1+4k
frames (the causal VAE's temporal stride), and cropped back on decode.
"""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import torch

from codec.base import Codec, EncodedGop, RateTarget, check_frames
from codec.errors import CodecError, CorruptPayloadError, ModelMismatchError, UnsupportedInputError
from codec.gpu import DeviceStage
from codec.gvc import references
from codec.gvc.bitstream import MODES, GvcPayload, Section, header_bytes
from codec.gvc.geometry import SPATIAL_MULTIPLE, pad, padded_frames, padded_size
from codec.gvc.sampler import SamplerConfig, StageTimer, run_sampler
from codec.gvc.subset_rank import pack_entries, packed_bytes, unpack_entries
from codec.wan import check_mode

REFERENCE_FRAMES = {"t2v": (), "i2v": ("first",), "flf2v": ("first", "last")}
MAX_SIDE = 4096
#: The paper's settings (K = 16384, 20 steps, 3 ODE steps, g = 3, shift 3 as its T2V runs used). A model
#: card may carry its own under config["gvc"] (the bundled CPU model uses fewer steps and atoms).
SAMPLER_DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "ode_tail": 3,
    "shift": 3.0,
    "g_scale": 3.0,
    "num_atoms": 16384,
}


@dataclasses.dataclass(frozen=True)
class RatePlan:
    """Bytes of each part of a payload, known before sampling."""

    atoms_per_step: int
    header: int
    references: int
    tail_reserve: int
    codebook: int

    @property
    def total(self) -> int:
        return self.header + self.references + self.tail_reserve + self.codebook


def plan_atoms(
    budget_bits: float, num_atoms: int, entries: int, fixed_bytes: int, max_atoms: int
) -> tuple[int, bool]:
    """Largest M (1..max_atoms) whose payload fits the budget; (M, fits). Bytes grow with M for M ≤ K/2."""
    lo, hi = 1, max(1, min(max_atoms, num_atoms // 2))
    if 8 * (fixed_bytes + packed_bytes(num_atoms, 1, entries)) > budget_bits:
        return 1, False
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if 8 * (fixed_bytes + packed_bytes(num_atoms, mid, entries)) <= budget_bits:
            lo = mid
        else:
            hi = mid - 1
    return lo, True


class GvcCodec(Codec):
    """GVC over a model directory (default: the bundled vidarc-tiny) or an injected backbone.

    Options: `mode` (t2v | i2v | flf2v; default: the best the model supports — FLF2V, then I2V, then
    T2V), `dtype` ("auto", the default: bf16 on GPUs, float32 on CPUs), sampler settings (`steps`, `ode_tail`,
    `shift` — default: the model card's, else the model's scheduler `flow_shift`, else 3 —, `g_scale`,
    `atoms` = K, `seed`), `max_atoms_per_step` (the rate planner's cap on M), and how a bit budget is
    split: `reference_share` of it for the reference stills (split evenly between them) and, for I2V,
    `tail_share` for the tail residual; the codebook gets the rest, as large an M as fits. These
    shares are fixed defaults, not tuned per clip (FLF2V's boundary stills took ~60% of the bytes in
    the paper's runs). `backbone` + `model_id` + `model_sha256` inject networks directly (tests,
    benchmarks). `compile_transformer` ("default", "reduce-overhead" = with CUDA graphs, "max-autotune";
    default none) runs the flow transformer through `torch.compile`, eager if that fails (logged):
    the step is the same network on the same shapes 20 times per GOP.
    """

    name: ClassVar[str] = "gvc"
    version: ClassVar[str] = "1"
    gop_multiple: ClassVar[int] = 4
    gop_offset: ClassVar[int] = 1
    thread_safe: ClassVar[bool] = True

    def __init__(
        self,
        *,
        model: str | None = None,
        device: str = "cpu",
        mode: str | None = None,
        dtype: str | None = None,
        steps: int | None = None,
        ode_tail: int | None = None,
        shift: float | None = None,
        g_scale: float | None = None,
        atoms: int | None = None,
        max_atoms_per_step: int = 256,
        seed: int = 42,
        compile_atoms: bool | None = None,
        compile_transformer: str | None = None,
        glvc_stills: bool = True,
        reference_share: float = 0.5,
        tail_share: float = 0.25,
        backbone: Any = None,
        model_id: str | None = None,
        model_sha256: str | None = None,
        **unknown: Any,
    ) -> None:
        if unknown:
            raise UnsupportedInputError(f"gvc does not understand option(s) {', '.join(sorted(unknown))}")
        if mode is not None and mode not in MODES:
            raise UnsupportedInputError(f"gvc: mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.device = _pick_device(device)
        self.dtype_policy = dtype or "auto"
        self.dtype = _pick_dtype(dtype, self.device)
        glvc_model = None
        card_defaults: dict[str, Any] = {}
        if backbone is None:
            from codec.gvc.backbone import load_backbone
            from codec.modeldir import bundled_model_path, open_model_dir
            from codec.wan import flow_layout

            source = open_model_dir(model or bundled_model_path())
            layout = flow_layout(source.path)
            mode = mode or layout.best_mode
            check_mode(mode, layout.modes, source.label)  # before any weight is read
            model_dir = source.verify()
            backbone = load_backbone(layout, model_dir, torch.device(self.device), _DTYPES[self.dtype])
            model_id, model_sha256 = model_dir.model_id, model_dir.components_digest(list(layout.components))
            if glvc_stills and (model_dir.path / "latent_codec").is_dir():
                glvc_model = str(model_dir.path)
            card_defaults = dict(model_dir.config.get("gvc", {}))
            if "shift" not in card_defaults and layout.flow_shift is not None:
                card_defaults["shift"] = layout.flow_shift  # the model's own scheduler setting
        if model_id is None or model_sha256 is None:
            raise ValueError("gvc: a backbone passed directly needs model_id and model_sha256")
        mode = mode or backbone.modes[0]
        check_mode(mode, tuple(backbone.modes), model_id)
        self.backbone, self.model_id, self.model_sha256 = backbone, model_id, model_sha256
        self.mode = mode
        self.stills = references.StillCoders(glvc_model, self.device)
        given = dict(steps=steps, ode_tail=ode_tail, shift=shift, g_scale=g_scale, num_atoms=atoms)
        self.sampler = {
            key: value if value is not None else card_defaults.get(key, SAMPLER_DEFAULTS[key])
            for key, value in given.items()
        }
        self.sampler["seed"] = seed
        try:
            SamplerConfig(**self.sampler, atoms_per_step=1)  # validate now, not mid-job
        except ValueError as exc:
            raise UnsupportedInputError(f"gvc: {exc}") from None
        self.max_atoms_per_step = max_atoms_per_step
        self.reference_share, self.tail_share = reference_share, tail_share
        self.last_timing: dict[str, float] = {}
        self.stage = DeviceStage(torch.device(self.device))  # the sampler: timed, one GOP at a time on a GPU
        if compile_transformer not in (None, "none") and hasattr(self.backbone, "transformer"):
            from codec.gpu import CompiledOrEager

            mode = None if compile_transformer == "default" else compile_transformer
            self.backbone.transformer = CompiledOrEager(
                self.backbone.transformer, "the flow transformer", mode=mode
            )
        if compile_atoms if compile_atoms is not None else self.device.startswith("cuda"):
            from codec.gvc.atoms import use_compiled_generator

            use_compiled_generator(True)

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes this model supports, best first."""
        return tuple(self.backbone.modes)

    def decoder_options(self) -> dict[str, Any]:
        """What a decoder must be built with to replay this encoder: the dtype policy ("auto" decodes
        in the dtype the encoder used on the same device class). The rest is in every payload: mode,
        steps, ODE tail, shift, g, K, M, seed, and each reference still's coder."""
        return {"dtype": self.dtype_policy}

    def entropy_coder(self) -> dict[str, str] | None:
        """GLVC stills are entropy coded (`codec.entropy`); the codebook indices are not."""
        return self.stills.get("glvc").entropy_coder() if "glvc" in self.stills.names else None

    @property
    def quality_range(self) -> tuple[int, int]:
        """(worst, best) atoms per step M, for quality-targeted searches (`pipeline.quality_target`)."""
        return 1, int(self.sampler["num_atoms"]) // 2

    @classmethod
    def default_gop_frames(cls, fps: Fraction) -> int:
        return 33

    def check_geometry(self, width: int, height: int) -> None:
        if not (SPATIAL_MULTIPLE <= width <= MAX_SIDE and SPATIAL_MULTIPLE <= height <= MAX_SIDE):
            raise UnsupportedInputError(
                f"gvc codes frames from {SPATIAL_MULTIPLE}x{SPATIAL_MULTIPLE} to {MAX_SIDE}x{MAX_SIDE}, got {width}x{height}"
            )

    # -- encode -----------------------------------------------------------------------------------
    def encode(
        self, frames: np.ndarray, target: RateTarget, fps: Fraction, *, reconstruct: bool = True
    ) -> EncodedGop:
        """`reconstruct=False` skips the final VAE decode (the self-check parses the payload's indices
        back, which needs no pixels); the reference stills are coded either way."""
        check_frames(frames, self.name)
        height, width = frames.shape[1:3]
        self.check_geometry(width, height)
        with self.stage.run():  # the sampler is device work from end to end (one thread on the CPU)
            return self._encode(frames, target, fps, reconstruct)

    def _encode(self, frames: np.ndarray, target: RateTarget, fps: Fraction, reconstruct: bool) -> EncodedGop:
        count, height, width = frames.shape[:3]
        timer = StageTimer()
        padded = pad(frames)
        dev = torch.device(self.device)
        with timer.stage("vae", dev):
            x0 = self.backbone.tokenizer.encode(padded).to(dev, torch.float32)
        latent_shape = tuple(x0.shape)
        budget = target.bits_budget(width, height, count, Fraction(fps))
        with timer.stage("references", dev):
            sections, decoded_refs = self._code_references(padded, budget)
        tail_reserve = 0
        if self.mode == "i2v":
            tail_reserve = int(budget * self.tail_share / 8) if budget is not None else 0
        config = SamplerConfig(**self.sampler, atoms_per_step=1)
        entries = config.coded_steps * latent_shape[1]
        head = header_bytes(self.model_id, "", tuple((s.codec, 0) for s in sections)) + (
            len(references.TAIL_CODER) + 6 if self.mode == "i2v" else 0
        )
        fixed = head + sum(len(s.data) for s in sections) + tail_reserve
        if budget is None:
            m, fits = round(target.value), True
            if not 1 <= m <= config.num_atoms // 2:
                raise UnsupportedInputError(
                    f"gvc quality is atoms per step, 1..{config.num_atoms // 2}; got {target.value}"
                )
        else:
            m, fits = plan_atoms(budget, config.num_atoms, entries, fixed, self.max_atoms_per_step)
        config = dataclasses.replace(config, atoms_per_step=m)
        with timer.stage("vae", dev):
            condition = self._condition(decoded_refs, padded.shape[0], latent_shape)
        x, used = run_sampler(
            lambda x, t: self.backbone.velocity(x, t, condition),
            latent_shape,
            config,
            target=x0,
            device=dev,
            timer=timer,
        )
        if self.mode == "i2v":
            data, delta = references.code_tail_residual(x0[:, -1] - x[:, -1], tail_reserve or None)
            x[:, -1] += delta
            sections.append(Section("tail", references.TAIL_CODER, data))
        flat = [e for step in used for e in step]
        payload = GvcPayload(
            mode=self.mode,
            model_id=self.model_id,
            model_sha256=self.model_sha256,
            width=width,
            height=height,
            frames=count,
            seed=config.seed,
            steps=config.steps,
            ode_tail=config.ode_tail,
            num_atoms=config.num_atoms,
            atoms_per_step=m,
            shift=config.shift,
            g_scale=config.g_scale,
            codebook=pack_entries(flat, config.num_atoms, m),
            sections=tuple(sections),
        ).to_bytes()
        self._self_check(payload, flat)
        recon = None
        if reconstruct:
            with timer.stage("vae", dev):
                recon = self._finish(x, decoded_refs, count, height, width)
        self.last_timing = dict(timer.seconds)
        codebook_bytes = packed_bytes(config.num_atoms, m, entries)
        params = {
            "mode": self.mode,
            "K": config.num_atoms,
            "M": m,
            "steps": config.steps,
            "ode_tail": config.ode_tail,
            "shift": config.shift,
            "g": config.g_scale,
            "seed": config.seed,
            "codebook_bytes": codebook_bytes,
            "reference_bytes": sum(len(s.data) for s in sections if s.kind != "tail"),
            "tail_bytes": sum(len(s.data) for s in sections if s.kind == "tail"),
            "header_bytes": len(payload) - codebook_bytes - sum(len(s.data) for s in sections),
            "target_reached": bool(fits and (budget is None or 8 * len(payload) <= budget * 1.10)),
        }
        return EncodedGop(payload=payload, reconstruction=recon, params=params)

    def _code_references(self, padded: np.ndarray, budget: float | None):
        roles = REFERENCE_FRAMES[self.mode]
        sections, decoded = [], {}
        for role in roles:
            frame = padded[0] if role == "first" else padded[-1]
            share = budget * self.reference_share / len(roles) if budget is not None else None
            coder, data, image = references.code_still(frame, share, self.stills)
            sections.append(Section(role, coder, data))
            decoded[role] = image
        return sections, decoded

    def _condition(self, refs: dict[str, np.ndarray], pixel_frames: int, latent_shape):
        return self.backbone.condition(
            self.mode, refs.get("first"), refs.get("last"), pixel_frames, latent_shape
        )

    def _finish(self, x: torch.Tensor, refs: dict[str, np.ndarray], count: int, height: int, width: int):
        video = self.backbone.tokenizer.decode(x)
        video = np.array(video, copy=True)
        if "first" in refs:
            video[0] = refs["first"]
        if "last" in refs:
            video[-1] = refs["last"]
        return np.ascontiguousarray(video[:count, :height, :width])

    def _self_check(self, payload: bytes, flat) -> None:
        try:
            parsed = GvcPayload.from_bytes(payload)
            back = unpack_entries(parsed.codebook, parsed.num_atoms, parsed.atoms_per_step, len(flat))
        except CorruptPayloadError as exc:
            raise CodecError(f"gvc self-check failed: the encoder's payload does not parse ({exc})") from None
        if back != [(list(i), list(s)) for i, s in flat]:
            raise CodecError("gvc self-check failed: the payload's indices differ from the encoder's")

    # -- decode -----------------------------------------------------------------------------------
    def exact_digest(self, payload: bytes, frame_count: int, width: int, height: int) -> str:
        """The exact part of a decode: entries, stills, tail (`codec.gvc.digest`)."""
        from codec.gvc.digest import exact_digest

        return exact_digest(self, payload, frame_count, width, height)

    def decode(self, payload: bytes, frame_count: int, width: int, height: int) -> np.ndarray:
        with self.stage.run():
            return self._decode(payload, frame_count, width, height)

    def parse_checked(
        self, payload: bytes, frame_count: int, width: int, height: int
    ) -> tuple[GvcPayload, SamplerConfig]:
        """The payload parsed and checked against this decoder and the container's geometry, with its
        sampler settings validated: what decode and the exact digest both start from."""
        parsed = GvcPayload.from_bytes(bytes(payload))
        if parsed.model_sha256 != self.model_sha256:  # the id is a label; the weights' digest decides
            raise ModelMismatchError(
                f"gvc payload was made with model {parsed.model_id} ({parsed.model_sha256[:12]}…); "
                f"this decoder holds {self.model_id} ({self.model_sha256[:12]}…)"
            )
        if (parsed.width, parsed.height, parsed.frames) != (width, height, frame_count):
            raise CorruptPayloadError(
                f"gvc payload is {parsed.width}x{parsed.height}x{parsed.frames}, "
                f"expected {width}x{height}x{frame_count}"
            )
        try:
            config = SamplerConfig(
                steps=parsed.steps,
                ode_tail=parsed.ode_tail,
                shift=parsed.shift,
                g_scale=parsed.g_scale,
                num_atoms=parsed.num_atoms,
                atoms_per_step=parsed.atoms_per_step,
                seed=parsed.seed,
            )
        except ValueError as exc:
            raise CorruptPayloadError(f"gvc payload has invalid sampler settings ({exc})") from None
        return parsed, config

    def _decode(self, payload: bytes, frame_count: int, width: int, height: int) -> np.ndarray:
        parsed, config = self.parse_checked(payload, frame_count, width, height)
        self.check_geometry(width, height)
        if parsed.mode not in self.backbone.modes:
            raise ModelMismatchError(
                f"gvc payload uses mode {parsed.mode}, which model {self.model_id} lacks "
                f"(it supports {', '.join(self.backbone.modes)})"
            )
        pw, ph = padded_size(width), padded_size(height)
        pixel_frames = padded_frames(frame_count)
        tok = self.backbone.tokenizer
        latent_shape = (
            tok.channels,
            1 + (pixel_frames - 1) // 4,
            ph // tok.spatial_factor,
            pw // tok.spatial_factor,
        )
        flat = unpack_entries(
            parsed.codebook, config.num_atoms, config.atoms_per_step, config.coded_steps * latent_shape[1]
        )
        per_step = [flat[i : i + latent_shape[1]] for i in range(0, len(flat), latent_shape[1])]
        tail = None
        if parsed.mode == "i2v":
            sec = parsed.section("tail")
            if sec is None:
                raise CorruptPayloadError("gvc i2v payload lacks its tail residual")
            tail = references.decode_tail_residual(sec.data, (latent_shape[0], *latent_shape[2:]))
        dev = torch.device(self.device)
        timer = StageTimer()
        refs = {}
        with timer.stage("references", dev):
            for role in REFERENCE_FRAMES[parsed.mode]:
                sec = parsed.section(role)
                if sec is None:
                    raise CorruptPayloadError(f"gvc {parsed.mode} payload lacks its {role} reference frame")
                refs[role] = references.decode_still(sec.codec, sec.data, pw, ph, self.stills)
        with timer.stage("vae", dev):
            # the payload's mode, not this decoder's default: any GVC payload decodes with any GvcCodec
            condition = self.backbone.condition(
                parsed.mode, refs.get("first"), refs.get("last"), pixel_frames, latent_shape
            )
        x, _ = run_sampler(
            lambda x, t: self.backbone.velocity(x, t, condition),
            latent_shape,
            config,
            entries=per_step,
            device=dev,
            timer=timer,
        )
        if tail is not None:
            x[:, -1] += tail.to(dev)
        with timer.stage("vae", dev):
            video = self._finish(x, refs, frame_count, height, width)
        self.last_timing = dict(timer.seconds)
        return video


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _pick_dtype(dtype: str | None, device: str) -> str:
    """bf16 on GPUs (Wan's released precision), float32 on CPUs ("auto"), unless asked otherwise."""
    if dtype in (None, "auto"):
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in _DTYPES:
        raise UnsupportedInputError(f"gvc: dtype must be auto or one of {', '.join(_DTYPES)}, got {dtype!r}")
    return dtype


def _pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedInputError(f"gvc: device {device!r} requested but no CUDA device is available")
    return device
