import pytest

from vlm_dpo.eval.captions import aggregate, bootstrap_ci, bootstrap_cis, caption_stats
from vlm_dpo.eval.pope import make_probes, parse_answer, pope_metrics, question
from vlm_dpo.eval.preference import preference_metrics
from vlm_dpo.judge import Vocabulary

V = Vocabulary.world()
OBJS = [{"label": "cup", "box": [0, 0, 10, 10]}, {"label": "cup", "box": [20, 0, 30, 10]},
        {"label": "ball", "box": [50, 0, 60, 10]}]


@pytest.mark.parametrize("caption,mentioned,halluc,covered,counts_right,counts_stated", [
    ("two cups and a ball.", 2, 0, 2, 2, 2),
    ("three cups, a ball and an apple.", 3, 1, 2, 1, 2),       # over-count + hallucinated apple
    ("a mug and two balls.", 2, 0, 2, 0, 2),                   # synonym; both counts wrong
    ("cups but no apples.", 1, 0, 1, 0, 0),                    # negation: apple is not a mention
    ("some objects on a table.", 0, 0, 0, 0, 0),               # vague: no mentions
    ("a cupboard with a ball.", 1, 0, 1, 1, 1),                # "cupboard" is not a cup; "a ball" is right
])
def test_caption_stats_hand_worked(caption, mentioned, halluc, covered, counts_right, counts_stated):
    s = caption_stats(caption, OBJS, V)
    assert (s.mentioned, s.hallucinated, s.covered, s.truth) == (mentioned, halluc, covered, 2)
    assert (s.counts_stated, s.counts_right) == (counts_stated, counts_right)


def test_chair_and_recall_aggregate_hand_worked():
    stats = [caption_stats(c, OBJS, V) for c in ("two cups and a ball.", "three cups, a ball and an apple.",
                                                   "some objects on a table.", "a ball.")]
    m = aggregate(stats)
    # mentions: 2 + 3 + 0 + 1 = 6, hallucinated: 1 -> CHAIR_i = 1/6; captions with a hallucination: 1/4
    assert m["chair_i"] == pytest.approx(1 / 6)
    assert m["chair_s"] == pytest.approx(0.25)
    # truth 2 per caption (cup, ball) = 8; covered 2 + 2 + 0 + 1 = 5
    assert m["recall"] == pytest.approx(5 / 8)
    assert m["mean_words"] == pytest.approx((5 + 7 + 5 + 2) / 4)
    assert m["vague_rate"] == pytest.approx(0.25)


def test_bootstrap_interval_brackets_the_estimate():
    groups = [[caption_stats("two cups and a ball.", OBJS, V)], [caption_stats("a cup and an apple.", OBJS, V)]] * 10
    lo, hi = bootstrap_ci(groups, "chair_i", n_boot=200, seed=0)
    est = aggregate([s for g in groups for s in g])["chair_i"]
    assert lo <= est <= hi and lo < hi


def _one_metric_interval(groups, metric, n_boot, seed):
    # the percentile bootstrap written out for one metric alone (seeded resamples of images, 2.5/97.5 percentiles)
    import random

    rng = random.Random(seed)
    values = sorted(aggregate([s for g in [groups[rng.randrange(len(groups))] for _ in groups] for s in g])[metric]
                    for _ in range(n_boot))
    return values[int(0.025 * (n_boot - 1))], values[int(0.975 * (n_boot - 1))]


def test_one_pass_bootstrap_gives_each_metrics_own_interval():
    # one resample stream for all metrics: the intervals of one metric bootstrapped alone, to the last digit
    from vlm_dpo.eval.bootstrap import percentile_ci, percentile_cis

    caps = ["two cups and a ball.", "a cup and an apple.", "a phone.", "a cup, a ball and a book."]
    groups = [[caption_stats(caps[i % 4], OBJS, V), caption_stats(caps[(i * 3) % 4], OBJS, V)] for i in range(13)]
    metrics = ("chair_i", "chair_s", "recall", "mean_words")
    alone = {k: _one_metric_interval(groups, k, n_boot=150, seed=3) for k in metrics}
    assert bootstrap_cis(groups, metrics, n_boot=150, seed=3) == alone
    assert {k: bootstrap_ci(groups, k, n_boot=150, seed=3) for k in metrics} == alone
    # a statistic that sometimes does not exist is left out of its own interval only
    odd = lambda pick: {"n": len(pick), "first": pick[0] if pick[0] % 2 else None}  # noqa: E731
    both = percentile_cis(list(range(9)), odd, ("n", "first"), n_boot=100, seed=1)
    assert both["first"] == percentile_ci(list(range(9)), lambda p: odd(p)["first"], n_boot=100, seed=1)
    assert both["n"] == (9, 9)
    assert percentile_cis([2, 4], odd, ("first",), n_boot=20)["first"] is None


