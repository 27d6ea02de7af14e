"""`vlm-dpo` (and `python -m vlm_dpo`): one subcommand per stage. Each loads the config, calls the stage.

    vlm-dpo <command> [CONFIG.yaml] [key=value ...] [--out DIR] [--quiet]
    vlm-dpo config show [CONFIG.yaml] [key=value ...]    the resolved config (YAML)
    vlm-dpo config keys [SECTION ...]                    every key with its type and default

`vlm-dpo <command> --help` lists the config keys that command reads.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import MISSING, fields, is_dataclass

from .config import ConfigError, load_config
from .models import ModelLoadError


def _cmd_world(cfg, args):
    from .embedded import ensure_world

    root = ensure_world(cfg, progress=not args.quiet)
    return {"world": str(root)}


def _cmd_detector(cfg, args):
    from .embedded import ensure_detector, ensure_world

    return ensure_detector(cfg, ensure_world(cfg, progress=not args.quiet))


def _cmd_detect(cfg, args):
    from . import detect
    from .run import RunFolder

    return {"detections": str(detect.run(cfg, RunFolder.setup(cfg), progress=not args.quiet))}


def _cmd_build_vlm(cfg, args):
    from .embedded import ensure_vlm
    from .run import RunFolder

    RunFolder.setup(cfg)
    return ensure_vlm(cfg, progress=not args.quiet)


def _cmd_describe(cfg, args):
    from . import describe
    from .run import RunFolder

    return {"captions": str(describe.run(cfg, RunFolder.setup(cfg), progress=not args.quiet))}


def _cmd_ask(cfg, args):
    from . import ask
    from .run import RunFolder

    return ask.run(cfg, RunFolder.setup(cfg), progress=not args.quiet)


def _cmd_pairs(cfg, args):
    from .pairs import stage
    from .run import RunFolder

    return stage.run(cfg, RunFolder.setup(cfg), progress=not args.quiet)


def _cmd_train(cfg, args):
    from .run import RunFolder
    from .train import stage

    return stage.run(cfg, RunFolder.setup(cfg), progress=not args.quiet)


def _cmd_eval(cfg, args):
    from .eval import stage
    from .run import RunFolder

    return stage.run(cfg, RunFolder.setup(cfg), progress=not args.quiet)


def _cmd_annotate(cfg, args):
    from .annotate import run_annotate

    return run_annotate(cfg)


def _cmd_pipeline(cfg, args):
    from .pipeline import run_pipeline

    return run_pipeline(cfg, progress=not args.quiet)


def _cmd_seeds(cfg, args):
    from .seeds import run_seeds

    return run_seeds(cfg, progress=not args.quiet)


COMMANDS = {
    "world": (_cmd_world, "generate (or reuse) the embedded tabletop world"),
    "detector": (_cmd_detector, "train (or reuse) the embedded YOLO detector and report its held-out mAP50"),
    "detect": (_cmd_detect, "run the detector on a split (or data.images) -> detections JSONL"),
    "build-vlm": (_cmd_build_vlm, "build + SFT (or reuse) the tiny embedded VLM"),
    "describe": (_cmd_describe, "sample captions with grounding from detections -> captions JSONL"),
    "ask": (_cmd_ask, "the robot's questions about each image, answered by the VLM and judged -> <out>/vqa/"),
    "pairs": (_cmd_pairs, "mine (detector as judge) + synthetic + imported pairs -> <out>/pairs/pairs.parquet"),
    "train": (_cmd_train, "DPO (or a variant) on the pairs -> <out>/dpo/model"),
    "eval": (_cmd_eval, "evaluate models (eval.models) on annotated images -> metrics.json + report"),
    "annotate": (_cmd_annotate, "local web page for human preference judgements (127.0.0.1 by default)"),
    "pipeline": (_cmd_pipeline, "the whole pipeline on the embedded default, ending in a report"),
    "seeds": (_cmd_seeds, "the pipeline once per seed (seeds=[0,1,2]) -> <out>/seeds.md: mean and range per metric"),
}


# The config sections each command reads (its --help lists their keys).
SECTIONS = {
    "world": ["world"], "detector": ["world", "detector"], "detect": ["data", "detector", "ground"],
    "build-vlm": ["vlm"], "describe": ["data", "ground", "prompt", "describe"], "ask": ["data", "ground", "ask"],
    "pairs": ["pairs"],
    "train": ["train"], "eval": ["eval", "ground", "prompt"], "annotate": ["annotate"], "pipeline": [], "seeds": [],
}
TOP_LEVEL = ["out", "cache_dir", "threads", "concurrent_stages", "variants", "seeds"]


def config_keys(sections: list[str] | None = None) -> list[tuple[str, str, str]]:
    """(dotted key, type, default) of every config key, or of those under `sections`."""
    from .config import Config

    out = []

    def walk(cls, prefix: str):
        for f in fields(cls):
            if f.default is not MISSING:
                value = f.default
            elif f.default_factory is not MISSING:
                value = f.default_factory()
            else:
                value = None
            if is_dataclass(value):
                walk(type(value), prefix + f.name + ".")
            else:
                t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
                out.append((prefix + f.name, t, json.dumps(value, default=str)))

    walk(Config, "")
    if sections:
        out = [k for k in out if k[0] in sections or any(k[0].startswith(s + ".") for s in sections)]
    return out


def _keys_text(sections: list[str]) -> str:
    rows = config_keys(sections)
    width = max((len(k) for k, _, _ in rows), default=0)
    return "\n".join(f"  {k:<{width}}  {t:<16} {d}" for k, t, d in rows)


def _epilog(name: str) -> str:
    secs = SECTIONS.get(name) or []
    head = ("config keys this command reads (key=value on the command line, or in CONFIG.yaml):\n"
            + _keys_text(secs + TOP_LEVEL) if secs else
            f"every config key applies (out, cache_dir, threads, {', '.join(k for k in SECTIONS if SECTIONS[k])}...)")
    return head + "\n\nAll keys: `vlm-dpo config keys`; the resolved config: `vlm-dpo config show CONFIG [k=v ...]`."


def quiet_libraries() -> None:
    """Keep library chatter ("Loading weights" bars, "Removed shared tensor" notices) out of our progress bars;
    our own messages and bars stay. Environment variables so worker processes inherit them; a user's own
    settings win."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    for name in ("transformers", "accelerate", "huggingface_hub", "safetensors"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as tlog

        tlog.set_verbosity_error()
        tlog.disable_progress_bar()


