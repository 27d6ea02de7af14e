"""vlm_dpo.shards: shards of fixed batches, written resumably, merged by the main process in the order one
process writes. Launched ranks are simulated here with explicit `Processes` (no process group: barriers are
no-ops); tests/test_launch.py runs the stages under a real `accelerate launch`."""

import json

import pytest

from vlm_dpo.records import ResumableJsonl, read_jsonl
from vlm_dpo.shards import Processes, batches, launched, processes, shard_path, write_sharded

IDS = [f"im{i}" for i in range(7)]
BATCH = 2
SETTINGS = {"model": "m", "seed": 0}
CALLS: list[tuple[int, str]] = []  # (shard k, image_id) of every record computed


def write_shard(ids, fail_after, path, shard, progress):
    """A stand-in stage: one record per id, batch by batch, resumable; dies after `fail_after` batches."""
    with ResumableJsonl(path, key="image_id", settings=SETTINGS) as w:
        if w.finished:
            return
        for n_done, (bi, chunk) in enumerate(batches(ids, BATCH, shard)):
            if n_done == fail_after:
                raise KeyboardInterrupt
            todo = [i for i in chunk if i not in w.done]
            CALLS.extend((shard[0], i) for i in todo)
            w.write_many([{"image_id": i, "batch": bi} for i in todo])


@pytest.fixture(autouse=True)
def _calls():
    CALLS.clear()


def test_batches_are_fixed_chunks_of_the_full_list_dealt_round_robin():
    assert batches(IDS, 2) == [(0, ["im0", "im1"]), (1, ["im2", "im3"]), (2, ["im4", "im5"]), (3, ["im6"])]
    assert batches(IDS, 2, (1, 3)) == [(1, ["im2", "im3"])]
    shards = [b for k in range(3) for b in batches(IDS, 2, (k, 3))]
    assert sorted(shards) == batches(IDS, 2)


def test_one_process_writes_the_output_directly(tmp_path):
    out = write_sharded(tmp_path / "caps.jsonl", write_shard, (IDS, None), settings=SETTINGS, ids=IDS,
                        batch_size=BATCH, procs=Processes())
    assert [r["image_id"] for r in read_jsonl(out)] == IDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.jsonl", "caps.jsonl.settings.json"]


def test_ranks_write_shards_and_only_the_main_one_merges_in_item_order(tmp_path):
    out = tmp_path / "caps.jsonl"
    one = write_sharded(tmp_path / "one" / "caps.jsonl", write_shard, (IDS, None), settings=SETTINGS, ids=IDS,
                        batch_size=BATCH, procs=Processes())
    # rank 1 of 2 first: it writes its shard (batches 1 and 3) and nothing else
    assert write_sharded(out, write_shard, (IDS, None), settings=SETTINGS, ids=IDS, batch_size=BATCH,
                         procs=Processes(1, 2)) == out
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        "caps.shard1of2.jsonl", "caps.shard1of2.jsonl.settings.json"]
    assert [r["image_id"] for r in read_jsonl(shard_path(out, 1, 2))] == ["im2", "im3", "im6"]
    # rank 0: its shard, then the merge; shard files are gone
    write_sharded(out, write_shard, (IDS, None), settings=SETTINGS, ids=IDS, batch_size=BATCH, procs=Processes(0, 2))
    assert out.read_bytes() == one.read_bytes()
    assert json.loads((tmp_path / "caps.jsonl.settings.json").read_text()) == SETTINGS
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["caps.jsonl", "caps.jsonl.settings.json"]
    assert sorted(i for _, i in CALLS) == sorted(IDS * 2)  # every image once per run (1 process, then 2)


def test_an_interrupted_shard_resumes_without_redoing_finished_batches(tmp_path):
    out = tmp_path / "caps.jsonl"
    kw = dict(settings=SETTINGS, ids=IDS, batch_size=BATCH)
    write_sharded(out, write_shard, (IDS, None), procs=Processes(1, 2), **kw)
    with pytest.raises(KeyboardInterrupt):  # rank 0 killed after its first batch
        write_sharded(out, write_shard, (IDS, 1), procs=Processes(0, 2), **kw)
    assert not out.exists()
    assert [r["image_id"] for r in read_jsonl(shard_path(out, 0, 2).with_suffix(".jsonl.partial"))] == ["im0", "im1"]
    CALLS.clear()
    write_sharded(out, write_shard, (IDS, None), procs=Processes(1, 2), **kw)  # finished: nothing redone
    write_sharded(out, write_shard, (IDS, None), procs=Processes(0, 2), **kw)
    assert CALLS == [(0, "im4"), (0, "im5")]
    assert [r["image_id"] for r in read_jsonl(out)] == IDS
    CALLS.clear()  # a finished output is reused by any number of processes
    write_sharded(out, write_shard, (IDS, None), procs=Processes(0, 3), **kw)
    write_sharded(out, write_shard, (IDS, None), procs=Processes(), **kw)
    assert CALLS == []


def test_shards_of_another_process_count_or_settings_are_not_mixed_in(tmp_path):
    out = tmp_path / "caps.jsonl"
    kw = dict(ids=IDS, batch_size=BATCH)
    with pytest.raises(KeyboardInterrupt):
        write_sharded(out, write_shard, (IDS, 1), settings=SETTINGS, procs=Processes(0, 3), **kw)
    assert shard_path(out, 0, 3).with_suffix(".jsonl.partial").exists()
    write_sharded(out, write_shard, (IDS, None), settings=SETTINGS, procs=Processes(1, 2), **kw)
    write_sharded(out, write_shard, (IDS, None), settings=SETTINGS, procs=Processes(0, 2), **kw)
    assert [r["image_id"] for r in read_jsonl(out)] == IDS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caps.jsonl", "caps.jsonl.settings.json"]


def test_which_process_comes_from_the_launchers_environment_without_a_process_group(monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not launched() and processes() == Processes(0, 1, False) and processes().main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert not launched()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launched() and processes() == Processes(1, 2, True) and not processes().main
    # asking did not set up the process group: a stage's own Accelerator (training) still does, with its settings
    assert not (dist.is_available() and dist.is_initialized())