def test_pope_probes_deterministic_and_balanced():
    scenes = [{"image_id": f"i{i}", "objects": [{"label": lab} for lab in labs]}
              for i, labs in enumerate([["cup", "bowl"], ["bowl", "apple"], ["cup"], ["book", "phone", "cup"]])]
    labels = ["cup", "bottle", "ball", "block", "book", "apple", "bowl", "phone"]
    a = make_probes(scenes, labels, per_image=2, seed=1)
    assert a == make_probes(scenes, labels, per_image=2, seed=1)
    for split in ("random", "popular", "adversarial"):
        rows = [p for p in a if p["split"] == split]
        assert sum(p["answer"] == "yes" for p in rows) == sum(p["answer"] == "no" for p in rows)
        for p in rows:
            present = {o["label"] for o in scenes[int(p["image_id"][1:])]["objects"]}
            assert (p["label"] in present) == (p["answer"] == "yes")
    # popular negatives are the most frequent absent labels: cup (3 images) for image i1
    pop = [p["label"] for p in a if p["split"] == "popular" and p["image_id"] == "i1" and p["answer"] == "no"]
    assert pop[0] == "cup"
    # adversarial: for i2 (cup only) the label co-occurring most with cup is bowl/book/phone (1 each) -> by freq
    adv = [p["label"] for p in a if p["split"] == "adversarial" and p["image_id"] == "i2" and p["answer"] == "no"]
    assert adv == ["bowl"]
    assert question("apple") == "Is there an apple in the image? Answer yes or no."


@pytest.mark.parametrize("text,answer", [("yes.", "yes"), ("No, there is not.", "no"), ("Yes. No idea", "yes"),
                                         ("There is not a cup", "no"), ("", "yes")])
def test_pope_answer_parsing(text, answer):
    assert parse_answer(text) == answer


