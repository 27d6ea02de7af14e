"""Run independent pieces of work in worker processes, each with its own small torch thread count.

Why processes: on a few CPU cores, small-model generation is dominated by per-op overhead, so one process
with 1 thread beats one with 2 threads, and two 1-thread processes do about twice the work of either. The
same holds for two unrelated trainings (the detector and the VLM). Workers are spawned (not forked: torch
and OpenMP state do not survive a fork) with OMP_WAIT_POLICY=PASSIVE, so idle OpenMP threads do not spin
against the other worker.

`workers <= 1` runs everything in this process, in order, which is also what tests and debuggers get.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Any


def auto_workers(requested: int, device: str = "cpu", jobs: int | None = None) -> int:
    """`requested` if > 0; else 1 on an accelerator (one model copy per device is enough); on CPU one 1-thread
    process per core, at most 4 (more only adds model copies in memory). Given a number of unequal `jobs`
    (e.g. models to evaluate), up to two processes per core run them all at once, so that no core idles while
    the last job runs alone (3 jobs on 2 cores: 1.5 job-times instead of 2)."""
    if requested > 0:
        return requested if jobs is None else min(requested, jobs)
    if not str(device).startswith("cpu"):
        return 1
    cores = os.cpu_count() or 1
    if jobs is None:
        return max(1, min(4, cores))
    return max(1, min(jobs, 2 * cores, 6))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the body with `n` torch threads (n <= 0: leave as is), then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _spawn_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by each spawned worker's OpenMP at start
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads,))


def run_parallel(fn: Callable[..., Any], jobs: Sequence[tuple], *, workers: int, threads: int = 1,
                 desc: str | None = None) -> list[Any]:
    """[fn(*job) for job in jobs], in `workers` processes of `threads` torch threads each.

    `fn` must be importable (a module-level function) and jobs picklable. The first exception in any worker
    is raised here after the other jobs are cancelled; results come back in job order.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    with _spawn_pool(min(workers, len(jobs)), threads) as pool:
        futures = [pool.submit(fn, *job) for job in jobs]
        bar = None
        if desc:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(futures), desc=desc)
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    for g in futures:
                        g.cancel()
                    raise f.exception()
            if bar is not None:
                bar.update(len(done))
        if bar is not None:
            bar.close()
        return [f.result() for f in futures]


class Background:
    """One function running in a worker process while this process does something else.

        with Background(train_detector, (cfg,), threads=1) as job:
            build_vlm()              # here, with the remaining threads
        weights = job.result()     # waits; re-raises the worker's exception
    """

    def __init__(self, fn: Callable[..., Any], args: tuple, *, threads: int = 1, enabled: bool = True):
        self.fn, self.args, self.threads, self.enabled = fn, args, threads, enabled
        self._pool = self._future = self._value = None

    def __enter__(self) -> "Background":
        if self.enabled:
            self._pool = _spawn_pool(1, self.threads)
            self._future = self._pool.submit(self.fn, *self.args)
        return self

    def result(self) -> Any:
        if self._future is not None:
            return self._future.result()
        if self._value is None:
            self._value = (self.fn(*self.args),)  # disabled: run here, on first request
        return self._value[0]

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            # On an error in the main body, do not wait for a long training: cancel what has not started.
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=exc[0] is not None)
