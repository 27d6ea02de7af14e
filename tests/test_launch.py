"""Batch stages under `accelerate launch`: 2 CPU processes write exactly what 1 process writes.

Each test runs a stage once here (1 process, which also builds the tiny world, detector and VLM into the shared
cache) and once as `python -m vlm_dpo <stage>` under `accelerate launch --num_processes 2`
(tests/launch_util.py), then compares the run folders file by file: the same files (no shard or temp file left,
config.yaml written once, by the main process) with the same bytes.
"""

import json
from pathlib import Path

from launch_util import accelerate_launch
from tiny_config import TINY_OVERRIDES

from vlm_dpo.run import RunFolder

HERE = Path(__file__).resolve().parent
# 1 torch thread per process in both runs; 5 detect / describe batches of the 10 test images, dealt 3 + 2
SMALL = ["threads=1", "data.split=test", "detector.batch_size=2", "describe.batch_size=2", "describe.workers=1"]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _launch_stage(stage: str, cfg, out: Path, ranks: Path, extra: list[str]) -> None:
    accelerate_launch([str(HERE / "launched_cli.py"), str(ranks), stage, "--quiet", *TINY_OVERRIDES, *extra,
                       f"cache_dir={cfg.cache_dir}", f"out={out}"])
    seen = [json.loads((ranks / f"rank-{i}.json").read_text()) for i in range(2)]
    assert [(r["index"], r["count"], r["distributed_type"]) for r in seen] == [
        (0, 2, "DistributedType.MULTI_CPU"), (1, 2, "DistributedType.MULTI_CPU")]


def test_detect_and_describe_with_two_processes_write_what_one_process_writes(tiny_cfg, tmp_path):
    from vlm_dpo import describe
    from vlm_dpo.config import load_config

    cfg = load_config(None, TINY_OVERRIDES + SMALL + [f"cache_dir={tiny_cfg.cache_dir}", f"out={tmp_path / 'one'}"])
    describe.run(cfg, RunFolder.setup(cfg), progress=False)  # detect, then describe
    two = tmp_path / "two"
    _launch_stage("describe", cfg, two, tmp_path / "ranks", SMALL)

    one, other = _files(tmp_path / "one"), _files(two)
    assert sorted(other) == sorted(one) == [
        ".origin", "captions/test.counts.json", "captions/test.jsonl", "captions/test.jsonl.settings.json",
        "config.yaml", "detections/test.jsonl", "detections/test.jsonl.settings.json"]
    for name in one:
        if name not in ("config.yaml", ".origin"):  # they name their own run folder
            assert other[name] == one[name], name
    assert len(one["captions/test.jsonl"].splitlines()) == cfg.world.n_test


def test_eval_with_two_processes_gives_what_one_process_gives(tiny_cfg, tmp_path):
    """Captions, POPE answers and robustness captions are generated in shares and gathered: every metric and
    every written caption is the one process's."""
    from vlm_dpo.config import load_config
    from vlm_dpo.eval import stage

    small = SMALL + ["eval.batch_size=4", "eval.n_samples=2", "eval.bootstrap=20"]
    cfg = load_config(None, TINY_OVERRIDES + small + [f"cache_dir={tiny_cfg.cache_dir}", f"out={tmp_path / 'one'}"])
    stage.run(cfg, RunFolder.setup(cfg), progress=False)
    two = tmp_path / "two"
    _launch_stage("eval", cfg, two, tmp_path / "ranks", small)

    one, other = _files(tmp_path / "one"), _files(two)
    assert sorted(other) == sorted(one)
    written = [n for n in one if n.startswith("eval/") or n.startswith("detections/")]
    assert "eval/sft.captions.jsonl" in written and "eval/sft.robustness.jsonl" in written
    for name in written:
        assert other[name] == one[name], name
    m1, m2 = (json.loads(o["metrics.json"]) for o in (one, other))
    assert m2["models"] == m1["models"] and m2["eval_settings"] == m1["eval_settings"]
