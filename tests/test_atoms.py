"""Counter-based atoms: exact Philox, the same bits whatever the chunking or device, Gaussian moments."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from codec.gvc import atoms

MASK = 0xFFFFFFFF


def _philox_reference(ctr: list[int], key: list[int], rounds: int = 10) -> list[int]:
    """Philox4x32 in plain Python integers (Salmon et al. 2011), independent of the tensor code."""
    c, k = list(ctr), list(key)
    for _ in range(rounds):
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k[0], p1 & MASK, (p0 >> 32) ^ c[3] ^ k[1], p0 & MASK]
        k = [(k[0] + 0x9E3779B9) & MASK, (k[1] + 0xBB67AE85) & MASK]
    return c


def _tensor_philox(ctr: list[int], seed: int) -> list[int]:
    words = [torch.tensor([v], dtype=torch.int64) for v in ctr]
    return [int(w) for w in atoms.philox4x32(*words, seed)]


def _numpy_philox(ctr: list[int], seed: int) -> list[int]:
    words = [np.array([v], dtype=np.uint32) for v in ctr]
    return [int(w[0]) for w in atoms.philox4x32_numpy(*words, seed)]


@pytest.mark.parametrize(
    ("ctr", "key", "expected"),
    [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([MASK] * 4, [MASK] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ],
)
def test_philox_matches_published_known_answers(ctr, key, expected):
    assert _tensor_philox(ctr, key[0] | key[1] << 32) == expected
    assert _numpy_philox(ctr, key[0] | key[1] << 32) == expected


def test_philox_matches_python_integer_reference_on_random_counters():
    rng = random.Random(3)
    for _ in range(50):
        ctr = [rng.getrandbits(32) for _ in range(4)]
        key = [rng.getrandbits(32), rng.getrandbits(32)]
        assert _tensor_philox(ctr, key[0] | key[1] << 32) == _philox_reference(ctr, key)
        assert _numpy_philox(ctr, key[0] | key[1] << 32) == _philox_reference(ctr, key)


@pytest.mark.parametrize(
    ("seed", "step", "frames", "indices", "dim"),
    [
        (11, 3, [0, 2], [0, 5, 17, 1023, 4000], 1000),  # dim not a multiple of 4
        (2**64 - 1, atoms.INITIAL_NOISE_STEP, [0, 1, MASK], [0, 2**31 + 5, MASK], 9216),  # all-ones words
        (42, 5, [7], [3], 1),
        (2**40 + 9, 0, [0, 3, 4], list(range(37)), 515),
    ],
)
@pytest.mark.parametrize("slab_quads", [1, 7, 64, 1 << 16])
def test_cpu_generator_gives_the_tensor_generators_bits(
    monkeypatch, seed, step, frames, indices, dim, slab_quads
):
    """The CPU's numpy Philox (made in slabs of counters, cut across atoms and within an atom) and the
    torch-op generator other devices run give the same float32 atoms, bit for bit."""
    monkeypatch.setattr(atoms, "_SLAB_QUADS", slab_quads)
    frames_t, idx = torch.tensor(frames), torch.tensor(indices)
    fast = atoms.gaussian_block(seed, step, frames_t, idx, dim)
    tensor_ops = atoms._gaussian_block_tensor(seed, step, frames_t, idx, dim)
    assert fast.shape == (len(frames), len(indices), dim) and fast.is_contiguous()
    assert torch.equal(fast, tensor_ops)


def test_atoms_identical_across_chunk_sizes_and_subsets():
    dim = 1000  # not a multiple of 4: the last Philox quad is partly used
    idx = torch.tensor([0, 5, 17, 1023, 4000], dtype=torch.int64)
    whole = atoms.atoms_for(11, 3, 2, idx, dim)
    for chunk in (1, 999, 3000, 1 << 20):
        assert torch.equal(atoms.atoms_for(11, 3, 2, idx, dim, chunk_elements=chunk), whole)
    one = atoms.atoms_for(11, 3, 2, idx[3:4], dim)
    assert torch.equal(one[0], whole[3])
    batched = atoms.gaussian_block(11, 3, torch.tensor([0, 2]), idx, dim)
    assert torch.equal(batched[1], whole)


def test_inner_products_match_explicit_atoms_for_every_chunking():
    gen = torch.Generator().manual_seed(0)
    residuals = torch.randn(3, 257, generator=gen)
    reference = torch.stack(
        [atoms.atoms_for(5, 1, f, torch.arange(300), 257) @ residuals[f] for f in range(3)]
    )
    for chunk in (257 * 3, 10_000, 1 << 22):
        got = atoms.inner_products(5, 1, residuals, 300, chunk_elements=chunk)
        torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-4)


def test_codebooks_differ_between_steps_frames_and_seeds():
    idx = torch.arange(4)
    base = atoms.atoms_for(1, 0, 0, idx, 64)
    for other in (
        atoms.atoms_for(1, 1, 0, idx, 64),
        atoms.atoms_for(1, 0, 1, idx, 64),
        atoms.atoms_for(2, 0, 0, idx, 64),
    ):
        assert not torch.equal(base, other)
    assert not torch.equal(base[0], base[1])


def test_atoms_are_standard_gaussian_and_uncorrelated():
    block = atoms.gaussian_block(7, 2, torch.tensor([0]), torch.arange(64), 4096)[0].double()
    values = block.flatten()
    assert abs(values.mean()) < 0.01
    assert abs(values.var() - 1.0) < 0.01
    assert abs((values**4).mean() - 3.0) < 0.08  # Gaussian kurtosis, not uniform (1.8) or ±1 (1.0)
    assert values.abs().max() < 5.2
    corr = torch.corrcoef(block)
    off_diagonal = corr - torch.eye(64, dtype=corr.dtype)
    assert off_diagonal.abs().max() < 0.07  # 4096 samples: |ρ| ~ N(0, 1/64)


def test_initial_noise_is_deterministic_and_not_a_codebook_atom():
    a = atoms.initial_noise(9, 3, 128)
    assert torch.equal(a, atoms.initial_noise(9, 3, 128))
    assert not torch.equal(a[0], atoms.atoms_for(9, 0, 0, torch.tensor([0]), 128)[0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_atoms_bit_identical_on_cpu_and_gpu():
    idx = torch.tensor([0, 3, 9999, 16383], dtype=torch.int64)
    cpu = atoms.gaussian_block(42, 5, torch.arange(3), idx, 230_400 // 16)
    gpu = atoms.gaussian_block(42, 5, torch.arange(3, device="cuda"), idx.cuda(), 230_400 // 16)
    assert torch.equal(cpu, gpu.cpu())
    noise_cpu = atoms.initial_noise(42, 2, 1000)
    assert torch.equal(noise_cpu, atoms.initial_noise(42, 2, 1000, "cuda").cpu())


_FUSED_CHECK = """
import torch
from codec.gvc import atoms, atoms_fused

