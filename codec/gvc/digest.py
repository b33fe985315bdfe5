"""The exact part of a GVC decode: what any device decodes bit for bit from a payload.

GVC's pixels come out of a float sampler loop and VAE, which differ slightly across devices; what the
payload determines exactly is (1) the codebook entries — which M of K atoms, with which signs, at each
coded step and latent frame — (2) each reference still's exact part (an AV1 still's decoded pixels,
libdav1d being bit-exact; a GLVC still's latent symbols), and (3) I2V's dequantised tail residual.

Digest (version tag ``gvc-exact-v1``): sha256 over the tag, every entry in coding order as its sorted
indices and their ±1 signs (little-endian int32 each), then per section in payload order its kind, a
colon and the section's own exact digest (32 raw bytes). Verify compares it with the encoder's.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from codec.base import frames_sha256
from codec.gvc import references
from codec.gvc.geometry import padded_frames, padded_size
from codec.gvc.subset_rank import unpack_entries

TAG = b"gvc-exact-v1"


def exact_digest(codec: Any, payload: bytes, frame_count: int, width: int, height: int) -> str:
    """`Codec.exact_digest` for a `GvcCodec`: parses the payload, unpacks its entries and decodes its
    sections' exact parts; no network runs."""
    parsed, config = codec.parse_checked(payload, frame_count, width, height)
    tokenizer = codec.backbone.tokenizer
    latent_frames = 1 + (padded_frames(frame_count) - 1) // tokenizer.temporal_factor
    entries = unpack_entries(
        parsed.codebook, config.num_atoms, config.atoms_per_step, config.coded_steps * latent_frames
    )
    digest = hashlib.sha256(TAG)
    for indices, signs in entries:
        digest.update(np.asarray(indices, dtype="<i4").tobytes())
        digest.update(np.asarray(signs, dtype="<i4").tobytes())
    pw, ph = padded_size(width), padded_size(height)
    for section in parsed.sections:
        digest.update(section.kind.encode() + b":")
        digest.update(bytes.fromhex(_section_digest(codec, section, pw, ph)))
    return digest.hexdigest()


def _section_digest(codec: Any, section: Any, width: int, height: int) -> str:
    if section.kind == "tail":
        tokenizer = codec.backbone.tokenizer
        shape = (tokenizer.channels, height // tokenizer.spatial_factor, width // tokenizer.spatial_factor)
        residual = references.decode_tail_residual(section.data, shape)
        return hashlib.sha256(residual.numpy().astype("<f4").tobytes()).hexdigest()
    still = codec.stills.get(section.codec)
    exact = still.exact_digest(section.data, 1, width, height)
    return exact if exact is not None else frames_sha256(still.decode(section.data, 1, width, height))
