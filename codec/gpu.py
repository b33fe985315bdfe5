"""Running the codecs' networks well on a GPU, with decisions that are plain functions testable on a CPU.

- **Tiling** (`vae_needs_tiling`): the Wan VAE's tiled path is slower and blends tile seams, so it is
  used only when the untiled pass would not fit. The Wan VAE codes 4 frames at a time with a causal
  cache (decodes one latent frame at a time), so its peak activation memory grows with H·W, not with
  the frame count: measured on an H100 in bf16, 10 GiB at 1280×720 and 22.5 GiB at 1920×1080, both
  ≈ 61 bytes per pixel per base channel per byte of dtype. `VAE_ACTIVATION_BYTES` rounds that up;
  the frames in and out of the VAE are added on top, and the total must fit in a share of the memory
  this process can still get (`free_memory_bytes`: the device's free memory plus what PyTorch's
  allocator holds unused; on a CPU, half the host's available memory).
- **Compilation** (`CompiledOrEager`): `torch.compile` of a module, tried on first use; when it
  cannot compile (no compiler toolchain, an unsupported op) the eager module answers from then on and
  the fallback is logged once.
- **Overlap** (`DeviceStage`, `PinnedUploader`, `thread_stream`): a codec called from several threads
  at once (the encode actor keeps several GOPs in flight) runs each thread's GPU work on that thread's
  own CUDA stream, so one GOP's CPU work (entropy coding, whose `.cpu()` copies would otherwise wait
  for every kernel queued on a shared stream) overlaps the next GOP's tokenizer pass. The heavy
  network passes hold the codec's `DeviceStage` (one at a time: bounded memory, and the Wan VAE keeps
  its causal cache on the module). Frames go to the GPU through a pinned host buffer on a separate
  copy stream, before the stage is taken, so the copy of GOP n+1 overlaps the compute of GOP n.
  On a CPU, streams and pinned memory are no-ops and only the locking remains.
- **Busy time** (`BusyClock`): the union of the intervals a device stage was running, the encode
  actor's measure of how busy it kept its device.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from codec.busy_clock import BusyClock
from codec.cpu_threads import cpu_pass, one_thread_on_cpu

log = logging.getLogger("vidarc.gpu")

#: Peak activation bytes of an untiled Wan VAE pass per pixel, per base channel, per byte of dtype
#: (measured ≈ 61 on an H100; rounded up for allocator fragmentation).
VAE_ACTIVATION_BYTES = 64
#: Share of the memory still obtainable that an untiled pass may plan to use.
MEMORY_HEADROOM = 0.85
#: On a CPU, the share of the host's available memory the tokenizer may plan to use (other processes
#: — decode tasks, metrics, other actors — share the host).
HOST_MEMORY_SHARE = 0.5


# ---- tiling ------------------------------------------------------------------------------------------------
def vae_untiled_bytes(height: int, width: int, frames: int, base_dim: int, itemsize: int) -> int:
    """Planned peak bytes of one untiled Wan VAE encode or decode of `frames` frames at height×width:
    the activations (independent of the frame count: the VAE works 4 frames at a time) plus the pixel
    frames held whole (uint8 in, the network's dtype, float32 while converting back)."""
    pixels = height * width
    activations = VAE_ACTIVATION_BYTES * base_dim * itemsize * pixels
    frames_held = frames * pixels * 3 * (1 + itemsize + 4)
    return int(activations + frames_held)


def vae_needs_tiling(
    free_bytes: int | None, height: int, width: int, frames: int, base_dim: int, itemsize: int
) -> bool:
    """True when an untiled pass would not fit in `MEMORY_HEADROOM` of `free_bytes`.

    `free_bytes=None` (unknown) keeps the untiled path up to 1280×720, the size known to fit a 24 GB GPU.
    """
    if free_bytes is None:
        return height * width > 1280 * 720
    return vae_untiled_bytes(height, width, frames, base_dim, itemsize) > MEMORY_HEADROOM * free_bytes


def free_memory_bytes(device: torch.device) -> int | None:
    """Bytes this process can still get on `device`: on CUDA the driver's free memory plus what
    PyTorch's caching allocator reserved but does not use; on a CPU a share of the host's available
    memory; None when unknown."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free + max(0, cached))
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil comes with Ray
        return None
    return int(HOST_MEMORY_SHARE * psutil.virtual_memory().available)


# ---- compilation -------------------------------------------------------------------------------------------
def compile_by_default(device: torch.device) -> bool:
    """`torch.compile` pays off where kernels dominate (CUDA); on CPUs the compile time does not."""
    return device.type == "cuda"


class CompiledOrEager(nn.Module):
    """A module whose forward runs a `torch.compile`d version of `module`, or `module` itself once
    compiling or running the compiled version failed (logged once). The eager module stays registered
    as `module`, so parameters, dtype and device moves are the eager module's. `mode` is
    torch.compile's ("reduce-overhead" adds CUDA graphs)."""

    def __getattr__(self, name: str) -> Any:  # `config`, `dtype`, … of the wrapped module
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)

    def __init__(
        self, module: nn.Module, name: str, backend: str | Callable = "inductor", mode: str | None = None
    ) -> None:
        super().__init__()
        self.module = module
        self.name = name
        # Not registered as a submodule: it shares `module`'s parameters, which must appear once.
        compiled = torch.compile(module, backend=backend, mode=mode, dynamic=False)
        object.__setattr__(self, "compiled", compiled)
        self.fallback_reason: str | None = None
        self.compiled: Callable | None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # compile or run failure: the eager module is always correct
                self.compiled = None
                root: BaseException = exc  # the backend's own error, not dynamo's wrapper
                while (inner := getattr(root, "inner_exception", None) or root.__cause__) is not None:
                    root = inner
                first = (str(root).strip().splitlines() or [""])[0]
                self.fallback_reason = f"{type(root).__name__}: {first}"
                log.warning(
                    "torch.compile of %s failed (%s); running it eagerly", self.name, self.fallback_reason
                )
        return self.module(*args, **kwargs)


