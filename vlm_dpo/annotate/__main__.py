"""`python -m vlm_dpo.annotate [CONFIG.yaml] [key=value ...]`: the annotation app without a run folder.

The config holds AnnotateConfig's keys at the top level (pairs, captions, detections, image_root, db, host,
port, token, overlap, annotators, seed, limit, per_image, action, export); db defaults to
annotate/judgements.sqlite under the current folder. Light on purpose (no torch import): starts in a second.
"""

from __future__ import annotations

import json
import sys

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import AnnotateConfig


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return 0
    layers = [OmegaConf.structured(AnnotateConfig)]
    if args and "=" not in args[0]:
        layers.append(OmegaConf.load(args.pop(0)))
    try:
        acfg = OmegaConf.to_object(OmegaConf.merge(*layers, OmegaConf.from_dotlist(args)))
    except OmegaConfBaseException as e:
        print(f"annotate: config error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    from ..run import RunFolder
    from .app import run

    acfg.db = acfg.db or str(RunFolder(".").judgements_db)  # the current folder as the run folder

    try:
        result = run(acfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"annotate: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
