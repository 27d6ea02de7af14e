"""Mining with the detector as judge, synthetic negatives and context-robustness pairs (vlm_dpo.pairs.mine)."""

from __future__ import annotations

import random
import re

import pytest

from vlm_dpo.ground import GroundingConfig, PromptConfig
from vlm_dpo.judge import JudgeConfig, Vocabulary, parse_caption, score_caption
from vlm_dpo.pairs.mine import (
    SYNTHETIC, Cooccurrence, MineConfig, SyntheticContext, add_object, change_count, context_pairs,
    detection_caption, make_vague, mine_image, omit_object, repeat_object, swap_sides, synthetic_pairs,
)
from vlm_dpo.world import sample_scene
from vlm_dpo.world.captions import VAGUE_CAPTIONS

from .conftest import scene_detections

VOCAB = Vocabulary.world()
JUDGE = JudgeConfig()
W = 128

# Two cups on the left (centres x=20, 50), a ball on the right (x=100): the groups' mean centres are 65 px
# apart > 0.35 * 128, so the detection caption names the sides.
DETS = [
    {"label": "cup", "score": 0.9, "box": [10, 10, 30, 30]},
    {"label": "cup", "score": 0.9, "box": [40, 10, 60, 30]},
    {"label": "ball", "score": 0.8, "box": [90, 10, 110, 30]},
]
PERFECT = "two cups and a ball."  # 1.0 (recall 1, nothing wrong)
ONE_CUP = "one cup and a ball."  # 0.5 (count error: exactly one cup stated, two detected; "a cup" would be
# only partial, see tests/judge/test_score.py)
CUPS_ONLY = "two cups."  # 0.5 (recall 1/2)
BALL_ONLY = "a ball."  # 0.5 (recall 1/2)
BOTTLE = "two cups, a ball and a bottle."  # 0.0 (recall 1, one hallucination)
VAGUE = "some objects on a table."  # -0.25 (recall 0, one vague noun)
GENERATOR = {"model": "tiny-vlm", "settings": {"temperature": 1.0, "top_p": 0.9}}


def record(samples, greedy=None, image_id="img-1"):
    return {"image_id": image_id, "file": f"images/{image_id}.png", "prompt": "Describe the objects on the table.",
            "grounding": None, "greedy": greedy, "samples": list(samples)}


def mine(samples, greedy=None, dets=DETS, **cfg):
    rec = record(samples, greedy)
    return mine_image(rec, dets, W, VOCAB, JUDGE, MineConfig(**cfg), rec["file"], GENERATOR)


def triples(pairs):
    return [(p["chosen"], p["rejected"], p["margin"]) for p in pairs]


# ------------------------------------------------------------------------------------------------------- mining


def test_judge_scores_of_the_hand_made_captions():
    # The expectations below rest on these scores (see the module constants).
    captions = (PERFECT, ONE_CUP, CUPS_ONLY, BALL_ONLY, BOTTLE, VAGUE)
    got = {c: score_caption(c, DETS, VOCAB, JUDGE).score for c in captions}
    assert got == pytest.approx({PERFECT: 1.0, ONE_CUP: 0.5, CUPS_ONLY: 0.5, BALL_ONLY: 0.5, BOTTLE: 0.0, VAGUE: -0.25})


