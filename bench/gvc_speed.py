"""Seconds per GOP for GVC encode and decode, split into transformer, codebook search and VAE.

Random weights are fine for timing (the work does not depend on the values). Configurations:

- `tiny`: the bundled flow architecture (`codec.gvc.backbone.tiny_flow_config`) with a small Wan VAE;
  runs on a CPU in a minute or two at 256×144.
- `wan-1.3b`, `wan-14b`: the Wan2.1 T2V transformer configurations and the full Wan2.1 VAE; for a GPU
  (bf16 transformer, atoms generated and searched on the device, all latent frames in one batched
  matmul per chunk, the Philox rounds fused by torch.compile).

    python -m bench.gvc_speed --config tiny --width 256 --height 144
    python -m bench.gvc_speed --config wan-1.3b --device cuda --width 1280 --height 720 --atoms 16384 --m 64

Prints one JSON line per run with the breakdown; nothing is asserted about speed.
"""

from __future__ import annotations

import argparse
import json
import time
from fractions import Fraction

import numpy as np
import torch

from codec.base import RateTarget, bits_per_pixel
from codec.gvc.atoms_fused import available as fused_available
from codec.gvc.atoms_fused import use_folded_selection, use_fused_search
from codec.gvc.backbone import FlowBackbone, WanTokenizer, place, tiny_flow_config
from codec.gvc.codec import GvcCodec

WAN_CONFIGS = {
    "wan-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
}


def build_backbone(config: str, device: torch.device) -> FlowBackbone:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.manual_seed(0)
    if config == "tiny":
        transformer = WanTransformer3DModel(**tiny_flow_config())
        vae = AutoencoderKLWan(base_dim=32, z_dim=16, dim_mult=[1, 2, 2, 2], num_res_blocks=1)
        text = torch.randn(1, 4, 32)
        conditioned = True
    else:
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, **WAN_CONFIGS[config],
        )  # fmt: skip
        vae = AutoencoderKLWan()  # the Wan2.1 VAE configuration (127M parameters)
        text = torch.randn(1, 512, 4096)
        conditioned = False
    transformer = place(transformer, device, dtype)
    tokenizer = WanTokenizer(vae.to(device, dtype).eval(), device, dtype)
    return FlowBackbone(tokenizer, transformer, text.to(device, dtype), device, dtype, conditioned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=["tiny", *WAN_CONFIGS], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--height", type=int, default=144)
    parser.add_argument("--frames", type=int, default=33)
    parser.add_argument("--atoms", type=int, default=256, help="K, atoms per codebook")
    parser.add_argument("--m", type=int, default=16, help="M, atoms chosen per step and latent frame")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--ode-tail", type=int, default=3)
    parser.add_argument("--mode", default="t2v")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile-atoms", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument(
        "--search",
        choices=["fused", "reference"],
        default="fused",
        help="codebook search: fused Triton kernel (GPU) or the reference torch path",
    )
    parser.add_argument(
        "--select",
        choices=["folded", "topk"],
        default="folded",
        help="top-M selection inside the fused kernel (M <= 256) or torch.topk over its products",
    )
    parser.add_argument(
        "--compile-transformer",
        choices=["none", "default", "reduce-overhead", "max-autotune"],
        default="none",
        help="torch.compile the flow transformer (reduce-overhead: with CUDA graphs)",
    )
    parser.add_argument(
        "--warmup", type=int, default=0, help="untimed encode+decode first (compilation, cuDNN autotuning)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use_fused_search(args.search == "fused")
    use_folded_selection(args.select == "folded")
    device = torch.device(args.device)
    backbone = build_backbone(args.config, device)
    codec = GvcCodec(
        backbone=backbone, model_id=f"random-{args.config}@0", model_sha256="00" * 32, device=args.device,
        mode=args.mode, steps=args.steps, ode_tail=args.ode_tail, atoms=args.atoms,
        compile_atoms=args.compile_atoms, compile_transformer=args.compile_transformer,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (args.frames, args.height, args.width, 3), dtype=np.uint8)
    for _ in range(args.warmup):
        warm = codec.encode(frames, RateTarget("quality", args.m), Fraction(24))
        codec.decode(warm.payload, args.frames, args.width, args.height)
    start = time.perf_counter()
    enc = codec.encode(frames, RateTarget("quality", args.m), Fraction(24))
    encode_s = time.perf_counter() - start
    encode_parts = dict(codec.last_timing)
    start = time.perf_counter()
    dec = codec.decode(enc.payload, args.frames, args.width, args.height)
    decode_s = time.perf_counter() - start
    report = {
        "config": args.config,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{args.threads}",
        "geometry": f"{args.width}x{args.height}x{args.frames}",
        "K": args.atoms,
        "M": args.m,
        "steps": args.steps,
        "coded_steps": args.steps - args.ode_tail,
        "warmup_runs": args.warmup,
        "search": "fused" if fused_available(device) else "reference",
        "select": args.select if fused_available(device) else "topk",
        "compile_transformer": args.compile_transformer,
        "payload_bytes": len(enc.payload),
        "bpp": round(bits_per_pixel(len(enc.payload), args.width, args.height, args.frames), 6),
        "encode_s": round(encode_s, 3),
        "encode_breakdown_s": {k: round(v, 3) for k, v in encode_parts.items()},
        "decode_s": round(decode_s, 3),
        "decode_breakdown_s": {k: round(v, 3) for k, v in codec.last_timing.items()},
        "decode_matches_encoder": bool(np.array_equal(dec, enc.reconstruction)),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
