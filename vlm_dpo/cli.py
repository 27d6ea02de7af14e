"""`vlm-dpo` (and `python -m vlm_dpo`): one subcommand per stage. Each loads the config, calls the stage.

    vlm-dpo <command> [CONFIG.yaml] [key=value ...] [--out DIR] [--quiet]
"""

from __future__ import annotations

import argparse
import json
import sys

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


COMMANDS = {
    "world": (_cmd_world, "generate (or reuse) the embedded tabletop world"),
    "detector": (_cmd_detector, "train (or reuse) the embedded YOLO detector and report its held-out mAP50"),
    "detect": (_cmd_detect, "run the detector on a split (or data.images) -> detections JSONL"),
    "build-vlm": (_cmd_build_vlm, "build + SFT (or reuse) the tiny embedded VLM"),
    "describe": (_cmd_describe, "sample captions with grounding from detections -> captions JSONL"),
    "pairs": (_cmd_pairs, "mine (detector as judge) + synthetic + imported pairs -> <out>/pairs/pairs.parquet"),
    "train": (_cmd_train, "DPO (or a variant) on the pairs -> <out>/dpo/model"),
    "eval": (_cmd_eval, "evaluate models (eval.models) on annotated images -> metrics.json + report"),
    "annotate": (_cmd_annotate, "local web page for human preference judgements (127.0.0.1 by default)"),
    "pipeline": (_cmd_pipeline, "the whole pipeline on the embedded default, ending in a report"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-dpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("config", nargs="?", help="YAML config (default: built-in defaults)")
        p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. describe.n_samples=8")
        p.add_argument("--out", help="run folder (same as out=DIR)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
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
    if args.out:
        overrides.append(f"out={args.out}")
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print(f"vlm-dpo: config error: {e}", file=sys.stderr)
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