def test_mined_pairs_take_the_largest_margins_with_provenance():
    pairs, best = mine([ONE_CUP, CUPS_ONLY, BOTTLE, VAGUE], greedy=PERFECT, max_pairs_per_image=3)
    # Candidate margins >= 0.5: P-V 1.25, P-B 1.0, ONE_CUP-V 0.75, CUPS_ONLY-V 0.75, then 0.5s; ties by text.
    assert triples(pairs) == [(PERFECT, VAGUE, 1.25), (PERFECT, BOTTLE, 1.0), (ONE_CUP, VAGUE, 0.75)]
    assert best == PERFECT  # the (shortest) perfect caption feeds the synthetic pairs
    for p in pairs:
        assert p["source"] == "mined" and p["kind"] == "mined"
        assert p["image_id"] == "img-1" and p["image"] == "images/img-1.png"
        assert p["prompt"] == "Describe the objects on the table." and p["grounding"] is None
        assert p["generator"] == GENERATOR
        assert p["boxes"] == [d["box"] for d in DETS]
        ch, rj = p["scores"]["chosen"], p["scores"]["rejected"]
        assert ch["score"] == pytest.approx(score_caption(p["chosen"], DETS, VOCAB, JUDGE).score)
        assert rj["score"] == pytest.approx(score_caption(p["rejected"], DETS, VOCAB, JUDGE).score)
        assert p["margin"] == pytest.approx(ch["score"] - rj["score"])
    assert pairs[1]["scores"]["rejected"]["hallucinated"] == ["bottle"]
    assert pairs[0]["scores"]["chosen"]["perfect"] is True


@pytest.mark.parametrize("k", [1, 2, 5, 100])
@pytest.mark.parametrize("min_margin", [0.5, 0.8, 1.1])
def test_mined_pairs_are_strictly_better_by_the_margin_and_at_most_k(k, min_margin):
    pairs, _ = mine([ONE_CUP, CUPS_ONLY, BALL_ONLY, BOTTLE, VAGUE], greedy=PERFECT, max_pairs_per_image=k,
                    min_margin=min_margin)
    assert len(pairs) <= k
    for p in pairs:
        sc = score_caption(p["chosen"], DETS, VOCAB, JUDGE).score
        sr = score_caption(p["rejected"], DETS, VOCAB, JUDGE).score
        assert sc > sr and sc - sr >= min_margin - 1e-9
    # How many qualify: margins 1.25, 1.0, 0.75 x3 (ONE_CUP/CUPS_ONLY/BALL_ONLY vs VAGUE), 0.5 x 6.
    n_ok = {0.5: 11, 0.8: 2, 1.1: 1}[min_margin]
    assert len(pairs) == min(k, n_ok)


def test_ties_are_never_pairs_even_with_zero_margin():
    pairs, _ = mine([CUPS_ONLY, BALL_ONLY, ONE_CUP], min_margin=0.0, chosen_from_detections=False)
    assert pairs == []  # all three score 0.5: no preference


def test_mining_is_deterministic_and_independent_of_sample_order():
    samples = [ONE_CUP, CUPS_ONLY, BALL_ONLY, BOTTLE, VAGUE, PERFECT]
    ref, best = mine(samples, max_pairs_per_image=4)
    again, best2 = mine(samples, max_pairs_per_image=4)
    assert again == ref and best2 == best
    rng = random.Random(0)
    for _ in range(5):
        shuffled = samples[:]
        rng.shuffle(shuffled)
        # and duplicates / the greedy caption among the samples change nothing either
        out, b = mine(shuffled + [shuffled[0]], greedy=shuffled[1], max_pairs_per_image=4)
        assert out == ref and b == best


def test_greedy_caption_is_a_candidate_only_with_use_greedy():
    with_greedy, _ = mine([BOTTLE], greedy=CUPS_ONLY, chosen_from_detections=False)
    assert triples(with_greedy) == [(CUPS_ONLY, BOTTLE, 0.5)]
    without, best = mine([BOTTLE], greedy=CUPS_ONLY, chosen_from_detections=False, use_greedy=False)
    assert without == [] and best is None
    assert mine([BOTTLE, VAGUE], max_pairs_per_image=0)[0] == []


