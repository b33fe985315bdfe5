"""How many cores this process may use, without importing torch: readers of classic archives (x264
restore and verify) size their decode pools with it, and importing torch only for that cost them
about 300 MB of memory."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may use: its affinity mask (a container's limit), and OMP_NUM_THREADS
    when it is set (Ray sets it to the CPUs of a task or actor, so two actors on one machine do not
    both spread over every core)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # platforms without affinity masks
        cores = os.cpu_count() or 1
    omp = os.environ.get("OMP_NUM_THREADS", "")
    if omp.isdigit() and int(omp) > 0:
        cores = min(cores, int(omp))
    return max(1, cores)
