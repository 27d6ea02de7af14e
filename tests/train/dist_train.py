"""Helper for test_distributed.py: run `train_dpo` from a JSON file of TrainConfig fields.

Usage: accelerate launch ... tests/train/dist_train.py CONFIG.json   (CONFIG: dataclasses.asdict of a TrainConfig)

Besides training, every process writes `<output_dir>/rank-<i>.json` with what accelerate set up (process count,
distributed type, backend) and a digest of the weights that process ended with, so the test can check that
the processes really ran distributed and finished on identical weights (not only rank 0's saved model).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import accelerate

from vlm_dpo.train.losses import LossConfig
from vlm_dpo.train import recipe
from vlm_dpo.train.recipe import LoRAConfig, TrainConfig, train_dpo


def force_fsdp_on_cpu() -> None:
    """accelerate runs FSDP on accelerators only: launched with an FSDP config on CPU it sets MULTI_CPU (DDP over
    gloo) and ignores the plugin. torch's `fully_shard` itself runs on CPU with gloo, so for the test this puts
    back what accelerate would have set on GPUs (distributed type FSDP, the plugin built from the launcher's
    FSDP_* environment); everything after it (prepare = fully_shard, meta loading on non-main ranks, sharded
    checkpoints, the consolidated save) is accelerate's and torch's real code. Patched on AcceleratorState, which
    re-reads the distributed type from PartialState each time it is constructed."""
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    real_init = AcceleratorState.__init__

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        if self.distributed_type == DistributedType.MULTI_CPU:
            if getattr(self, "fsdp_plugin", None) is None:
                self.fsdp_plugin = FullyShardedDataParallelPlugin()
            self.distributed_type = DistributedType.FSDP

    AcceleratorState.__init__ = init


def main(path: str) -> None:
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        force_fsdp_on_cpu()
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
    real_setup = recipe.DPORecipe.setup

    def setup(self):  # remember the step training resumed from
        out = real_setup(self)
        seen["start"] = self.start
        return out

    recipe.DPORecipe.setup = setup
    train_dpo(cfg, progress=False)

    acc = seen["acc"]
    sharded = sorted({type(p).__name__ for p in seen["model"].parameters()})
    # Under FSDP each process holds its shards only (the test compares the consolidated saved model instead).
    state = {} if sharded == ["DTensor"] else acc.unwrap_model(seen["model"]).state_dict()
    h = hashlib.sha256()
    for k in sorted(state):
        h.update(k.encode())
        h.update(state[k].detach().float().cpu().contiguous().numpy().tobytes())
    info = {"num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
            "backend": str(acc.state.backend), "digest": h.hexdigest(),
            "sharded": sharded, "start": seen["start"]}
    (Path(cfg.output_dir) / f"rank-{acc.process_index}.json").write_text(json.dumps(info))


if __name__ == "__main__":
    main(sys.argv[1])
