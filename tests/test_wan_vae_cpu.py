"""`codec.wan_vae_cpu`: the Wan2.1 VAE a whole clip per layer on the CPU gives the bits of diffusers'
chunked forwards (with `codec.wan_cpu`'s kernels), on any core count, and a CPU decoder never imports
diffusers. Equality of tensors and module lists only: speed is `vidarc bench codec`'s business."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from codec import cpu_threads, wan_vae_cpu
from codec.glvc.tokenizer import load_tokenizer
from codec.modeldir import bundled_model_path
from pipeline.sources.synthetic import EVAL_IMAGES, synthetic_clip

ROOT = Path(__file__).resolve().parents[1]
GOLDEN_MODEL = ROOT / "tests" / "golden" / "model"
#: Every resampling mode (2-D and 3-D, down and up), two res blocks per level.
OTHER_LAYOUT = {
    "base_dim": 4,
    "z_dim": 8,
    "dim_mult": [1, 2, 2],
    "num_res_blocks": 2,
    "temperal_downsample": [False, True],
    "latents_mean": [0.0] * 8,
    "latents_std": [1.0] * 8,
}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def other_layout(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKLWan

    torch.manual_seed(3)
    directory = tmp_path_factory.mktemp("wan") / "tokenizer"
    AutoencoderKLWan(**OTHER_LAYOUT).save_pretrained(str(directory), safe_serialization=True)
    return directory


def _both(directory: Path):
    whole, chunked = load_tokenizer(directory), load_tokenizer(directory)
    assert chunked.vae is not None  # asking for diffusers' model switches that tokenizer's passes to it
    assert whole.whole_clip is not None and chunked.whole_clip is None
    return whole, chunked


@pytest.mark.parametrize(("frames", "width", "height"), [(1, 64, 48), (5, 64, 48), (9, 96, 64)])
@pytest.mark.parametrize("layout", ["bundled", "golden", "other"])
def test_whole_clip_passes_equal_diffusers_chunked_passes(layout, frames, width, height, other_layout):
    """The bundled model, the golden archives' (the official Wan2.1 layout, tiny) and every resampling
    mode: latents and pixels bit for bit."""
    directories = {"bundled": bundled_model_path() / "tokenizer", "golden": GOLDEN_MODEL / "tokenizer"}
    directory = directories.get(layout, other_layout)
    whole, chunked = _both(directory)
    clip = synthetic_clip(EVAL_IMAGES[0], frames, width, height, seed=frames)
    latents = chunked.encode(clip)
    assert torch.equal(whole.encode(clip), latents)
    assert np.array_equal(whole.decode(latents), chunked.decode(latents))


def test_frames_on_the_pool_give_the_bytes_of_one_core(monkeypatch) -> None:
    tokenizer = load_tokenizer(bundled_model_path() / "tokenizer")
    clip = synthetic_clip(EVAL_IMAGES[1], 9, 96, 64, seed=1)
    results = []
    for cores in (4, 1):
        monkeypatch.setattr(cpu_threads, "usable_cores", lambda cores=cores: cores)
        latents = tokenizer.encode(clip)
        results.append((latents, tokenizer.decode(latents)))
    assert torch.equal(results[0][0], results[1][0]) and np.array_equal(results[0][1], results[1][1])


def test_diffusers_model_shares_the_weights_and_takes_over() -> None:
    tokenizer = load_tokenizer(bundled_model_path() / "tokenizer")
    model = tokenizer.whole_clip
    vae = tokenizer.vae
    assert tokenizer.whole_clip is None  # from now on the passes run what the caller holds
    theirs, ours = vae.state_dict(), model.state_dict()
    assert theirs.keys() == ours.keys()
    assert all(theirs[k].data_ptr() == ours[k].data_ptr() for k in ours)


def test_layouts_it_does_not_compute_stay_with_diffusers(tmp_path: Path) -> None:
    config = json.loads((bundled_model_path() / "tokenizer" / "config.json").read_text())
    assert wan_vae_cpu.supports(config)
    assert not wan_vae_cpu.supports({**config, "is_residual": True})
    assert not wan_vae_cpu.supports({**config, "patch_size": 2})
    assert not wan_vae_cpu.supports({**config, "attn_scales": [0.5]})
    with pytest.raises(ValueError, match=r"Wan2\.1 layout"):
        wan_vae_cpu.WanVaeCpu({**config, "is_residual": True})
    assert load_tokenizer(bundled_model_path() / "tokenizer", cpu_kernels=False).whole_clip is None


def test_a_glvc_restore_on_the_cpu_imports_no_diffusers() -> None:
    """diffusers' autoencoder package imports its whole zoo (seconds of a restore); the CPU decoder
    of a Wan2.1-layout tokenizer needs none of it."""
    golden = ROOT / "tests" / "golden"
    script = f"""
import json, sys
from pipeline.read.reader import ArchiveReader
reader = ArchiveReader({str(golden / "v2" / "glvc.vdrc")!r})
decoder = reader.decoder_for(model={str(golden / "model")!r}, device="cpu")
frames = next(iter(reader.decode_in_order([0], decoder)))
print(json.dumps({{"shape": list(frames.shape), "diffusers": sorted(m for m in sys.modules if m.startswith("diffusers"))}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["shape"][-1] == 3 and report["diffusers"] == []