def test_length_balance_keeps_shorter_chosen_at_most_longer_chosen():
    samples = [PERFECT, CUPS_ONLY, BALL_ONLY, BOTTLE]  # 5, 2, 2 and 7 words
    plain, _ = mine(samples, max_pairs_per_image=3)
    # By margin then text: P>B (1.0, chosen shorter), then 0.5s: BALL_ONLY>B, P>BALL_ONLY, P>CUPS_ONLY, CUPS_ONLY>B
    assert triples(plain) == [(PERFECT, BOTTLE, 1.0), (BALL_ONLY, BOTTLE, 0.5), (PERFECT, BALL_ONLY, 0.5)]
    balanced, _ = mine(samples, max_pairs_per_image=3, length_balance=True)
    # Shorter-chosen candidates wait until a longer-chosen pair is kept.
    assert triples(balanced) == [(PERFECT, BALL_ONLY, 0.5), (PERFECT, CUPS_ONLY, 0.5), (CUPS_ONLY, BOTTLE, 0.5)]

    def counts(pairs):
        d = [len(p["chosen"].split()) - len(p["rejected"].split()) for p in pairs]
        return sum(x < 0 for x in d), sum(x > 0 for x in d)

    assert counts(plain) == (2, 1)
    shorter, longer = counts(balanced)
    assert shorter <= longer


def test_length_balance_invariant_on_many_candidates():
    samples = [PERFECT, CUPS_ONLY, BALL_ONLY, BOTTLE, VAGUE, ONE_CUP, "two cups and a ball and a bowl and a book.",
               "a ball and two cups on a table, nothing else.", "cups."]
    for k in range(1, 12):
        pairs, _ = mine(samples, max_pairs_per_image=k, length_balance=True, min_margin=0.25)
        d = [len(p["chosen"].split()) - len(p["rejected"].split()) for p in pairs]
        assert sum(x < 0 for x in d) <= sum(x > 0 for x in d)


def test_chosen_from_detections_when_no_sample_is_perfect():
    samples = [ONE_CUP, BOTTLE]
    pairs, best = mine(samples)
    cap = "two cups on the left and a ball on the right."
    assert detection_caption(DETS, W, JUDGE, VOCAB) == cap
    assert best == cap
    assert score_caption(cap, DETS, VOCAB, JUDGE).perfect
    by_chosen = {(p["chosen"], p["rejected"]): p for p in pairs}
    assert set(by_chosen) == {(cap, BOTTLE), (cap, ONE_CUP), (ONE_CUP, BOTTLE)}
    assert by_chosen[cap, BOTTLE]["kind"] == "detections" and by_chosen[cap, BOTTLE]["source"] == "mined"
    assert by_chosen[ONE_CUP, BOTTLE]["kind"] == "mined"
    # switched off: no factual side is invented, and no best caption for synthetic pairs
    pairs, best = mine(samples, chosen_from_detections=False)
    assert best is None and triples(pairs) == [(ONE_CUP, BOTTLE, 0.5)]
    # a perfect sample makes the detection caption unnecessary
    pairs, best = mine(samples + [PERFECT])
    assert best == PERFECT and all(cap not in (p["chosen"], p["rejected"]) for p in pairs)


def test_detection_caption_ignores_unconfident_and_unknown_labels():
    dets = DETS + [{"label": "bottle", "score": 0.2, "box": [0, 0, 5, 5]},
                   {"label": "zebra", "score": 0.99, "box": [60, 60, 70, 70]}]
    assert detection_caption(dets, W, JUDGE, VOCAB) == "two cups on the left and a ball on the right."
    assert detection_caption([{"label": "zebra", "score": 1.0, "box": [0, 0, 1, 1]}], W, JUDGE, VOCAB) is None


def test_a_sample_with_stray_whitespace_is_still_a_mined_caption():
    pairs, _ = mine(["  " + PERFECT + " \n", BOTTLE])
    assert triples(pairs) == [(PERFECT, BOTTLE, 1.0)]
    assert pairs[0]["kind"] == "mined"  # the model wrote it; it is not the detections' caption


def test_a_label_outside_the_vocabulary_is_no_hallucination():
    banana = "two cups and a ball and a banana."  # the judge abstains on "banana"
    r = score_caption(banana, DETS, VOCAB, JUDGE)
    assert r.hallucinated == [] and r.perfect and "banana" in r.unknown_nouns
    pairs, _ = mine([banana, BOTTLE, PERFECT], max_pairs_per_image=10)
    assert all(p["rejected"] != banana for p in pairs)
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {(PERFECT, BOTTLE), (banana, BOTTLE)}


