"""What machine a run's wall times were measured on, so that they can be compared across machines.

metrics.json keeps the CPU, its thread count and a fp32 matmul rate next to `timing_s`. The rate is a label, not a
yardstick: on 2026-12-03 the demo took 16 min 20 s on a machine reading 294 GFLOP/s and 14 min 41 s on one reading
185 (README), since this tiny model's stages are small matmuls, elementwise ops and per-step overhead.
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