def test_pope_metrics_hand_worked():
    m = pope_metrics(["yes", "yes", "no", "no", "yes"], ["yes", "no", "no", "yes", "yes"])
    # TP 2, FP 1, TN 1, FN 1
    assert (m["accuracy"], m["precision"], m["recall"]) == (pytest.approx(3 / 5), pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["f1"] == pytest.approx(2 / 3) and m["yes_ratio"] == pytest.approx(3 / 5)


def test_preference_metrics_hand_worked():
    import torch

    lp = torch.tensor([[-1.0, -3.0], [-2.0, -1.0]])
    ref = torch.tensor([[-2.0, -2.0], [-2.0, -2.0]])
    m = preference_metrics(lp, ref, beta=0.5)
    assert m["pref_accuracy"] == 0.5
    # margins: 0.5*((1) - (-1)) = 1.0 and 0.5*((0) - (1)) = -0.5 -> mean 0.25
    assert m["reward_margin"] == pytest.approx(0.25)


def test_eval_settings_follow_the_content_of_a_vocabulary_file(tmp_path):
    """Results judged with an edited vocabulary file are not reused: its content is part of the eval settings."""
    from types import SimpleNamespace

    from vlm_dpo.eval.run import EvalConfig
    from vlm_dpo.eval.stage import eval_settings

    vocab = tmp_path / "vocab.yaml"
    vocab.write_text("cup: [mug]\n")
    cfg = SimpleNamespace(eval=EvalConfig(vocabulary=str(vocab)))
    items = [{"image_id": "a", "file": "a.png", "prompt": "Describe."}]
    before = eval_settings(cfg, items, [])
    assert eval_settings(cfg, items, []) == before
    vocab.write_text("cup: [mug, beaker]\n")
    assert eval_settings(cfg, items, []) != before
    assert "vocabulary_file" not in eval_settings(SimpleNamespace(eval=EvalConfig()), items, [])["eval"]


def test_pope_with_and_without_the_context(monkeypatch):
    """A model that echoes the context (yes iff the asked kind is in "Detected: ...") is perfect when the context
    is right, and says yes to everything without it: the two settings must see different prompts."""
    import vlm_dpo.eval.run as run

    asked = []

    def echo_answer(prompt: str) -> str:
        if "Detected:" not in prompt:
            return "yes."
        kind = prompt.split("Is there ")[1].split(" in ")[0].split(" ", 1)[1]  # "Is there a cup in ..." -> cup
        return "yes." if kind in prompt.split("Detected:")[1] else "no."

    def echo(model, processor, items, cfg, **kw):
        asked.extend(it["prompt"] for it in items)
        return [[echo_answer(it["prompt"])] for it in items]

    monkeypatch.setattr(run, "generate_all", echo)
    scenes = [{"image_id": f"img{i}", "objects": [{"label": "cup"}, {"label": "ball"}] if i % 2 else [{"label": "apple"}]}
              for i in range(6)]
    items = [{"image_id": s["image_id"], "path": "unused.png",
              "grounding": "Detected: " + ", ".join(f"1 {o['label']}" for o in s["objects"]) + "."} for s in scenes]
    labels = ["cup", "ball", "apple", "phone", "book"]
    cfg = run.EvalConfig(pope_per_image=1)
    grounded, rows_g = run.pope_eval(None, None, items, scenes, labels, cfg, progress=False)
    bare, rows_b = run.pope_eval(None, None, items, scenes, labels, cfg, progress=False, grounded=False)
    assert grounded["adversarial"]["f1"] == 1.0 and grounded["adversarial"]["yes_ratio"] == 0.5
    assert bare["adversarial"]["yes_ratio"] == 1.0 and bare["adversarial"]["precision"] == 0.5
    assert {r["context"] for r in rows_g} == {"grounded"} and {r["context"] for r in rows_b} == {"no_context"}
    assert any("Detected:" in p for p in asked) and any("Detected:" not in p for p in asked)


def test_natural_context_errors_are_those_of_the_context_stated():
    from vlm_dpo.eval.grounding import context_errors
    from vlm_dpo.ground import GroundingConfig, context_detections

    objects = [{"label": "cup", "box": [0, 0, 8, 8]}, {"label": "ball", "box": [10, 10, 18, 18]}]
    dets = [{"label": "cup", "score": 0.45, "box": [0, 0, 8, 8]},
            {"label": "book", "score": 0.4, "box": [9, 9, 20, 20]}]
    plain = GroundingConfig(min_score=0.5)
    assert context_errors(context_detections(dets, plain), objects) == {"injected": [], "dropped": ["ball", "cup"]}
    # the fallback states the best guess (the cup at 0.45): one kind less dropped, and nothing injected
    guess = GroundingConfig(min_score=0.5, fallback_score=0.3)
    assert context_errors(context_detections(dets, guess), objects) == {"injected": [], "dropped": ["ball"]}
    assert context_errors(context_detections(dets[1:], guess), objects) == {"injected": ["book"],
                                                                            "dropped": ["ball", "cup"]}


def test_context_errors_and_echoes_compare_the_vocabularys_classes():
    from vlm_dpo.eval.grounding import context_errors, echo_recovery_counts
    from vlm_dpo.judge import Vocabulary, resolve_vocabulary

    world, coco = Vocabulary.world(), resolve_vocabulary("coco")
    objects = [{"label": "cup", "box": [0, 0, 8, 8]}, {"label": "ball", "box": [10, 10, 18, 18]}]
    # a detector that says "mugs" for cups: the same kind, neither a false nor a missed one
    context = [{"label": "mugs", "score": 0.9, "box": [0, 0, 8, 8]},
               {"label": "phone", "score": 0.9, "box": [9, 9, 20, 20]}]
    assert context_errors(context, objects) == {"injected": ["mugs", "phone"], "dropped": ["ball", "cup"]}  # raw
    assert context_errors(context, objects, world) == {"injected": ["phone"], "dropped": ["ball"]}
    # COCO calls the phone "cell phone": the caption's "cell phone" echoes the context's "phone"
    errors = context_errors([{"label": "cup", "score": 0.9, "box": [0, 0, 8, 8]}, context[1]], objects, coco)
    assert errors == {"injected": ["cell phone"], "dropped": ["sports ball"]}
    assert echo_recovery_counts("a cup and a cell phone.", errors, coco) == (1, 1, 0, 1)
    # errors written with the world's names (the noisy contexts) count the same under COCO
    world_names = {"injected": ["phone"], "dropped": ["ball"]}
    assert echo_recovery_counts("a cup and a cell phone.", world_names, coco) == (1, 1, 0, 1)
    assert echo_recovery_counts("a cup, a cell phone and a ball.", world_names, coco) == (1, 1, 1, 1)


def test_chair_splits_into_hallucinations_the_context_listed_and_the_rest():
    from vlm_dpo.eval.grounding import chair_by_context, hallucination_counts
    from vlm_dpo.judge import Vocabulary

    vocab = Vocabulary.world()
    objects = [{"label": "cup", "box": [0, 0, 8, 8]}]
    errors = {"injected": ["ball"], "dropped": []}  # the context: "1 cup, 1 ball"; no ball is there
    # cup is there, ball was listed (an echo), apple was not (invented): 3 named, one of each kind
    assert hallucination_counts("a cup, a ball and an apple.", errors, objects, vocab) == (1, 1, 3)
    assert hallucination_counts("a cup.", errors, objects, vocab) == (0, 0, 1)
    counts = [(1, 1, 3), (0, 0, 1), (0, 2, 4)]  # 1 listed + 3 invented of 8 named
    assert chair_by_context(counts) == {"in_context": 1 / 8, "outside_context": 3 / 8}
    assert chair_by_context([]) == {"in_context": 0.0, "outside_context": 0.0}