def _config_command(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="vlm-dpo config", description="show the resolved config, or list the keys")
    p.add_argument("action", choices=["show", "keys"])
    p.add_argument("rest", nargs="*", help="show: [CONFIG.yaml] [key=value ...]; keys: [SECTION ...]")
    p.add_argument("--out", help="run folder (same as out=DIR)")
    args = p.parse_args(argv)
    if args.action == "keys":
        print(_keys_text(args.rest))
        return 0
    from .config import to_yaml

    config = args.rest[0] if args.rest and "=" not in args.rest[0] else None
    cfg = _load(config, args.rest[1:] if config else list(args.rest), args.out)
    if cfg is None:
        return 2
    print(to_yaml(cfg), end="")
    return 0


def _load(config: str | None, overrides: list[str], out: str | None):
    """The validated config (`--out` is `out=`), or None after printing the config error in one line."""
    try:
        return load_config(config, overrides + ([f"out={out}"] if out else []))
    except ConfigError as e:
        print(f"vlm-dpo: config error: {e}", file=sys.stderr)
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-dpo", description=__doc__.splitlines()[0],
                                     epilog="vlm-dpo config show CONFIG [k=v ...]: the resolved config; "
                                            "vlm-dpo config keys [SECTION]: every key with type and default")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("config", help="show the resolved config (show) or list every key (keys)", add_help=False)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=_epilog(name),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. describe.n_samples=8")
        p.add_argument("--out", help="run folder (same as out=DIR)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "config":
        return _config_command(argv[1:])
    quiet_libraries()
    parser = build_parser()
    # key=value overrides may also follow options (`pipeline CONFIG --out DIR k=v`): argparse leaves those over.
    args, extra = parser.parse_known_args(argv)
    stray = [e for e in extra if e.startswith("-") or "=" not in e]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    config, overrides = args.config, list(args.overrides) + extra
    if config is not None and "=" in config:  # no config file, only overrides
        overrides.insert(0, config)
        config = None
    cfg = _load(config, overrides, args.out)
    if cfg is None:
        return 2
    fn, _ = COMMANDS[args.command]
    try:
        result = fn(cfg, args)
    except (ValueError, FileNotFoundError, ModelLoadError) as e:
        # Known input problems (bad files, records, models): one clear line, no traceback.
        print(f"vlm-dpo {args.command}: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