gen = torch.Generator().manual_seed(1)
for frames, dim, k, seed, step in ((2, 37, 70, 7, 3), (3, 515, 96, 2**40 + 5, 11)):
    residuals = torch.randn(frames, dim, generator=gen)
    assert atoms_fused.available(residuals.device)
    got = atoms_fused._launch(seed, step, residuals, k)
    want = torch.stack(
        [atoms.atoms_for(seed, step, f, torch.arange(k), dim) @ residuals[f] for f in range(frames)]
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4 * float(residuals.norm(dim=1).max()))
    assert torch.equal(got.abs().topk(8, dim=1).indices, want.abs().topk(8, dim=1).indices)
print("fused ok")
"""


def test_fused_search_kernel_matches_the_atoms_under_the_triton_interpreter():
    """The GPU search kernel (Philox in 32-bit words, table lookup, on-the-spot reduction) gives the
    inner products of exactly the replayable atoms. Triton's CPU interpreter runs the same kernel code
    here; the GPU run is `test_fused_search_on_gpu_matches_the_reference`."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", _FUSED_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "fused ok" in done.stdout, done.stderr[-2000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_search_on_gpu_matches_the_reference():
    from codec.gvc import atoms_fused

    residuals = torch.randn(9, 16 * 30 * 52, device="cuda")
    fused = atoms_fused._launch(3, 4, residuals, 1024)
    reference = atoms.inner_products(3, 4, residuals, 1024)
    torch.testing.assert_close(fused, reference, rtol=0, atol=1e-4 * float(residuals.norm(dim=1).max()))
    top_f = fused.abs().topk(64, dim=1).indices.sort(dim=1).values
    top_r = reference.abs().topk(64, dim=1).indices.sort(dim=1).values
    assert (top_f == top_r).float().mean() > 0.99
    # Seed or step 1: Triton specialises integer arguments equal to 1 unless told not to.
    ones = atoms_fused._launch(1, 1, residuals, 64)
    torch.testing.assert_close(
        ones,
        atoms.inner_products(1, 1, residuals, 64),
        rtol=0,
        atol=1e-4 * float(residuals.norm(dim=1).max()),
    )
    assert atoms_fused.inner_products_fused(3, 4, residuals, 1024).shape == (9, 1024)
    assert atoms_fused.available(residuals.device)  # the self-check on first use passed


_FOLDED_TOP_CHECK = """
import torch
from codec.gvc import atoms, atoms_fused

gen = torch.Generator().manual_seed(2)
for frames, dim, k, m, seed, step in ((2, 9, 40, 5, 7, 3), (1, 17, 70, 20, 2**40 + 5, 1)):
    residuals = torch.randn(frames, dim, generator=gen)
    want = torch.stack(
        [atoms.atoms_for(seed, step, f, torch.arange(k), dim) @ residuals[f] for f in range(frames)]
    )
    top = want.abs().topk(m, dim=1).indices.sort(dim=1).values
    indices, negative = atoms_fused._launch_top(seed, step, residuals, k, m, subblocks=2)
    assert torch.equal(indices, top), (indices, top)
    assert torch.equal(negative, want.gather(1, top) < 0)
indices, negative = atoms_fused.select_top_atoms(seed, step, residuals, k, m)  # self-checked first use
assert atoms_fused._state["top_verified"] and torch.equal(indices, top)
print("folded ok")
"""


def test_top_m_selection_folded_into_the_search_kernel_matches_the_reference():
    """The kernel that keeps only each program's best atoms (sortable keys merged by a bitonic sort)
    picks the same atoms, with the same signs, as `torch.topk` over the replayable atoms' products —
    with K not a multiple of the kernel's blocks and M not a power of two. Triton's CPU interpreter
    runs the kernel code here."""
    pytest.importorskip("triton")
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="1")
    done = subprocess.run(
        [sys.executable, "-c", _FOLDED_TOP_CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "folded ok" in done.stdout, done.stderr[-2000:]
