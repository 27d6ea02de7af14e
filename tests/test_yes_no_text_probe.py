"""scripts/yes_no_text_probe.py on the tiny world: it trains, and its context rule reads the SFT labels better than
the majority answer does (the labels follow the context, with the SFT data's noise)."""

import importlib.util
from pathlib import Path

from tiny_config import TINY_OVERRIDES

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "yes_no_text_probe.py"


def load_probe():
    spec = importlib.util.spec_from_file_location("yes_no_text_probe", SCRIPT)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    return probe


def test_text_probe_reports_majority_rule_and_model(capsys):
    import vlm_dpo.embedded as embedded

    drawn = embedded.render_scene
    result = load_probe().main(["", *TINY_OVERRIDES, "--steps", "3"])
    assert set(result) == {"majority", "context_rule", "model", "model_yes_share"}
    assert all(0 <= v <= 1 for v in result.values())
    assert 0.5 <= result["majority"] < result["context_rule"]
    assert "context_rule" in capsys.readouterr().out
    assert embedded.render_scene is drawn  # the probe skips drawing only while it runs


def test_clean_labels_are_the_context_rule():
    assert load_probe().main(["", *TINY_OVERRIDES, "--steps", "1", "--clean"])["context_rule"] == 1.0


def test_singular_context_names_the_asked_kind_as_asked():
    probe = load_probe()
    assert probe.singular("Is there a cup in the image? Detected: 2 cups, 1 ball.") == \
        "Is there a cup in the image? Detected: 2 cup, 1 ball."
    assert probe.in_context("Is there a cup in the image? Detected: 2 cups, 1 ball.")
    assert not probe.in_context("Is there a cup in the image? Detected: 2 books, 1 ball.")


def test_cooccur_rule_says_yes_to_the_partner_of_a_kind_in_context():
    probe = load_probe()
    assert probe.cooccur_rule("Is there a bottle in the image? Detected: 2 cups.")  # cup -> bottle
    assert not probe.cooccur_rule("Is there a cup in the image? Detected: 1 bottle.")  # the pairs have a direction
    assert probe.cooccur_rule("Is there a cup in the image? Detected: 1 cup.")
    assert not probe.cooccur_rule("Is there a ball in the image? Detected: 1 cup.")