def test_an_image_without_detections_prefers_an_empty_caption():
    pairs, best = mine(["an empty table.", "a red cup."], dets=[])
    assert best == "an empty table."
    assert triples(pairs) == [("an empty table.", "a red cup.", 1.0)]


# ------------------------------------------------------------------------------------------ synthetic negatives


def _scenes(n=40):
    return [sample_scene(0, "train", i) for i in range(n)]


def _context(det_sets, seed=0):
    cooc = Cooccurrence([[d["label"] for d in ds] for ds in det_sets])
    return SyntheticContext(VOCAB, list(VOCAB.classes), cooc, random.Random(seed))


def test_each_synthetic_kind_is_judged_worse_on_world_scenes():
    scenes = _scenes()
    det_sets = [scene_detections(s) for s in scenes]
    ctx = _context(det_sets)
    made = {k: 0 for k in SYNTHETIC}
    for s, dets in zip(scenes, det_sets):
        best = detection_caption(dets, s.width, JUDGE, VOCAB)
        chosen = score_caption(best, dets, VOCAB, JUDGE)
        assert chosen.perfect, best
        present = {d["label"] for d in dets}
        rec = record([], image_id=s.image_id)
        for kind in SYNTHETIC:
            bad = SYNTHETIC[kind](best, present, ctx)
            if kind not in ("swap_sides", "omit_object"):  # these always apply, and the judge always sees the damage
                assert bad and score_caption(bad, dets, VOCAB, JUDGE).score < chosen.score, (kind, best, bad)
            out = synthetic_pairs(rec, best, dets, VOCAB, JUDGE, MineConfig(synthetic=[kind]), ctx, rec["file"])
            assert len(out) <= 1
            for p in out:
                made[kind] += 1
                assert p["source"] == "synthetic" and p["kind"] == kind and p["chosen"] == best
                rj = score_caption(p["rejected"], dets, VOCAB, JUDGE).score
                assert rj < chosen.score
                assert p["margin"] == pytest.approx(chosen.score - rj, abs=1e-4)
                assert p["scores"]["chosen"]["perfect"] and not p["scores"]["rejected"]["perfect"]
    assert made["add_object"] == made["count"] == made["vague"] == len(scenes)
    assert made["swap_sides"] >= 1  # only captions that name sides can be swapped
    # only captions listing two or more groups can leave one out
    assert made["omit_object"] == sum(len({d["label"] for d in ds}) >= 2 for ds in det_sets) > 0


def test_synthetic_pairs_per_image_and_kinds_in_turn():
    s = _scenes(1)[0]
    dets = scene_detections(s)
    best = detection_caption(dets, s.width, JUDGE, VOCAB)
    ctx = _context([dets])
    rec = record([], image_id=s.image_id)
    out = synthetic_pairs(rec, best, dets, VOCAB, JUDGE, MineConfig(synthetic_per_image=3), ctx, rec["file"])
    assert len(out) == 3 and len({p["kind"] for p in out}) == 3
    # a swap the judge cannot check is skipped, not kept as a "negative"
    no_sides = "a red cup."
    cup = [{"label": "cup", "color": "red", "box": [10, 10, 30, 30], "score": 1.0}]
    assert swap_sides(no_sides, {"cup"}, ctx) is None
    out = synthetic_pairs(rec, no_sides, cup, VOCAB, JUDGE, MineConfig(synthetic=["swap_sides"]), ctx, "x.png")
    assert out == []


