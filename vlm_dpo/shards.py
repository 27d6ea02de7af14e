"""Batch stages over many processes: which share of the work is mine, and one merged file at the end.

Two ways to get n processes, one code path (`write_sharded`):

- a launcher (`accelerate launch`, torchrun: WORLD_SIZE > 1 in the environment), on any number of machines:
  every launched process runs the whole command, writes its own shard, and the main process merges;
- the CPU pool of a single command (`describe.workers`, vlm_dpo.parallel): this process starts n 1-thread
  workers, one per shard, and merges when they are done.

Shard k of n does the batches whose index is k modulo n. Batches are fixed chunks of the *full* list and a batch
keeps its index (its seed) whatever n is, so n shards merged write exactly what one process writes. Each shard is
its own resumable file `<stem>.shard{k}of{n}.jsonl` beside the output (records.ResumableJsonl), so an interrupted
run redoes only unfinished batches; the merged file appears atomically once every shard is complete, and the
shard files are then removed. With several machines every process must see the same output folder (a shared
filesystem).

Under a launcher only the main process writes the run's files (config.yaml, merged outputs, metrics, reports);
the others wait at a barrier wherever they need what it wrote (`is_main`, `wait_for_everyone`, `main_first`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .records import drop_if_other_settings, read_jsonl, record_settings, settings_path, write_jsonl_atomic


def launched() -> bool:
    """True in a process started by a launcher with more than one process (accelerate launch, torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


# How long a process waits at a barrier: the main process may first build an embedded model, or merge a large
# file, while the others wait (torch's default, 10-30 minutes, would kill them). The same as training's default.
BARRIER_TIMEOUT_S = 7200


def accelerate_state():
    """accelerate's PartialState of this launched process, which sets up the process group on first use (only
    barriers need it). On CPU it must be asked for explicitly, as Accelerator does: `accelerate launch --cpu`
    (or ACCELERATE_USE_CPU=1, or no GPU) means gloo over CPU processes; without that a GPU-less process would
    see itself alone."""
    from datetime import timedelta

    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available(),
                        timeout=timedelta(seconds=BARRIER_TIMEOUT_S))


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of one command: index (0 = main) of count."""

    index: int = 0
    count: int = 1
    launched: bool = False

    @property
    def main(self) -> bool:
        return self.index == 0

    def wait(self) -> None:
        """Barrier: returns once every launched process got here (no-op without a launcher)."""
        if self.launched:
            accelerate_state().wait_for_everyone()


def processes() -> Processes:
    """Which process am I: RANK of WORLD_SIZE as the launcher set them (torchrun, under accelerate launch), else
    the only one. Read from the environment rather than from accelerate, so that asking (RunFolder.setup does,
    for every command) does not set up the process group before a stage's own Accelerator does, with its own
    settings (training's timeout)."""
    if not launched():
        return Processes()
    return Processes(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]), True)


def is_main() -> bool:
    """Whether this process writes the run's files (always, without a launcher)."""
    return processes().main


def wait_for_everyone() -> None:
    processes().wait()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """The main process runs the body first (e.g. builds and caches an embedded model), the others after it
    (and then find it cached); without a launcher just the body."""
    if not launched():
        yield
        return
    with accelerate_state().main_process_first():
        yield


def local_device(device: str) -> str:
    """The device of this process: under a launcher an accelerator device ("cuda") means this process's own
    one (cuda:<local rank>), so that n processes do not share one GPU; "cpu" and explicit indices stay."""
    if not launched() or str(device).startswith("cpu") or ":" in str(device):
        return device
    return str(accelerate_state().device)


def batches(items: Sequence, batch_size: int, shard: tuple[int, int] = (0, 1)) -> list[tuple[int, list]]:
    """(index, chunk) of the batches of shard (k, n): fixed chunks of the full list, every n-th from the k-th."""
    k, n = shard
    chunks = [(bi, list(items[i:i + batch_size])) for bi, i in enumerate(range(0, len(items), batch_size))]
    return chunks[k::n]


def shard_path(out_path: str | Path, k: int, n: int) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}.shard{k}of{n}{out_path.suffix}")


def _remove(paths: Sequence[Path]) -> None:
    for p in paths:
        for f in (p, p.with_name(p.name + ".partial"), settings_path(p)):
            f.unlink(missing_ok=True)


def _stale_shards(out_path: Path, n: int) -> list[Path]:
    """Shard files of this output written for another process count (an interrupted run with other n)."""
    own = {shard_path(out_path, k, n).name for k in range(n)}
    found = out_path.parent.glob(f"{out_path.stem}.shard*of*{out_path.suffix}*") if out_path.parent.exists() else []
    return [p for p in found if not any(p.name.startswith(name) for name in own)]


def merge_shards(out_path: str | Path, parts: Sequence[Path], ids: Sequence[str], batch_size: int, settings: dict,
                 key: str = "image_id") -> Path:
    """Merge finished shard files into `out_path` atomically, then remove them. Records are ordered by the batch
    of their id in `ids` and, within a batch, as its shard wrote them: the order one process writes."""
    out_path = Path(out_path)
    position = {str(i): n for n, i in enumerate(ids)}
    records = [r for p in parts for r in read_jsonl(p)]
    records.sort(key=lambda r: position[str(r[key])] // batch_size)  # stable: keeps the order within a batch
    record_settings(out_path, settings)
    write_jsonl_atomic(out_path, records)
    _remove(parts)
    return out_path


def write_sharded(out_path: str | Path, write_shard: Callable[..., Any], args: tuple, *, settings: dict,
                  ids: Sequence[str], batch_size: int, workers: int = 1, progress: bool = True,
                  key: str = "image_id", procs: Processes | None = None) -> Path:
    """Write `out_path` as n shards, merged by the main process.

    `write_shard(*args, path, (k, n), progress)` must write the records of shard (k, n) (see `batches`) resumably
    to `path` under `settings` (what shapes the whole file), and be a module-level function (the CPU pool pickles
    it). `ids` are the record keys in input order and `batch_size` the batch size of the shards, which fix the
    merged order. Under a launcher n is the number of launched processes (`workers` is ignored: each process is
    one worker) and every process returns `out_path` once it is merged; otherwise n = `workers` pool processes.
    One process without a launcher writes `out_path` directly, as it always did.
    """
    out_path = Path(out_path)
    procs = procs or processes()
    n = procs.count if procs.launched or procs.count > 1 else max(1, workers)
    if n == 1:
        write_shard(*args, out_path, (0, 1), progress)
        return out_path
    if procs.main:  # made under other settings, or left by an interrupted run with another process count
        drop_if_other_settings(out_path, settings)
        _remove(_stale_shards(out_path, n))
    procs.wait()
    if out_path.exists():  # finished earlier (by 1 or n processes) under the same settings
        return out_path
    parts = [shard_path(out_path, k, n) for k in range(n)]
    if procs.count > 1:  # one shard per launched process
        k = procs.index
        write_shard(*args, parts[k], (k, n), progress and procs.main)
    else:
        from .parallel import run_parallel

        run_parallel(write_shard, [(*args, p, (k, n), progress and k == 0) for k, p in enumerate(parts)],
                     workers=n, threads=1)
    procs.wait()
    if procs.main:
        merge_shards(out_path, parts, ids, batch_size, settings, key)
    procs.wait()  # the others read the merged file next
    return out_path
