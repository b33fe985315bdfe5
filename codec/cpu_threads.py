"""One torch thread per neural pass on the CPU, so a pixel decode gives the same bytes on every machine
with the same vector unit, whatever its core count.

Why: oneDNN picks its kernels and splits its reductions by the number of threads it is given, so the
same GLVC payload decoded with one thread and with two differed by a level here and there, and a verify
on the machine that wrote the archive reported every GOP as drift. With one intra-op thread per pass the
arithmetic no longer depends on the core count; cores are used by coding several GOPs side by side
instead (the neural codecs are thread-safe on the CPU: `codec.gpu.DeviceStage` lets CPU passes run
concurrently, and the tokenizer gives each thread its own causal cache), which is also the faster way
to use them: two GOPs on two cores decode 1.3-1.5× faster than one GOP on two threads (`vidarc bench
codec --gops 2`).

`one_thread_on_cpu` sets it for the calling thread, as every entry point of a neural codec that runs
networks on the CPU does. torch keeps the count per thread once a thread has run a parallel op, and the
setting is also the default for threads that start later: a process that codes neural GOPs on the CPU
therefore runs torch on one intra-op thread from then on (documented in README's restore section).
"""

from __future__ import annotations

import os

import torch


def one_thread_on_cpu(device: torch.device | str) -> None:
    """On the CPU, make this thread's torch ops single-threaded (no-op elsewhere, or when already)."""
    if torch.device(device).type == "cpu" and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask, so a container's or a Ray task's limit)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # platforms without affinity masks
        return max(1, os.cpu_count() or 1)
