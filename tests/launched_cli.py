"""`accelerate launch ... tests/launched_cli.py RANK_DIR <vlm-dpo arguments>`: `python -m vlm_dpo <arguments>`
in each launched process, which first records in RANK_DIR/rank-<i>.json what vlm_dpo.shards saw (its index, the
process count, accelerate's distributed type), so a test can tell that n processes really shared the work."""

import json
import runpy
import sys
from pathlib import Path

from vlm_dpo.shards import accelerate_state, processes

if __name__ == "__main__":
    rank_dir, args = Path(sys.argv[1]), sys.argv[2:]
    me = processes()
    rank_dir.mkdir(parents=True, exist_ok=True)
    (rank_dir / f"rank-{me.index}.json").write_text(json.dumps(
        {"index": me.index, "count": me.count, "distributed_type": str(accelerate_state().distributed_type)}))
    sys.argv = ["vlm_dpo", *args]
    runpy.run_module("vlm_dpo", run_name="__main__")
