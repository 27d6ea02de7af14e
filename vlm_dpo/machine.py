"""What machine a run's wall times were measured on, so that they can be compared across machines.

The demo's minutes are compute-bound (SFT, DPO and sampling are matmuls on CPU), so they scale with the
fp32 matmul rate of the cores it had; metrics.json keeps that rate next to `timing_s`, so that two runs' minutes
can be read against their machines.
"""

from __future__ import annotations

import os
import platform
import time


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_gflops(threads: int, size: int = 1024, seconds: float = 0.5) -> float:
    """fp32 GFLOP/s of a size x size matmul on `threads` torch threads (best of repeated timing windows)."""
    import torch

    from .parallel import torch_threads

    with torch_threads(threads):
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up: thread pool start and first-touch of the output
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            for _ in range(4):
                a @ b
            best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return round(best, 1)


def machine_info(threads: int) -> dict:
    """CPU, cores and the fp32 matmul rate at the run's thread count (~0.5 s to measure)."""
    import torch

    n = threads if threads > 0 else torch.get_num_threads()
    return {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "threads": n, "torch": torch.__version__,
            "matmul_gflops_fp32": matmul_gflops(n)}
