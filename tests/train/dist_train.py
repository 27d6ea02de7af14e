"""Helper for test_distributed.py: run `train_dpo` from a JSON file of TrainConfig fields.

Usage: accelerate launch ... tests/train/dist_train.py CONFIG.json   (CONFIG: dataclasses.asdict of a TrainConfig)

Besides training, every process writes `<output_dir>/rank-<i>.json` with what accelerate set up (process count,
distributed type, backend) and a digest of the weights that process ended with, so the test can check that
the processes really ran distributed and finished on identical weights (not only rank 0's saved model).
"""

import hashlib
import json
import sys
from pathlib import Path

import accelerate

from vlm_dpo.train.losses import LossConfig
from vlm_dpo.train.recipe import LoRAConfig, TrainConfig, train_dpo


def main(path: str) -> None:
    raw = json.loads(Path(path).read_text())
    nested = {"loss": LossConfig(**raw.pop("loss", {})), "lora": LoRAConfig(**raw.pop("lora", {}))}
    cfg = TrainConfig(**raw, **nested)

    seen = {}
    real_prepare = accelerate.Accelerator.prepare

    def prepare(self, *objs, **kw):  # remember the Accelerator and the prepared model
        out = real_prepare(self, *objs, **kw)
        seen["acc"], seen["model"] = self, out[0]
        return out

    accelerate.Accelerator.prepare = prepare
    train_dpo(cfg, progress=False)

    acc = seen["acc"]
    state = acc.unwrap_model(seen["model"]).state_dict()
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
    info = {"num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
            "backend": str(acc.state.backend), "digest": h.hexdigest()}
    (Path(cfg.output_dir) / f"rank-{acc.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1])
