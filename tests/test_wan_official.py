"""Official Wan2.1 checkpoints as downloaded: stock layouts load unpinned or pinned, from a hub cache
snapshot or an `hf download --local-dir` folder; GVC runs T2V, I2V and FLF2V on them with the
conditioning diffusers' pipelines compute; unsupported modes and swapped weights are refused clearly.

The models are tiny random-weight ones in the exact official layouts (`wan_layouts`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from wan_layouts import FLOW_SHIFT, add_local_dir_bookkeeping, hub_snapshot, write_vae

from codec.base import RateTarget
from codec.errors import ModelLoadError, ModelMismatchError, UnsupportedInputError
from codec.gvc.codec import GvcCodec
from codec.modeldir import HashCache, load_model_dir, pin_model_dir
from codec.wan import flow_layout
from pipeline.sources.synthetic import TRAIN_IMAGES, synthetic_clip

REPO = Path(__file__).resolve().parents[1]
W, H, T = 64, 48, 9
FAST = dict(steps=4, atoms=64)  # 1 coded step: the machinery, not the quality


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    return synthetic_clip(TRAIN_IMAGES[0], T, W, H, seed=1)


@pytest.fixture(scope="module")
def codecs(wan_dirs):
    return {kind: GvcCodec(model=str(path), **FAST) for kind, path in wan_dirs.items()}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "jobs.cli", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_modes_components_and_shift_come_from_the_configs(wan_dirs):
    expected = {"t2v": ("t2v",), "i2v": ("i2v",), "flf2v": ("flf2v",)}
    for kind, path in wan_dirs.items():
        layout = flow_layout(path)
        assert layout.modes == expected[kind] and layout.flow_shift == FLOW_SHIFT[kind]
        assert layout.clip == (kind != "t2v") and not layout.fixed_text
        assert {"vae", "transformer", "text_encoder", "tokenizer"} <= set(layout.components)
        assert ("image_encoder" in layout.components) == layout.clip
    bundled = flow_layout(REPO / "codec" / "models" / "vidarc-tiny")
    assert bundled.modes == ("flf2v", "i2v", "t2v") and bundled.components == ("tokenizer", "flow")


@pytest.mark.parametrize("kind", ["t2v", "i2v", "flf2v"])
def test_each_official_layout_codes_and_a_fresh_decoder_replays_it(wan_dirs, codecs, clip, kind):
    codec = codecs[kind]
    assert codec.mode == kind  # the default is the best mode the model has
    assert codec.sampler["shift"] == FLOW_SHIFT[kind]  # from scheduler/scheduler_config.json
    assert (codec.backbone.image_encoder is not None) == (kind != "t2v")
    enc = codec.encode(clip, RateTarget("quality", 4), Fraction(24))
    assert enc.params["mode"] == kind and (enc.params["reference_bytes"] > 0) == (kind != "t2v")
    decoder = GvcCodec(model=str(wan_dirs[kind]))  # no options: everything else is in the payload
    assert np.array_equal(decoder.decode(enc.payload, T, W, H), enc.reconstruction)


def test_conditioning_matches_what_diffusers_pipelines_compute(wan_dirs, codecs):
    """The empty-prompt embedding is `WanPipeline.encode_prompt("")`; the image embedding is
    `WanImageToVideoPipeline.encode_image([first, last])` — computed here from the same components."""
    import transformers
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanPipeline
    from PIL import Image

    root = wan_dirs["flf2v"]
    text = transformers.UMT5EncoderModel.from_pretrained(str(root / "text_encoder"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(root / "tokenizer"))
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=None, transformer=None,
                       scheduler=UniPCMultistepScheduler())  # fmt: skip
    reference, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=512,
                                      device=torch.device("cpu"))  # fmt: skip
    ours = codecs["flf2v"].backbone.text_embedding
    assert ours.shape == reference.shape and torch.allclose(ours, reference, atol=1e-5)
    assert list((root / ".vidarc").glob("null_text-*.safetensors"))  # cached beside the model
    i2v = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text, vae=None, transformer=None, scheduler=UniPCMultistepScheduler(),
        image_encoder=transformers.CLIPVisionModel.from_pretrained(str(root / "image_encoder")),
        image_processor=transformers.CLIPImageProcessor.from_pretrained(str(root / "image_processor")),
    )  # fmt: skip
    images = [np.random.default_rng(i).integers(0, 256, (H, W, 3), dtype=np.uint8) for i in range(2)]
    expected = i2v.encode_image([Image.fromarray(i) for i in images], torch.device("cpu"))
    assert torch.allclose(codecs["flf2v"].backbone.image_encoder(images), expected, atol=1e-6)


def test_an_unsupported_mode_is_refused_before_any_weight_is_read(wan_dirs, tmp_path, monkeypatch):
    broken = tmp_path / "i2v"
    shutil.copytree(wan_dirs["i2v"], broken)
    for shard in (broken / "transformer").glob("*.safetensors"):
        shard.write_bytes(b"not weights")  # reading any weight would fail differently
    monkeypatch.setenv("VIDARC_HASH_CACHE", str(tmp_path / "hashes"))
    with pytest.raises(UnsupportedInputError, match=r"supports mode i2v, not t2v; use --gvc-mode i2v"):
        GvcCodec(model=str(broken), mode="t2v")
    assert not (tmp_path / "hashes").exists()  # nothing was even hashed
    with pytest.raises(ModelLoadError, match="WanTransformer3DModel"):
        GvcCodec(model=str(broken))  # the supported mode gets as far as the weights


def test_hub_cache_snapshot_and_local_dir_bookkeeping_keep_the_identity(wan_dirs, codecs, clip, tmp_path):
    plain = load_model_dir(wan_dirs["t2v"])
    snapshot = hub_snapshot(wan_dirs["t2v"], tmp_path / "hub", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    assert (snapshot / "transformer" / "config.json").is_symlink()
    cached = load_model_dir(snapshot)
    assert cached.model_id == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers@aaaaaaaaaaaa" and not cached.pinned
    assert cached.card["files"] == plain.card["files"]
    local = tmp_path / "local"
    shutil.copytree(wan_dirs["t2v"], local, ignore=shutil.ignore_patterns(".vidarc"))
    add_local_dir_bookkeeping(local)
    assert load_model_dir(local).card["files"] == plain.card["files"]  # .cache/, .lock, .metadata ignored
    pinned = pin_model_dir(local, name="wan-t2v")
    assert pinned.model_id == "wan-t2v@bbbbbbbbbbbb" and pinned.card["files"] == plain.card["files"]
    add_local_dir_bookkeeping(local, revision="c" * 40)  # a later `hf download` touches its bookkeeping
    assert load_model_dir(local).model_id == "wan-t2v@bbbbbbbbbbbb"  # the card still verifies
    # An archive made with the plain folder decodes with the hub snapshot: same weights, same identity.
    enc = codecs["t2v"].encode(clip, RateTarget("quality", 3), Fraction(24))
    from_cache = GvcCodec(model=str(snapshot))
    assert from_cache.model_sha256 == codecs["t2v"].model_sha256
    assert np.array_equal(from_cache.decode(enc.payload, T, W, H), enc.reconstruction)


def test_digests_are_cached_by_file_identity_and_a_changed_file_is_hashed_again(wan_dirs, tmp_path):
    root = tmp_path / "m"
    shutil.copytree(wan_dirs["t2v"], root)
    pin_model_dir(root, hashes=HashCache(tmp_path / "hashes"))
    first = HashCache(tmp_path / "hashes")
    load_model_dir(root, hashes=first)
    assert first.hashed == []  # pinning hashed them; loading reuses the digests
    hashes = HashCache(tmp_path / "hashes")
    config = root / "vae" / "config.json"
    stat = config.stat()
    text = config.read_text()
    config.write_text(text.replace('"base_dim": 8', '"base_dim": 9'))  # same size, new bytes
    os.utime(config, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even with the old mtime
    with pytest.raises(ModelLoadError, match=r"vae/config.json has sha256"):
        load_model_dir(root, hashes=hashes)
    assert hashes.hashed == [str(config)]


def test_a_swapped_component_is_refused_at_load_and_at_decode(wan_dirs, codecs, clip, tmp_path):
    enc = codecs["t2v"].encode(clip, RateTarget("quality", 3), Fraction(24))
    swapped = tmp_path / "swapped"
    shutil.copytree(wan_dirs["t2v"], swapped, ignore=shutil.ignore_patterns(".vidarc"))
    pin_model_dir(swapped, name="wan", version="1")
    shutil.rmtree(swapped / "vae")
    write_vae(swapped / "vae", seed=7)  # same architecture, other weights
    with pytest.raises(ModelLoadError, match=r"vae/diffusion_pytorch_model.safetensors has sha256"):
        GvcCodec(model=str(swapped))
    (swapped / "model_card.json").unlink()  # unpinned: it loads, as another model
    other = GvcCodec(model=str(swapped))
    with pytest.raises(ModelMismatchError, match="was made with model"):
        other.decode(enc.payload, T, W, H)


def test_model_info_and_pin_on_the_command_line(wan_dirs, tmp_path):
    proc = _cli("model", "info", str(wan_dirs["flf2v"]), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["gvc"]["modes"] == ["flf2v"] and info["gvc"]["flow_shift"] == FLOW_SHIFT["flf2v"]
    assert not info["pinned"] and info["glvc"]["usable"] is False
    names = {c["name"]: c for c in info["components"]}
    assert names["transformer"]["parameters"] > 0 and names["transformer"]["stored_dtype"] == "F32"
    assert names["image_encoder"]["class"] == "CLIPVisionModel"
    local = tmp_path / "local"
    shutil.copytree(wan_dirs["t2v"], local)
    add_local_dir_bookkeeping(local)
    proc = _cli("model", "pin", str(local), "--name", "wan-t2v", "--version", "7")
    assert proc.returncode == 0 and "pinned wan-t2v@7" in proc.stdout, proc.stderr
    card = json.loads((local / "model_card.json").read_text())
    assert not any(rel.startswith(".") or rel.endswith((".lock", ".metadata")) for rel in card["files"])
    human = _cli("model", "info", str(local))
    assert "wan-t2v@7" in human.stdout and "modes t2v" in human.stdout
    _one_line_error(_cli("model", "info", str(tmp_path / "nowhere")), "no such directory")
    (tmp_path / "empty").mkdir()
    _one_line_error(_cli("model", "pin", str(tmp_path / "empty")), "not a model directory")
