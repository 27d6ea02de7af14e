"""The DPO training recipe (work in progress: re-exports the loop while it is being restructured)."""

from .loop import LoRASettings, LossSettings, TrainConfig, train_dpo  # noqa: F401