def test_add_object_picks_the_adversarial_cooccurring_label():
    cooc = Cooccurrence([["cup", "bottle"], ["cup", "bottle", "cup"], ["cup", "phone"],
                         ["ball", "apple"], ["apple"], ["apple"], ["apple"]])
    assert cooc.pair[("cup", "bottle")] == 2 and cooc.pair[("bottle", "cup")] == 2 and cooc.single["cup"] == 3
    ctx = SyntheticContext(VOCAB, list(VOCAB.classes), cooc, random.Random(0))
    # with a cup: bottle co-occurs twice, phone once, apple never (though apple is the most frequent label)
    assert cooc.adversarial_absent({"cup"}, ctx.labels) == "bottle"
    assert add_object("a red cup.", {"cup"}, ctx) == "a red cup and a bottle."
    assert add_object("a cup and a bottle.", {"cup", "bottle"}, ctx) == "a cup and a bottle and a phone."
    # no co-occurrence at all: the most frequent absent label (apple 4 images, cup 3)
    assert add_object("a blue block.", {"block"}, ctx) == "a blue block and an apple."
    assert cooc.adversarial_absent(set(VOCAB.classes), ctx.labels) is None


@pytest.mark.parametrize("caption, expected", [
    ("two red cups and a ball.", "three red cups and a ball."),
    ("a red cup.", "two red cups."),
    ("an apple.", "two apples."),
    ("a ball and a green block.", "two balls and a green block."),
    ("one bowl on the left and a cup on the right.", "two bowls on the left and a cup on the right."),
    ("a red cup on the left and four balls on the right.", "a red cup on the left and five balls on the right."),
])
def test_change_count(caption, expected):
    ctx = _context([])
    assert change_count(caption, set(), ctx) == expected


def test_change_count_without_a_count_to_change():
    ctx = _context([])
    assert change_count("some objects on a table.", set(), ctx) is None
    assert change_count("cups and balls.", set(), ctx) is None


def test_swap_sides_and_vague():
    ctx = _context([])
    assert swap_sides("a red cup on the left and a ball on the right.", set(), ctx) == \
        "a red cup on the right and a ball on the left."
    assert make_vague("a red cup.", set(), ctx) in VAGUE_CAPTIONS


@pytest.mark.parametrize("caption, allowed", [
    ("two cups and a ball.", {"two cups.", "a ball."}),
    ("two red cups, a ball and a green block.", {"a ball and a green block.", "two red cups and a green block.",
                                                "two red cups and a ball."}),
    ("two cups on the left and a ball on the right.", {"two cups.", "a ball."}),
])
def test_omit_object_leaves_out_one_listed_group(caption, allowed):
    seen = {omit_object(caption, {"cup", "ball", "block"}, _context([], seed)) for seed in range(20)}
    assert seen == allowed


def test_omit_object_needs_two_groups_and_a_present_one():
    assert omit_object("two cups.", {"cup"}, _context([])) is None
    # only the present kinds are left out: leaving out a hallucinated bottle would make a better caption
    assert omit_object("a cup and a bottle.", {"cup"}, _context([])) == "a bottle."


def test_omit_object_pair_ranks_complete_above_partial():
    ctx = _context([DETS])
    rec = record([])
    out = synthetic_pairs(rec, PERFECT, DETS, VOCAB, JUDGE, MineConfig(synthetic=["omit_object"]), ctx, rec["file"])
    assert len(out) == 1 and out[0]["chosen"] == PERFECT and out[0]["rejected"] in {CUPS_ONLY, BALL_ONLY}
    assert out[0]["scores"]["rejected"]["partial"] or out[0]["scores"]["rejected"]["missed"]
    assert out[0]["margin"] == 0.5


@pytest.mark.parametrize("caption, allowed", [
    ("a ball.", {"a ball and a ball."}),
    ("two cups and a ball.", {"two cups, two cups and a ball.", "two cups, a ball and a ball."}),
])
def test_repeat_object_says_one_listed_phrase_twice(caption, allowed):
    assert {repeat_object(caption, set(), _context([], seed)) for seed in range(20)} == allowed


def test_repeat_pair_is_judged_worse():
    ctx = _context([DETS])
    out = synthetic_pairs(record([]), PERFECT, DETS, VOCAB, JUDGE, MineConfig(synthetic=["repeat"]), ctx, "x.png")
    assert len(out) == 1 and out[0]["scores"]["rejected"]["count_errors"] == 1 and out[0]["margin"] > 0


