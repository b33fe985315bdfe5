"""How busy an encode actor kept its device: measured inside the actor, reported in summary.json.

Three measures, each with its source named, because they answer different questions:
- `actor`: the union of the intervals in which the actor was coding a GOP, measuring its quality or
  searching a video's quality target
  (its own timers, `codec.gpu.BusyClock`); on a CPU actor this is the busy fraction.
- `device_stage`: the union of the codec's heavy network passes (`DeviceStage`: tokenizer or sampler,
  each ended by a stream synchronise, so on a GPU it is the time the GPU had those passes to run).
- `nvml`: the GPU's own utilisation counter (percent of time a kernel was running), sampled every
  `NVML_PERIOD` seconds while the actor works, when the NVML bindings (`nvidia-ml-py`) are installed.
  It is device-wide: actors sharing a GPU (`--num-gpus-per-actor 0.5`) each see the sum.

Fractions are over each measure's own span, from the actor's first GOP to its last, so the actor's
start-up (loading weights, compiling) is left out, as the throughput goals ask.
"""

from __future__ import annotations

import threading
from typing import Any

NVML_PERIOD = 0.1


class NvmlSampler:
    """Samples the GPU's utilisation counter in a background thread; `report()` stops it."""

    def __init__(self, device_index: int) -> None:
        import pynvml  # nvidia-ml-py; absent -> ImportError, the caller goes without

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = _handle_for(pynvml, device_index)
        self._samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vidarc-nvml", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(NVML_PERIOD):
            rates = self._nvml.nvmlDeviceGetUtilizationRates(self._handle)
            self._samples.append(float(rates.gpu) / 100.0)

    def report(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(timeout=2)
        samples = self._samples
        return {
            "busy_fraction": sum(samples) / len(samples) if samples else None,
            "samples": len(samples),
            "period_seconds": NVML_PERIOD,
        }


def _handle_for(pynvml: Any, device_index: int) -> Any:
    """The NVML handle of CUDA device `device_index` as this process numbers it (Ray sets
    CUDA_VISIBLE_DEVICES, so the index is not NVML's): matched by UUID."""
    import torch

    uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    for name in (f"GPU-{uuid}", uuid):
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(name)
        except Exception:
            continue
    return pynvml.nvmlDeviceGetHandleByIndex(device_index)


def start_nvml(device: str) -> NvmlSampler | None:
    """An NVML sampler for a CUDA device, or None (not CUDA, or no NVML bindings/driver)."""
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        return NvmlSampler(torch.cuda.current_device() if ":" not in device else int(device.split(":")[1]))
    except Exception:
        return None


def assigned_resources() -> dict[str, float]:
    """What Ray reserved for this actor (CPU, GPU: fractional when actors share a GPU)."""
    try:
        import ray

        if not ray.is_initialized():  # in-process use: asking the runtime context would start Ray
            return {}
        return {k: float(v) for k, v in ray.get_runtime_context().get_assigned_resources().items()}
    except Exception:
        return {}
