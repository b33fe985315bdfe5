"""Official-size Wan2.1 checkpoints with random weights: load memory/time, and GVC per mode on a GPU.

Random weights are valid for timing and memory only, never for quality. Nothing is downloaded: the
folders are written here in the official Diffusers layout (sharded safetensors + index files).

    # Host memory of loading a transformer: from_config + full state dict (the old path) vs
    # codec.weights (meta parameters, tensors straight to the device), each in a fresh process:
    python -m bench.wan_official load --config wan-1.3b --layers 10 --device cpu --dtype bfloat16
    # (--json: one JSON object, both methods' rows under "methods")

    # On a GPU: whole folders (transformer, VAE, UMT5-XXL, CLIP ViT-H) and one 33-frame GOP per mode:
    python -m bench.wan_official gop --config wan-1.3b --kind t2v --size 832x480 --work /data/wan
    python -m bench.wan_official gop --config wan-14b --kind flf2v --size 1280x720 --work /data/wan

`load` reports, per method, seconds (load, plus one read of every weight, so that memory-mapped
tensors count as loaded), the process's peak resident memory above its baseline after imports, split
into heap (anonymous: what the load really demands) and mapped checkpoint pages (page cache the
kernel can drop), sampled every 2 ms, and on CUDA the peak allocated GPU memory. `gop` reports the GvcCodec load time,
encode and decode seconds of one GOP, peak GPU and host memory, and the PSNR between the encoder's
reconstruction (bf16) and a float32 decode of the same payload on the same GPU (the drift a decoder on
another device class would see, bounded by this dtype change).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codec.weights import load_diffusers_model, parameters_on_meta

WAN = {  # diffusers' Wan2.1 transformer configurations (Wan-AI/Wan2.1-*-Diffusers transformer/config.json)
    "wan-1.3b": dict(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30),
    "wan-14b": dict(num_attention_heads=40, attention_head_dim=128, ffn_dim=13824, num_layers=40),
    # not a Wan size: the GPU suite's dry run (the plumbing of `load` on a CPU, in a second)
    "tiny": dict(num_attention_heads=2, attention_head_dim=64, ffn_dim=256, num_layers=1),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
SHARD_BYTES = 2 * 2**30


def transformer_config(name: str, kind: str, layers: int | None) -> dict:
    config = dict(
        patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, **WAN[name],
    )  # fmt: skip
    if layers:
        config["num_layers"] = layers
    if kind != "t2v":
        inner = config["num_attention_heads"] * config["attention_head_dim"]
        config.update(in_channels=36, image_dim=1280, added_kv_proj_dim=inner)
    if kind == "flf2v":
        config["pos_embed_seq_len"] = 2 * 257
    return config


def write_random(
    model_cls, config: dict, directory: Path, dtype: torch.dtype, *, transformers: bool = False
) -> None:
    """A random checkpoint of `model_cls(config)` written shard by shard (never the whole model in memory)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    with parameters_on_meta():
        model = model_cls(config) if transformers else model_cls.from_config(config)
    if transformers:
        model.config.save_pretrained(str(directory))
        prefix = "model"
    else:
        model.save_config(str(directory))
        prefix = "diffusion_pytorch_model"
    names = [(k, v) for k, v in model.state_dict().items()]
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, like in names:
        nbytes = like.numel() * torch.finfo(dtype).bits // 8 if like.is_floating_point() else like.numel() * 8
        if size + nbytes > SHARD_BYTES and shards[-1]:
            shards.append([])
            size = 0
        shards[-1].append((name, like))
        size += nbytes
    weight_map, total = {}, len(shards)
    generator = torch.Generator().manual_seed(0)
    for index, shard in enumerate(shards, 1):
        filename = f"{prefix}-{index:05d}-of-{total:05d}.safetensors"
        tensors = {}
        for name, like in shard:
            if like.is_floating_point():
                tensors[name] = (torch.randn(like.shape, generator=generator) * 0.02).to(dtype)
            else:
                tensors[name] = torch.zeros(like.shape, dtype=like.dtype)
            weight_map[name] = filename
        save_file(tensors, str(directory / filename))
        del tensors
    (directory / f"{prefix}.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )


class MemorySampler:
    """Peak resident memory of this process, split into anonymous (heap: real demand) and file-backed
    (memory-mapped checkpoint pages: page cache the kernel can drop), sampled every few milliseconds."""

    def __init__(self) -> None:
        import threading

        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self.baseline = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def sample() -> dict[str, int]:
        values = {}
        with open("/proc/self/status") as handle:
            for line in handle:
                key = line.split(":")[0]
                if key in ("RssAnon", "RssFile", "VmRSS"):
                    values[key] = int(line.split()[1]) * 1024
        return values

    def _run(self) -> None:
        while not self._stop.is_set():
            for key, value in self.sample().items():
                self.peak[key] = max(self.peak[key], value)
            self._stop.wait(0.002)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        for key, value in self.sample().items():
            self.peak[key] = max(self.peak[key], value)
        return {key: round((self.peak[key] - self.baseline[key]) / 2**30, 2) for key in self.peak}


def measure(method: str, directory: Path, device: str, dtype: str) -> dict:
    """Load once with `method` in this process; seconds and memory peaks above the post-import baseline."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    sampler = MemorySampler()
    target, wanted = torch.device(device), DTYPES[dtype]
    start = time.perf_counter()
    if method == "state-dict":  # what `from_pretrained` does without accelerate, and vidarc did before
        model = WanTransformer3DModel.from_config(WanTransformer3DModel.load_config(str(directory)))
        state = {}
        for shard in sorted(directory.glob("*.safetensors")):
            state.update(load_file(str(shard)))
        model.load_state_dict(state, strict=True)
        del state
        model = model.to(target, wanted)
    else:
        model = load_diffusers_model(WanTransformer3DModel, directory, target, wanted)
    with torch.no_grad():  # read every weight once: a lazily mapped file must count as loaded
        checksum = sum(float(p.float().sum()) for p in model.parameters())
    if target.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = sampler.stop()
    params = sum(p.numel() for p in model.parameters())
    return {
        "method": method, "seconds": round(seconds, 2), "parameters": params, "checksum": checksum,
        "peak_rss_gib": peak["VmRSS"], "peak_anon_gib": peak["RssAnon"], "peak_file_gib": peak["RssFile"],
        "weights_gib": round(sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30, 2),
        "peak_gpu_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if target.type == "cuda" else None,
    }  # fmt: skip


def cmd_load(args: argparse.Namespace) -> None:
    from diffusers import WanTransformer3DModel

    directory = Path(args.work) / f"{args.config}-L{args.layers or 'all'}-{args.stored_dtype}" / "transformer"
    written = None  # seconds to write the random checkpoint (None: an earlier run's was reused)
    if not (directory / "config.json").is_file():
        print(
            f"writing a random checkpoint to {directory} …",
            flush=True,
            file=sys.stderr if args.json else None,
        )
        start = time.perf_counter()
        config = transformer_config(args.config, "t2v", args.layers)
        write_random(WanTransformer3DModel, config, directory, DTYPES[args.stored_dtype])
        written = round(time.perf_counter() - start, 2)
    rows = []
    for method in ("state-dict", "vidarc"):
        out = subprocess.run(
            [sys.executable, "-m", "bench.wan_official", "_measure", method, str(directory), args.device, args.dtype],
            capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
        )  # fmt: skip
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    ratio = rows[0]["peak_rss_gib"] / max(rows[1]["peak_rss_gib"], 0.01)
    if args.json:
        print(json.dumps({
            "config": args.config, "layers": args.layers, "stored_dtype": args.stored_dtype,
            "device": args.device, "dtype": args.dtype, "parameters": rows[0]["parameters"],
            "methods": {row["method"]: row for row in rows}, "peak_rss_ratio": round(ratio, 2),
            "write_seconds": written,
        }))  # fmt: skip
        return
    print(f"{args.config} ({rows[0]['parameters'] / 1e9:.2f}B params, stored {args.stored_dtype}) -> "
          f"{args.device} {args.dtype}")  # fmt: skip
    print("  method       seconds   peak RSS   of it heap (anon)   mapped file   weights   peak GPU   (GiB)")
    for row in rows:
        print(f"  {row['method']:<11} {row['seconds']:>8.2f} {row['peak_rss_gib']:>10.2f} {row['peak_anon_gib']:>19.2f}"
              f" {row['peak_file_gib']:>13.2f} {row['weights_gib']:>9.2f} {row['peak_gpu_gib']!s:>10}")  # fmt: skip
    print(f"  peak RSS ratio state-dict / vidarc: {ratio:.2f}x")


def write_official(root: Path, name: str, kind: str, stored: torch.dtype) -> Path:
    """A full-size random Wan2.1 folder: transformer, Wan VAE, UMT5-XXL, CLIP ViT-H/14, scheduler."""
    import transformers
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from wan_layouts import write_text_tokenizer

    if (root / "model_index.json").is_file():
        return root
    write_random(WanTransformer3DModel, transformer_config(name, kind, None), root / "transformer", stored)
    AutoencoderKLWan().save_pretrained(str(root / "vae"), safe_serialization=True)
    umt5 = transformers.UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                   num_heads=64, feed_forward_proj="gated-gelu")  # fmt: skip
    write_random(transformers.UMT5EncoderModel, umt5, root / "text_encoder", stored, transformers=True)
    write_text_tokenizer(root / "tokenizer")
    UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                            flow_shift=3.0 if kind == "t2v" else 5.0).save_pretrained(str(root / "scheduler"))  # fmt: skip
    if kind != "t2v":
        clip = transformers.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                             num_attention_heads=16, image_size=224, patch_size=14,
                                             projection_dim=1024, hidden_act="gelu")  # fmt: skip
        write_random(transformers.CLIPVisionModel, clip, root / "image_encoder", stored, transformers=True)
        transformers.CLIPImageProcessor().save_pretrained(str(root / "image_processor"))
    (root / "model_index.json").write_text(
        json.dumps({"_class_name": "WanPipeline" if kind == "t2v" else "WanImageToVideoPipeline"})
    )
    return root


def cmd_gop(args: argparse.Namespace) -> None:
    from fractions import Fraction

    import numpy as np

    from codec.base import RateTarget
    from codec.gvc.codec import GvcCodec
    from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

    width, height = (int(v) for v in args.size.split("x"))
    root = write_official(
        Path(args.work) / f"{args.config}-{args.kind}", args.config, args.kind, DTYPES[args.stored_dtype]
    )
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    codec = GvcCodec(model=str(root), device="cuda", steps=args.steps, atoms=args.atoms)
    torch.cuda.synchronize()
    load = time.perf_counter() - start
    clip = synthetic_clip(EVAL_IMAGES[0], 33, width, height, seed=0)
    start = time.perf_counter()
    enc = codec.encode(clip, RateTarget("quality", args.m), Fraction(24))
    encode = time.perf_counter() - start
    start = time.perf_counter()
    same = codec.decode(enc.payload, 33, width, height)
    decode = time.perf_counter() - start
    peak_gpu = torch.cuda.max_memory_allocated() / 2**30
    exact = bool(np.array_equal(same, enc.reconstruction))
    del codec
    torch.cuda.empty_cache()
    fp32 = GvcCodec(model=str(root), device="cuda", dtype="float32").decode(enc.payload, 33, width, height)
    mse = float(np.mean((fp32.astype(np.float64) - enc.reconstruction) ** 2))
    drift = 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
    print(json.dumps({
        "config": args.config, "kind": args.kind, "size": args.size, "frames": 33, "steps": args.steps,
        "K": args.atoms, "M": args.m, "load_s": round(load, 1), "encode_s": round(encode, 1),
        "decode_s": round(decode, 1), "peak_gpu_gib": round(peak_gpu, 1),
        "peak_host_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),
        "same_device_decode_exact": exact, "bf16_vs_fp32_decode_psnr_db": round(drift, 2),
        "payload_bytes": len(enc.payload),
    }))  # fmt: skip


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "_measure":
        print(json.dumps(measure(sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5])))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    load = sub.add_parser("load", help="memory and time of loading one transformer, two ways")
    gop = sub.add_parser("gop", help="(GPU) a full random Wan folder: load, one GOP, peaks, drift")
    for p in (load, gop):
        p.add_argument("--config", choices=sorted(WAN), default="wan-1.3b")
        p.add_argument("--stored-dtype", choices=sorted(DTYPES), default="bfloat16")
        p.add_argument("--work", default="/tmp/vidarc-wan-bench")
    load.add_argument("--layers", type=int, default=None, help="fewer blocks than the config (a mid size)")
    load.add_argument("--device", default="cpu")
    load.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    load.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    gop.add_argument("--kind", choices=["t2v", "i2v", "flf2v"], default="t2v")
    gop.add_argument("--size", default="832x480")
    gop.add_argument("--steps", type=int, default=20)
    gop.add_argument("--atoms", type=int, default=16384)
    gop.add_argument("--m", type=int, default=64)
    args = parser.parse_args()
    cmd_load(args) if args.command == "load" else cmd_gop(args)


if __name__ == "__main__":
    main()
