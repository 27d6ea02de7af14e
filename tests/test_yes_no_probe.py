"""scripts/yes_no_probe.py on the tiny world: one line per question style and context, AUC and yes-rates in [0, 1]."""

import importlib.util
import re
from pathlib import Path

from tiny_config import TINY_OVERRIDES

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "yes_no_probe.py"


def test_probe_prints_an_auc_per_style_and_context(tiny_cache, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("yes_no_probe", SCRIPT)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    probe.main(["", "auto", *TINY_OVERRIDES, f"cache_dir={tiny_cache}", f"out={tmp_path}"])
    rows = [line for line in capsys.readouterr().out.splitlines() if "AUC" in line]
    assert [r.split()[:2] for r in rows] == [["pope", "grounded"], ["pope", "no"], ["robot", "grounded"],
                                             ["robot", "no"]]
    for r in rows:
        auc, yes_present, yes_absent = (float(x) for x in re.findall(r"AUC ([\d.]+).*present ([\d.]+) absent ([\d.]+)",
                                                                      r)[0])
        assert 0 <= auc <= 1 and 0 <= yes_present <= 1 and 0 <= yes_absent <= 1
