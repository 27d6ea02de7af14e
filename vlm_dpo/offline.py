"""Keep every library off the network unless the user asks otherwise.

Must run before ultralytics / transformers are imported: Ultralytics decides at import time whether it is
online, and would otherwise try to download fonts, check pip requirements (and auto-install), and send
analytics. `setdefault` lets a user who wants the hub override any of these in their environment.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "YOLO_OFFLINE": "1",
    "YOLO_AUTOINSTALL": "false",
    "YOLO_VERBOSE": "false",
    "WANDB_MODE": "offline",
}


def default_cache_dir() -> str:
    xdg = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return os.environ.get("VLM_DPO_CACHE", str(Path(xdg) / "vlm_dpo"))


def configure_offline(cache_dir: str | os.PathLike | None = None) -> None:
    for k, v in OFFLINE_ENV.items():
        os.environ.setdefault(k, v)
    # Ultralytics writes settings.json (and looks for fonts) here; keep it inside our cache.
    os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(cache_dir or default_cache_dir()) / "ultralytics"))
    Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)


def disable_ultralytics_sync() -> None:
    from ultralytics.utils import SETTINGS

    if SETTINGS.get("sync", False):
        SETTINGS.update({"sync": False})
