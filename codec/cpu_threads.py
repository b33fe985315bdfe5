"""One torch thread per neural pass on the CPU, so a pixel decode gives the same bytes on every machine
with the same vector unit, whatever its core count.

Why: oneDNN picks its kernels and splits its reductions by the number of threads it is given, so the
same GLVC payload decoded with one thread and with two differed by a level here and there, and a verify
on the machine that wrote the archive reported every GOP as drift. With one intra-op thread per pass the
arithmetic no longer depends on the core count; cores are used by coding several GOPs side by side
instead (the neural codecs are thread-safe on the CPU: `codec.gpu.DeviceStage` lets CPU passes run
concurrently, and the tokenizer gives each thread its own causal cache), which is also the faster way
to use them: two GOPs side by side on two cores decode 1.4× the frames/s of one GOP spread over both
(`vidarc bench codec --gops 2`); inside one GOP, `parallel_map` spreads pieces cut by shape only.

`one_thread_on_cpu` sets it for the calling thread, as every entry point of a neural codec that runs
networks on the CPU does. torch keeps the count per thread once a thread has run a parallel op, and the
setting is also the default for threads that start later: a process that codes neural GOPs on the CPU
therefore runs torch on one intra-op thread from then on (README says so where it describes verify).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from codec.cores import usable_cores

T = TypeVar("T")
R = TypeVar("R")


def one_thread_on_cpu(device: torch.device | str) -> None:
    """On the CPU, make this thread's torch ops single-threaded (no-op elsewhere, or when already)."""
    if torch.device(device).type == "cpu" and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


class _PassCount:
    """Neural passes running on the CPU now (`cpu_pass`): while several GOPs are coded side by side
    they already use the cores, and `parallel_map` runs inline rather than making them queue."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()


_passes = _PassCount()


@contextlib.contextmanager
def cpu_pass() -> Iterator[None]:
    """Mark a neural pass running on this thread (`codec.gpu.DeviceStage` on the CPU)."""
    with _passes.lock:
        _passes.count += 1
    try:
        yield
    finally:
        with _passes.lock:
            _passes.count -= 1


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_in_pool = threading.local()


def _pin_worker() -> None:
    torch.set_num_threads(1)
    _in_pool.active = True


def parallel_map(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`[fn(x) for x in items]`, spread over the process's cores, each call on one torch thread.

    For work cut into pieces whose cut does not depend on the machine (a convolution's output frames):
    each piece is the same single-threaded computation whichever worker runs it, so the result is
    bit-identical on one core or sixteen. Calls from inside a worker, single items and single-core
    processes run inline. The pool is shared by the whole process (GOPs decoded side by side wait on
    the same cores rather than multiplying threads)."""
    global _pool
    if len(items) < 2 or getattr(_in_pool, "active", False) or _passes.count > 1 or usable_cores() < 2:
        return [fn(item) for item in items]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(usable_cores(), "vidarc-cpu", initializer=_pin_worker)
    return list(_pool.map(fn, items))
