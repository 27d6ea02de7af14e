"""Worker processes for independent work: order, errors, thread counts, and sharded describe == one process."""

import os

import pytest
import torch

from vlm_dpo.parallel import Background, WorkerDiedError, auto_workers, run_parallel, shared_pools, torch_threads, warm_up


def square_with_threads(x: int) -> tuple[int, int, str]:
    return x * x, torch.get_num_threads(), os.environ.get("OMP_WAIT_POLICY", "")


def fail_on(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"job {x} is bad")
    return x


def test_run_parallel_keeps_job_order_and_sets_worker_threads():
    out = run_parallel(square_with_threads, [(3,), (1,), (2,)], workers=2, threads=1)
    assert [o[0] for o in out] == [9, 1, 4]
    assert all(o[1] == 1 for o in out)  # each worker runs with the requested torch threads
    assert all(o[2] == "PASSIVE" for o in out)  # idle OpenMP threads sleep instead of spinning


def pid_when_all_there(folder: str, n: int) -> int:
    """This worker's pid, once `n` jobs have arrived in `folder`: so that each of n workers takes one job."""
    import time
    from pathlib import Path

    (Path(folder) / str(os.getpid())).touch()
    deadline = time.time() + 60
    while len(list(Path(folder).iterdir())) < n and time.time() < deadline:
        time.sleep(0.05)
    return os.getpid()


def _pids(tmp_path, name: str) -> set[int]:
    folder = tmp_path / name
    folder.mkdir()
    return set(run_parallel(pid_when_all_there, [(str(folder), 2), (str(folder), 2)], workers=2))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_shared_pools_keep_their_workers_from_call_to_call(tmp_path):
    fresh = [_pids(tmp_path, f"fresh{i}") for i in range(2)]
    assert len(fresh[0]) == 2 and not fresh[0] & fresh[1]  # outside a scope: new processes per call
    with shared_pools():
        warm_up(2, 1, os.getpid)  # started before the first call, which finds them
        kept = [_pids(tmp_path, f"kept{i}") for i in range(3)]
        assert len(kept[0]) == 2 and kept[0] == kept[1] == kept[2]
        assert os.getpid() not in kept[0]
        assert run_parallel(square_with_threads, [(3,), (4,)], workers=2, threads=1) == [(9, 1, "PASSIVE"),
                                                                                       (16, 1, "PASSIVE")]
    assert all(_gone(pid) for pid in kept[0])  # shut down with the scope


def test_a_worker_dying_in_a_shared_pool_leaves_the_next_call_a_new_one(tmp_path):
    with shared_pools():
        before = _pids(tmp_path, "before")
        with pytest.raises(WorkerDiedError):
            run_parallel(os.abort, [(), ()], workers=2)
        after = _pids(tmp_path, "after")
    assert len(after) == 2 and not before & after


def test_run_parallel_raises_the_workers_error():
    with pytest.raises(ValueError, match="job 2 is bad"):
        run_parallel(fail_on, [(1, 2), (2, 2), (3, 2)], workers=2)


def test_run_parallel_with_one_worker_runs_here_in_order():
    calls = []
    assert run_parallel(lambda x: calls.append(x) or x, [(1,), (2,)], workers=1) == [1, 2]
    assert calls == [1, 2]


def test_background_returns_and_raises():
    with Background(square_with_threads, (5,), threads=1) as job:
        here = square_with_threads(2)[0]  # the main process keeps working meanwhile
    assert here == 4 and job.result()[:2] == (25, 1)
    with pytest.raises(ValueError, match="job 7"):
        with Background(fail_on, (7, 7)) as job:
            pass
        job.result()


def test_background_disabled_runs_inline_once():
    calls = []

    def f():
        calls.append(1)
        return "x"

    job = Background(f, (), enabled=False)
    with job:
        assert calls == []  # nothing runs until asked for
    assert job.result() == "x" and job.result() == "x" and calls == [1]


def test_torch_threads_restores_the_count():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_auto_workers():
    assert auto_workers(3, "cuda") == 3
    assert auto_workers(0, "cuda:0") == 1
    assert 1 <= auto_workers(0, "cpu") <= 4
    assert auto_workers(0, "cpu", jobs=1) == 1 and auto_workers(2, "cpu", jobs=5) == 2
    assert auto_workers(0, "cpu", jobs=3) == min(3, 4, os.cpu_count() or 1)  # one per core, no more than jobs


def test_auto_workers_keep_to_the_runs_cpu_budget(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert auto_workers(0, "cpu") == 4 and auto_workers(0, "cpu", jobs=3) == 3  # the machine's cores
    assert auto_workers(0, "cpu", cores=2) == 2 and auto_workers(0, "cpu", jobs=3, cores=2) == 2
    assert auto_workers(0, "cpu", cores=1) == 1 and auto_workers(0, "cpu", jobs=3, cores=1) == 1  # no pool
    assert auto_workers(0, "cpu", cores=64) == 4  # never more than the machine has
    assert auto_workers(3, "cpu", cores=1) == 3  # an explicit count is the user's


def test_describe_parallel_writes_what_one_process_writes(tmp_path, tiny_cfg):
    """Two 1-thread shards, merged, equal the single-process file record for record (seeds follow the batch)."""
    from dataclasses import replace

    from vlm_dpo.describe import describe_parallel, describe_to_jsonl
    from vlm_dpo.embedded import ensure_vlm
    from vlm_dpo.models import load_model_and_processor
    from vlm_dpo import detect
    from vlm_dpo.describe import describe_items
    from vlm_dpo.records import read_jsonl
    from vlm_dpo.run import RunFolder

    cfg = tiny_cfg
    det = detect.run(cfg, RunFolder.setup(cfg), "val", progress=False)
    items, _ = describe_items(cfg, "val", det)
    dcfg = replace(cfg.describe, batch_size=2, n_samples=2)
    model_path = ensure_vlm(cfg, progress=False)["model"]
    model, processor = load_model_and_processor(model_path)
    out = tmp_path / "captions"
    with torch_threads(1):
        one = describe_to_jsonl(model.eval(), processor, items, dcfg, out / "one.jsonl", progress=False)
    two = describe_parallel(model_path, items, dcfg, out / "two.jsonl", workers=2, progress=False)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "model"} for r in rows]  # noqa: E731
    assert strip(read_jsonl(two)) == strip(read_jsonl(one))
    assert [r["image_id"] for r in read_jsonl(two)] == [it["image_id"] for it in items]
    # shard files merged away (each file has the settings it was made under beside it)
    assert sorted(p.name for p in out.iterdir()) == ["one.jsonl", "one.jsonl.settings.json", "two.jsonl",
                                                     "two.jsonl.settings.json"]
