"""Run independent pieces of work in worker processes, each with its own small torch thread count.

Why processes: on a few CPU cores, small-model generation is dominated by per-op overhead, so one process
with 1 thread beats one with 2 threads, and two 1-thread processes do about twice the work of either. The
same holds for two unrelated trainings (the detector and the VLM). Workers are spawned (not forked: torch
and OpenMP state do not survive a fork) with OMP_WAIT_POLICY=PASSIVE, so idle OpenMP threads do not spin
against the other worker.

`workers <= 1` runs everything in this process, in order, which is also what tests and debuggers get.

Each run_parallel call starts its own pool, except inside `shared_pools()` (the pipeline), where one pool serves
every call with the same worker and thread counts and can be started ahead of its first use (`warm_up`).

Workers never outlive this process: on Linux each asks the kernel to kill it when its parent dies
(prctl PR_SET_PDEATHSIG), and everywhere a watcher thread exits it once its parent is gone. A worker that dies
(killed, out of memory) is a `WorkerDiedError` naming the function, not a BrokenProcessPool traceback; what the
workers finished is kept, so a rerun resumes.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any


class WorkerDiedError(ValueError):
    """A worker process died without an answer (killed, out of memory). A ValueError so that the CLI reports
    it as one line."""


def _died(fn) -> WorkerDiedError:
    name = getattr(fn, "__qualname__", repr(fn))
    return WorkerDiedError(f"a worker process running {name} died (killed, or out of memory?); finished work is "
                           "kept: rerun to resume")


def auto_workers(requested: int, device: str = "cpu", jobs: int | None = None, cores: int = 0) -> int:
    """`requested` if > 0; else 1 on an accelerator (one model copy per device is enough); on CPU one 1-thread
    process per core, at most 4 (more only adds model copies in memory); never more than `jobs`. Work of unequal
    pieces is best cut into many (the evaluation's parts of models) rather than run two processes per core.

    `cores` > 0 is the run's CPU budget (the config's `threads`), at most the machine's: with 1, everything runs
    in this process, so two runs side by side at threads=1 use a core each."""
    if requested > 0:
        return requested if jobs is None else min(requested, jobs)
    if not str(device).startswith("cpu"):
        return 1
    machine = os.cpu_count() or 1
    cores = min(cores, machine) if cores > 0 else machine
    n = min(4, cores)
    return max(1, n if jobs is None else min(n, jobs))


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


def _exit_with_parent(parent: int) -> None:
    """This worker ends when `parent` does: PR_SET_PDEATHSIG on Linux, and a watcher thread everywhere."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # died before we asked
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _init_worker(threads: int, parent: int | None = None) -> None:
    if parent is not None:
        _exit_with_parent(parent)
    import torch

    torch.set_num_threads(max(1, threads))


def _spawn_pool(workers: int, threads: int) -> ProcessPoolExecutor:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read by each spawned worker's OpenMP at start
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(threads, os.getpid()))


def run_parallel(fn: Callable[..., Any], jobs: Sequence[tuple], *, workers: int, threads: int = 1,
                 desc: str | None = None) -> list[Any]:
    """[fn(*job) for job in jobs], in `workers` processes of `threads` torch threads each.

    `fn` must be importable (a module-level function) and jobs picklable. The first exception in any worker
    is raised here after the other jobs are cancelled; results come back in job order.
    """
    if workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    try:
        return _run_in_pool(fn, jobs, workers, threads, desc)
    except BrokenProcessPool:
        raise _died(fn) from None


# Pools kept from one run_parallel call to the next inside `shared_pools()`, innermost scope last.
_SCOPES: list[dict[tuple[int, int], ProcessPoolExecutor]] = []


@contextlib.contextmanager
def shared_pools() -> Iterator[None]:
    """Inside the body, run_parallel reuses its worker processes from one call to the next (one pool per worker and
    thread count) instead of spawning them and importing torch and transformers again for every stage (~7 s of
    each of the pipeline's describe and eval stages on 2 cores); they are shut down when the body ends. Workers
    keep the working directory and environment they started with, so the body must not change those (the
    pipeline does not). What a job computes does not depend on it: every job seeds its own random numbers."""
    pools: dict[tuple[int, int], ProcessPoolExecutor] = {}
    _SCOPES.append(pools)
    try:
        yield
    finally:
        _SCOPES.remove(pools)
        for pool in pools.values():
            pool.shutdown(wait=True, cancel_futures=True)


def warm_up(workers: int, threads: int, fn: Callable[[], Any]) -> None:
    """Inside shared_pools: start the pool of `workers` processes now and run `fn` (imports, say) in each, without
    waiting, so that a later run_parallel finds them ready. Does nothing outside a scope or for workers <= 1."""
    if workers > 1 and _SCOPES:
        pool = _pool(workers, threads)
        for _ in range(workers):  # the executor starts a process per submission while fewer are idle
            pool.submit(fn)


def _pool(workers: int, threads: int) -> ProcessPoolExecutor:
    pools = _SCOPES[-1]
    if (workers, threads) not in pools:
        pools[(workers, threads)] = _spawn_pool(workers, threads)
    return pools[(workers, threads)]


def _run_in_pool(fn, jobs, workers: int, threads: int, desc: str | None) -> list[Any]:
    n = min(workers, len(jobs))
    if not _SCOPES:
        with _spawn_pool(n, threads) as pool:
            return _gather(pool, fn, jobs, desc)
    try:
        return _gather(_pool(n, threads), fn, jobs, desc)
    except BrokenProcessPool:
        _SCOPES[-1].pop((n, threads)).shutdown(wait=False)  # the next call starts a new one
        raise


def _gather(pool: ProcessPoolExecutor, fn, jobs, desc: str | None) -> list[Any]:
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
            try:
                return self._future.result()
            except BrokenProcessPool:
                raise _died(self.fn) from None
        if self._value is None:
            self._value = (self.fn(*self.args),)  # disabled: run here, on first request
        return self._value[0]

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            # On an error in the main body, do not wait for a long training: cancel what has not started.
            self._pool.shutdown(wait=exc[0] is None, cancel_futures=exc[0] is not None)
