"""Time the describe stage alone: `python scripts/time_describe.py [CONFIG.yaml] [key=value ...]`, or under
`accelerate launch ... scripts/time_describe.py ...`. Runs what `vlm-dpo describe` runs and prints
`describe_seconds` (model loading included, interpreter start and imports excluded), between two barriers so
that under a launcher it is the time until the last process is done. The README's Scale numbers come from it.
"""

import json
import sys
import time

from vlm_dpo import describe
from vlm_dpo.config import load_config
from vlm_dpo.run import RunFolder
from vlm_dpo.shards import is_main, processes, wait_for_everyone

if __name__ == "__main__":  # the CPU pool (describe.workers) spawns processes that import this file
    args = sys.argv[1:]
    config = args.pop(0) if args and "=" not in args[0] else None
    cfg = load_config(config, args)
    run = RunFolder.setup(cfg)
    wait_for_everyone()
    t0 = time.time()
    path = describe.run(cfg, run, progress=False)
    wait_for_everyone()
    if is_main():
        print(json.dumps({"describe_seconds": round(time.time() - t0, 2), "processes": processes().count,
                          "workers": cfg.describe.workers, "captions": str(path)}))