def test_unknown_synthetic_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown kind.*omit_objects"):
        MineConfig(synthetic=["omit_objects"])


# --------------------------------------------------------------------------------------------- context pairs

CTX_DETS = [  # a cup on the left, a ball on the right (64 px image)
    {"label": "cup", "score": 0.9, "box": [4, 20, 20, 36]},
    {"label": "ball", "score": 0.9, "box": [44, 20, 60, 36]},
]


def _context_pair(kind, dets=CTX_DETS, labels_seen=(("cup", "ball", "bottle"), ("cup", "bottle"))):
    best = detection_caption(dets, 64, JUDGE, VOCAB)
    rec = {"image_id": "c1", "file": "c1.png", "prompt": "Describe. Detected: ...", "grounding": "Detected: ..."}
    ctx = SyntheticContext(VOCAB, list(VOCAB.classes), Cooccurrence([list(x) for x in labels_seen]),
                           random.Random(0))
    out = context_pairs(rec, best, dets, 64, 64, VOCAB, JUDGE, GroundingConfig(), PromptConfig("Describe."),
                        MineConfig(context=[kind]), ctx, rec["file"])
    return best, out


def _labels(caption):
    return set(parse_caption(caption, VOCAB).labels())


def test_inject_false_puts_the_false_label_in_the_context_and_the_rejected_side():
    best, out = _context_pair("inject_false")
    assert best == "a cup on the left and a ball on the right."
    assert len(out) == 1
    p = out[0]
    assert p["source"] == "context" and p["kind"] == "inject_false"
    # bottle co-occurs with cup and ball twice in the data: the adversarial false detection
    assert re.search(r"\b1 bottle\b", p["grounding"]) and p["grounding"].startswith("Detected:")
    assert p["prompt"] == f"Describe. {p['grounding']}"
    assert p["chosen"] == best and "bottle" not in _labels(p["chosen"])
    assert "bottle" in _labels(p["rejected"])
    assert p["scores"]["rejected"]["hallucinated"] == ["bottle"]
    assert p["margin"] == pytest.approx(1.0)


def test_drop_true_removes_a_label_from_the_context_while_chosen_still_names_it():
    best, out = _context_pair("drop_true")
    assert len(out) == 1
    p = out[0]
    assert p["source"] == "context" and p["kind"] == "drop_true" and p["chosen"] == best
    dropped = _labels(p["chosen"]) - _labels(p["rejected"])
    assert len(dropped) == 1
    (label,) = dropped
    assert label not in p["grounding"]  # not even as a plural
    kept = ({"cup", "ball"} - dropped).pop()
    assert re.search(rf"\b1 {kept}\b", p["grounding"])
    assert p["prompt"] == f"Describe. {p['grounding']}"
    assert p["scores"]["rejected"]["missed"] == [label]
    assert p["margin"] == pytest.approx(0.5)


def test_drop_true_needs_two_labels():
    _, out = _context_pair("drop_true", dets=CTX_DETS[:1])
    assert out == []


def test_unknown_context_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown context pair kind"):
        _context_pair("nonsense")


def test_mined_judgements_keep_the_partial_labels():
    """A true but partial caption ("a cup" of two cups) is recorded as such beside the pair, not only in its score."""
    from vlm_dpo.pairs.mine import _judge_dict

    dets = [{"label": "cup", "score": 0.9, "box": [0, 0, 10, 10]}, {"label": "cup", "score": 0.9, "box": [40, 0, 50, 10]},
            {"label": "ball", "score": 0.9, "box": [0, 40, 10, 50]}]
    judged = _judge_dict("A cup and a ball.", dets, Vocabulary.world(), JudgeConfig())
    assert judged["partial"] == ["cup"] and judged["hallucinated"] == [] and judged["missed"] == []
    assert _judge_dict("Two cups and a ball.", dets, Vocabulary.world(), JudgeConfig())["partial"] == []