# ---- overlap -------------------------------------------------------------------------------------------------
_local = threading.local()


@contextlib.contextmanager
def thread_stream(device: torch.device) -> Iterator[None]:
    """Run the block on this thread's own CUDA stream (made once per thread); no-op off CUDA."""
    if device.type != "cuda":
        yield
        return
    streams = getattr(_local, "streams", None)
    if streams is None:
        streams = _local.streams = {}
    key = device.index if device.index is not None else torch.cuda.current_device()
    if key not in streams:
        streams[key] = torch.cuda.Stream(device=key)
    with torch.cuda.stream(streams[key]):
        yield


class DeviceStage:
    """The heavy network passes of one codec, timed into `clock`. On a GPU: one at a time, each on its
    thread's stream, finished (stream synchronised) before the next starts. On the CPU, passes of
    several threads run at once, each on one torch thread (`codec.cpu_threads`): that is how a CPU's
    cores are used, and what keeps a pixel decode independent of the core count."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.lock: Any = threading.Lock() if device.type != "cpu" else contextlib.nullcontext()
        self.clock = BusyClock()

    @contextlib.contextmanager
    def run(self) -> Iterator[None]:
        one_thread_on_cpu(self.device)
        on_cpu = cpu_pass() if self.device.type == "cpu" else contextlib.nullcontext()
        with self.lock, on_cpu, thread_stream(self.device), self.clock.busy():
            try:
                yield
            finally:
                if self.device.type == "cuda":
                    torch.cuda.current_stream(self.device).synchronize()


class PinnedUploader:
    """uint8 frames to the device through a reused pinned host buffer, copied on a side stream.

    The caller's current stream waits for the copy (an event, not a host sync), and the returned
    tensor is marked as used there, so the allocator never hands its memory out early. Off CUDA the
    frames are wrapped without a copy.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._lock = threading.Lock()
        self._buffer: torch.Tensor | None = None
        self._copied: torch.cuda.Event | None = None
        self._stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None

    def upload(self, frames: np.ndarray) -> torch.Tensor:
        array = np.ascontiguousarray(frames)
        if self._stream is None:
            return torch.from_numpy(array)
        with self._lock:
            if self._copied is not None:
                self._copied.synchronize()  # the previous copy has left the buffer
            if self._buffer is None or self._buffer.numel() < array.nbytes:
                self._buffer = torch.empty(array.nbytes, dtype=torch.uint8, pin_memory=True)
            staging = self._buffer[: array.nbytes].view(array.shape)
            staging.numpy()[...] = array
            with torch.cuda.stream(self._stream):
                on_device = staging.to(self.device, non_blocking=True)
                self._copied = torch.cuda.Event()
                self._copied.record(self._stream)
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(self._copied)
            on_device.record_stream(consumer)
            return on_device
