"""`vlm-dpo <stage> --help` lists the stage's keys; `vlm-dpo config show|keys`; library log noise stays out."""

from __future__ import annotations

import subprocess
import sys

from vlm_dpo.cli import build_parser, main
from vlm_dpo.run import RunFolder


def test_stage_help_lists_its_config_keys(capsys):
    parser = build_parser()
    help_text = parser._subparsers._group_actions[0].choices["eval"].format_help()
    assert "eval.bootstrap" in help_text and "int" in help_text and "1000" in help_text
    assert "ground.min_score" in help_text and "train.lr" not in help_text
    assert "vlm-dpo config show" in help_text
    assert "train.lr " in parser._subparsers._group_actions[0].choices["train"].format_help()


def test_config_show_prints_the_resolved_config(capsys, tmp_path):
    assert main(["config", "show", "eval.bootstrap=7", "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "bootstrap: 7" in out and f"out: {tmp_path / 'r'}" in out
    assert main(["config", "show", "eval.nope=1"]) == 2
    assert "eval.nope" in capsys.readouterr().err


def test_config_keys_lists_types_and_defaults(capsys):
    assert main(["config", "keys", "eval"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:3] == ["eval.max_new_tokens", "int", "24"] for line in lines), lines[:5]
    assert all(line.split()[0].startswith("eval.") for line in lines)


def test_library_log_noise_is_silenced(pipeline_run):
    """Loading a model as the CLI does prints no "Loading weights" bar and no transformers notices."""
    _, out, _ = pipeline_run
    code = ("from vlm_dpo.cli import quiet_libraries; quiet_libraries()\n"
            "from vlm_dpo.models import load_model_and_processor\n"
            f"load_model_and_processor({str(RunFolder(out).dpo_model)!r})\nprint('loaded')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "loaded" in r.stdout
    assert "Loading weights" not in r.stderr and "Removed shared tensor" not in r.stderr, r.stderr
