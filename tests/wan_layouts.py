"""Tiny random-weight Wan2.1 models in the exact official Diffusers layouts, built in the tests.

No Wan, UMT5 or CLIP weights can be downloaded here, so each layout is written the way the hub ships it,
with the same classes at toy sizes: `model_index.json`; `transformer/` and `text_encoder/` as sharded
safetensors with their index files; `tokenizer/` holding a UMT5-style tokenizer made with the
`tokenizers` library; `vae/`; `scheduler/`; and for I2V/FLF2V `image_encoder/` (CLIPVisionModel) +
`image_processor/` (CLIPImageProcessor). Also the two ways users get them: a Hugging Face cache snapshot
(symlinks into blobs/) and an `hf download --local-dir` folder (with its `.cache/huggingface/` files).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

TEXT_DIM = 32
CLIP_DIM = 32
CLIP_TOKENS = 17  # (32 / 8)² patches + the class token
PIPELINES = {"t2v": "WanPipeline", "i2v": "WanImageToVideoPipeline", "flf2v": "WanImageToVideoPipeline"}
FLOW_SHIFT = {"t2v": 3.0, "i2v": 5.0, "flf2v": 16.0}
VAE_CONFIG = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
              "temperal_downsample": [False, True, True]}  # fmt: skip


def transformer_config(kind: str) -> dict:
    config = {
        "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 16, "in_channels": 16,
        "out_channels": 16, "text_dim": TEXT_DIM, "freq_dim": 16, "ffn_dim": 64, "num_layers": 1,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 64,
    }  # fmt: skip
    if kind != "t2v":
        config.update(in_channels=36, image_dim=CLIP_DIM, added_kv_proj_dim=32)
    if kind == "flf2v":
        config.update(pos_embed_seq_len=2 * CLIP_TOKENS)
    return config


def write_vae(directory: Path, seed: int = 0) -> None:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    AutoencoderKLWan(**VAE_CONFIG).save_pretrained(str(directory), safe_serialization=True)


def write_text_tokenizer(directory: Path) -> None:
    """A UMT5-style SentencePiece-unigram tokenizer (pad 0, eos 1, unk 2; "</s>" appended)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    pieces += [(c, -1.0 - 0.1 * i) for i, c in enumerate("▁abcdefghijklmnopqrstuvwxyz")]
    tok = Tokenizer(models.Unigram(pieces, unk_id=2))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    transformers.T5TokenizerFast(
        tokenizer_object=tok, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0
    ).save_pretrained(str(directory))


def build_wan_dir(root: Path, kind: str, seed: int = 0) -> Path:
    """Write a tiny Wan2.1 `kind` ("t2v", "i2v" or "flf2v") pipeline folder at `root`."""
    import transformers
    from diffusers import UniPCMultistepScheduler, WanTransformer3DModel

    torch.manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": PIPELINES[kind], "_diffusers_version": "0.33.0.dev0",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "T5TokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"],
    }  # fmt: skip
    transformer = WanTransformer3DModel(**transformer_config(kind))
    with torch.no_grad():  # diffusers zero-initialises some projections; random weights everywhere
        for param in transformer.parameters():
            param.normal_(0.0, 0.05)
    transformer.save_pretrained(str(root / "transformer"), safe_serialization=True, max_shard_size="40KB")
    write_vae(root / "vae", seed)
    umt5 = transformers.UMT5Config(
        vocab_size=32, d_model=TEXT_DIM, d_kv=8, d_ff=64, num_layers=1, num_heads=2,
        relative_attention_num_buckets=8, relative_attention_max_distance=16,
    )  # fmt: skip
    transformers.UMT5EncoderModel(umt5).save_pretrained(str(root / "text_encoder"), max_shard_size="20KB")
    write_text_tokenizer(root / "tokenizer")
    UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=FLOW_SHIFT[kind]
    ).save_pretrained(str(root / "scheduler"))
    if kind != "t2v":
        index["image_encoder"] = ["transformers", "CLIPVisionModel"]
        index["image_processor"] = ["transformers", "CLIPImageProcessor"]
        clip = transformers.CLIPVisionConfig(
            hidden_size=CLIP_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
            image_size=32, patch_size=8,
        )  # fmt: skip
        transformers.CLIPVisionModel(clip).save_pretrained(str(root / "image_encoder"))
        transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ).save_pretrained(str(root / "image_processor"))
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root


def hub_snapshot(source: Path, cache: Path, repo_id: str, revision: str = "a" * 40) -> Path:
    """Lay `source` out as huggingface_hub's cache does: blobs/<sha256>, snapshots/<rev>/… symlinks."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "blobs").mkdir(exist_ok=True)
    for path in sorted(source.rglob("*")):
        if not path.is_file() or any(p.startswith(".") for p in path.relative_to(source).parts):
            continue
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return snapshot


def add_local_dir_bookkeeping(root: Path, revision: str = "b" * 40) -> None:
    """What `hf download --local-dir` leaves beside the files: `.cache/huggingface/` metadata and locks."""
    meta_root = root / ".cache" / "huggingface"
    (meta_root / "download").mkdir(parents=True, exist_ok=True)
    (meta_root / ".gitignore").write_text("*\n")
    for path in sorted(root.rglob("*.json")):
        if ".cache" in path.parts:
            continue
        rel = path.relative_to(root)
        meta = meta_root / "download" / rel.parent / (rel.name + ".metadata")
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(f'{revision}\n"etag-{rel.name}"\n1767225600.0\n')
        (meta.parent / (rel.name + ".lock")).write_text("")
    (root / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
