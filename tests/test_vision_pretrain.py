"""Contrastive pretraining of the embedded VLM's vision tower, and the SFT grounding contexts' false detections."""

from __future__ import annotations

import functools
import json
from collections import Counter

import pytest
import torch

from vlm_dpo.models import TinyVLMSpec, build_tiny_idefics3, save_model
from vlm_dpo.vision_pretrain import (ContrastiveVision, VisionPretrainConfig, contrastive_loss, encode_captions,
                                     ensure_pretrained_vision, load_into_vlm, patch_labels, preprocess_images,
                                     presence_from_patches, pretrain_vision)
from vlm_dpo.world.scenes import COLORS, KINDS, render_scene, sample_scene

# 32 px (16 patches), a 32-wide 2-layer tower; one object of two kinds in six colours: 12 distinct captions, a
# setting where retrieval is far above chance after a few dozen steps, every seed.
SPEC = TinyVLMSpec(image_size=32, patch_size=8, scale_factor=2, vision_width=32, vision_layers=2, vision_heads=2,
                   text_width=32, text_layers=1, text_heads=2, text_kv_heads=1, text_mlp=64, vocab_size=400)
SCENES = dict(image_size=64, max_objects=1, kinds=("ball", "book"))
TINY = dict(embed_dim=32, text_width=32, text_layers=1, text_heads=2, eval_scenes=60)


@functools.lru_cache(maxsize=None)
def _corpus() -> tuple[str, ...]:
    from vlm_dpo.embedded import tokenizer_corpus

    return tuple(tokenizer_corpus(0, n=60))


def tiny_vlm(seed: int = 0, spec: TinyVLMSpec = SPEC):
    return build_tiny_idefics3(list(_corpus()), spec, seed=seed)


@pytest.fixture(scope="module")
def pretrained():
    model, processor = tiny_vlm()
    cfg = VisionPretrainConfig(steps=80, batch_size=32, lr=3e-3, warmup_steps=10, **TINY)
    tower, metrics = pretrain_vision(model.config.vision_config, processor, cfg, scene_kwargs=SCENES, progress=False)
    return tower, metrics, processor


def test_pretraining_loss_falls_and_retrieval_beats_chance(pretrained):
    _, m, _ = pretrained
    assert m["loss_last"] < m["loss_first"] - 0.5, m
    assert m["val_distinct_captions"] == 12 and m["val_scenes"] == 60
    assert m["val_retrieval_top1"] >= max(0.3, 3 * m["val_chance"]), m
    assert m["minutes"] >= 0 and len(m["losses"]) == 80
    # The dense head's presence calls discriminate: a head that cannot tell ball from book calls both (or
    # guesses), precision 0.5. At this toy size (a 4x4 patch grid, 80 steps) it is cautious, so recall stays low;
    # the default world and tower reach 0.82 / 0.85 (README).
    assert m["val_presence_precision"] >= 0.65 and m["val_presence_recall"] > 0, m


def test_patch_labels_mark_what_covers_each_patch_centre_topmost_last():
    # 4x4 grid on a 40 px image: patch centres at 5, 15, 25, 35 px
    scene = {"width": 40, "height": 40, "objects": [
        {"label": "book", "color": "red", "box": [0, 0, 20, 20]},  # centres (5|15, 5|15): the top-left 2x2
        {"label": "ball", "color": "blue", "box": [12, 12, 40, 18]},  # row 1 (y=15), columns 1-3 (x>=15), on top
    ]}
    kind, color = patch_labels([scene], 4)
    book, ball = KINDS.index("book") + 1, KINDS.index("ball") + 1
    assert kind.shape == (1, 16)
    assert kind.view(4, 4).tolist() == [[book, book, 0, 0], [book, ball, ball, ball], [0, 0, 0, 0], [0, 0, 0, 0]]
    red, blue = list(COLORS).index("red") + 1, list(COLORS).index("blue") + 1
    assert color.view(4, 4)[1].tolist() == [red, blue, blue, blue] and color.view(4, 4)[3].tolist() == [0] * 4


def test_presence_is_read_off_the_patch_predictions():
    """A head that calls every patch 'ball' says ball is present everywhere: precision = share of scenes with a
    ball, recall 1 for balls and 0 for the rest."""
    model, processor = tiny_vlm()
    cv = ContrastiveVision(model.config.vision_config, processor.tokenizer, VisionPretrainConfig(**TINY))
    with torch.no_grad():
        cv.patch_kind.weight.zero_()
        cv.patch_kind.bias.fill_(-10.0)
        cv.patch_kind.bias[KINDS.index("ball") + 1] = 10.0
    drawn = [sample_scene(0, "val", i, **SCENES) for i in range(12)]
    scenes = [s.to_dict() for s in drawn]
    pv, pm = preprocess_images(processor.image_processor, [render_scene(s) for s in drawn])
    got = presence_from_patches(cv, pv, pm, scenes)
    balls = sum(s["objects"][0]["label"] == "ball" for s in scenes)
    assert 0 < balls < 12
    assert got == {"precision": balls / 12, "recall": balls / 12}


def test_contrastive_only_pretraining_has_no_dense_head():
    model, processor = tiny_vlm()
    cfg = VisionPretrainConfig(steps=2, batch_size=4, dense_weight=0.0, **{**TINY, "eval_scenes": 6})
    cv = ContrastiveVision(model.config.vision_config, processor.tokenizer, cfg)
    assert cv.patch_kind is None and cv.patch_color is None
    _, m = pretrain_vision(model.config.vision_config, processor, cfg, scene_kwargs=SCENES, progress=False)
    assert "val_presence_recall" not in m and "val_retrieval_top1" in m


def test_pretrained_tower_goes_into_the_vlm_and_survives_save_and_load(pretrained, tmp_path):
    from transformers import AutoModelForImageTextToText

    tower, _, _ = pretrained
    model, processor = tiny_vlm(seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_into_vlm(model, tower.state_dict())
    vision = tower.state_dict()
    for k, v in model.state_dict().items():  # the tower changed, nothing else did
        if k.startswith("model.vision_model."):
            assert torch.equal(v, vision[k.removeprefix("model.vision_model.")])
        else:
            assert torch.equal(v, before[k]), k
    save_model(model, processor, tmp_path / "m")
    loaded = AutoModelForImageTextToText.from_pretrained(tmp_path / "m")
    got = loaded.model.vision_model.state_dict()
    assert got.keys() == vision.keys()
    assert all(torch.equal(got[k], vision[k]) for k in vision)
    # and the loaded VLM still runs end to end on a world image
    from vlm_dpo.ground import render_prompt

    im = render_scene(sample_scene(0, "val", 0, image_size=64))
    enc = processor(text=[render_prompt(processor, "Describe the objects on the table.")], images=[[im]],
                    return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(loaded(**enc).logits).all()


def test_strict_load_rejects_another_tower_shape(pretrained):
    tower, _, _ = pretrained
    other, _ = tiny_vlm(spec=TinyVLMSpec(**{**SPEC.__dict__, "vision_width": 64, "vision_heads": 2}))
    with pytest.raises(RuntimeError):
        load_into_vlm(other, tower.state_dict())


def test_pretraining_is_deterministic_from_the_seed():
    model, processor = tiny_vlm()

    def run(seed):
        cfg = VisionPretrainConfig(steps=3, batch_size=8, seed=seed, **{**TINY, "eval_scenes": 8})
        return pretrain_vision(model.config.vision_config, processor, cfg, scene_kwargs=SCENES, progress=False)

    (t1, m1), (t2, m2), (t3, _) = run(0), run(0), run(1)
    assert m1["losses"] == m2["losses"] and m1["val_retrieval_top1"] == m2["val_retrieval_top1"]
    s1, s2, s3 = t1.state_dict(), t2.state_dict(), t3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)


def test_images_are_preprocessed_exactly_like_the_vlm_processor_does():
    from vlm_dpo.ground import render_prompt

    _, processor = tiny_vlm()
    ims = [render_scene(sample_scene(0, "sft", 30_000_000 + i, image_size=96)) for i in range(3)]
    pv, mask = preprocess_images(processor.image_processor, ims)
    enc = processor(text=[render_prompt(processor, "x")] * 3, images=[[im] for im in ims], return_tensors="pt")
    assert pv.shape == (3, 3, 32, 32) and torch.equal(pv, enc["pixel_values"][:, 0])
    assert mask.all() and mask.shape == (3, 32, 32)


def test_captions_end_in_eos_and_the_text_model_uses_the_tokenizers_ids():
    model, processor = tiny_vlm()
    tok = processor.tokenizer
    ids, am = encode_captions(tok, ["a red ball.", "two blue books and a green ball."], 48)
    lengths = am.sum(1)
    assert (ids[torch.arange(2), lengths - 1] == tok.eos_token_id).all()
    assert (ids[am == 0] == tok.pad_token_id).all() and lengths[0] < lengths[1]
    assert encode_captions(tok, ["a red ball. " * 40], 10)[0].shape == (1, 10)
    cv = ContrastiveVision(model.config.vision_config, tok, VisionPretrainConfig(**TINY))
    c = cv.text.config
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id, c.vocab_size) == (
        tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, len(tok))
    with pytest.raises(ValueError):
        ContrastiveVision(model.config.vision_config, tok, VisionPretrainConfig(pool="cls"))


def test_contrastive_loss_is_clip_loss_and_treats_identical_captions_as_positives():
    from open_clip.loss import ClipLoss

    g = torch.Generator().manual_seed(0)
    a = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
    scale = torch.tensor(2.0)
    caps = [f"c{i}" for i in range(6)]
    assert torch.allclose(contrastive_loss(a, b, scale, caps), ClipLoss()(a, b, scale.exp()))
    dup = ["x", "y", "x", "z", "y", "w"]
    swapped = b[[2, 4, 0, 3, 1, 5]]  # swapping texts among identical captions changes nothing
    assert torch.allclose(contrastive_loss(a, b, scale, dup), contrastive_loss(a, swapped, scale, dup))


def test_ensure_pretrained_vision_caches_and_loads(tmp_path, monkeypatch):
    import vlm_dpo.vision_pretrain as vp

    cfg = VisionPretrainConfig(steps=2, batch_size=4, **{**TINY, "eval_scenes": 6})
    m1, processor = tiny_vlm()
    meta = ensure_pretrained_vision(m1, processor, cfg, tmp_path, scene_kwargs=SCENES, progress=False)
    assert json.loads((tmp_path / "vision" / meta["key"] / "metrics.json").read_text())["key"] == meta["key"]

    def no_training(*a, **k):
        raise AssertionError("should come from the cache")

    monkeypatch.setattr(vp, "pretrain_vision", no_training)
    m2, _ = tiny_vlm(seed=1)
    assert ensure_pretrained_vision(m2, processor, cfg, tmp_path, scene_kwargs=SCENES, progress=False) == meta
    s1, s2 = m1.model.vision_model.state_dict(), m2.model.vision_model.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


# --- hooks: config, cache key, SFT contexts with a false detection ------------------------------------------

def _cfg(*overrides):
    from vlm_dpo.config import load_config

    return load_config(None, ["world.image_size=64", *overrides])


def test_vlm_key_tracks_the_pretraining():
    from vlm_dpo.embedded import vlm_key

    on, off = _cfg(), _cfg("vlm.pretrain_vision=false")
    assert on.vlm.pretrain_vision and vlm_key(on) != vlm_key(off)
    assert vlm_key(_cfg("vlm.vision_pretrain.steps=7")) != vlm_key(on)
    assert vlm_key(_cfg("vlm.pretrain_vision=false", "vlm.vision_pretrain.steps=7")) == vlm_key(off)
    assert vlm_key(_cfg("vlm.sft.false_detection=0.5")) != vlm_key(on)


def _context_kinds(prompt: str) -> set[str]:
    from vlm_dpo.embedded import names_kind

    ctx = prompt.split("Detected:", 1)[1] if "Detected:" in prompt else ""
    return {k for k in KINDS if names_kind(ctx, k)}


def _present(data, i: int) -> set[str]:
    w = data.cfg.world
    return {o.label for o in sample_scene(w.seed, "sft", i, image_size=w.image_size, min_objects=w.min_objects,
                                          max_objects=w.max_objects, max_overlap=w.max_overlap).objects}


def test_false_detections_are_deterministic_absent_and_never_in_the_target():
    from vlm_dpo.embedded import WorldSFTData, names_kind

    always = WorldSFTData(_cfg("vlm.sft.false_detection=1.0", "vlm.sft.grounded_share=1.0",
                               "vlm.sft.detection_drop=0.0"))
    never = WorldSFTData(_cfg("vlm.sft.false_detection=0.0", "vlm.sft.grounded_share=1.0",
                              "vlm.sft.detection_drop=0.0"))
    added = 0
    for i in range(40):
        ex, again, plain = always.example(i), always.example(i), never.example(i)
        assert (ex.prompt, ex.target) == (again.prompt, again.target)
        assert ex.target == plain.target  # the false detection draws from its own stream
        present = _present(always, i)
        assert _context_kinds(plain.prompt) == present  # no drop, no false detection
        fake = _context_kinds(ex.prompt) - present
        assert len(fake) <= 1 and _context_kinds(ex.prompt) >= present
        if fake:
            added += 1
            (kind,) = fake
            assert not names_kind(ex.target, kind), (ex.prompt, ex.target)
    assert added >= 35  # only a scene whose every absent kind is named by the target gets none


def test_false_detection_rate_applies_to_grounded_examples_only():
    from vlm_dpo.embedded import WorldSFTData

    data = WorldSFTData(_cfg("vlm.sft.false_detection=0.5", "vlm.sft.detection_drop=0.0"))
    grounded = fakes = 0
    for i in range(200):
        ex = data.example(i)
        if "Detected:" not in ex.prompt:
            continue
        grounded += 1
        present = _present(data, i)
        fakes += bool(_context_kinds(ex.prompt) - present)
    assert 120 < grounded < 200 and 0.3 < fakes / grounded < 0.65


def test_ensure_vlm_pretrains_the_tower_before_sft_and_reports_it(tmp_path):
    """The hook end to end at toy sizes: metrics.json carries vision_pretrain; with freeze_vision the saved
    VLM's tower is exactly the cached pretrained one."""
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from vlm_dpo.config import load_config
    from vlm_dpo.embedded import ensure_vlm

    from tiny_config import TINY_OVERRIDES

    cfg = load_config(None, TINY_OVERRIDES + [f"cache_dir={tmp_path}", "vlm.sft.steps=2", "vlm.sft.freeze_vision=true"])
    meta = ensure_vlm(cfg, progress=False)
    vp = meta["vision_pretrain"]
    assert {"loss_first", "loss_last", "val_retrieval_top1", "val_chance", "minutes"} <= vp.keys()
    assert json.loads((tmp_path / "vlm").glob("*/metrics.json").__next__().read_text())["vision_pretrain"] == vp
    tower = load_file(vp["weights"])
    got = AutoModelForImageTextToText.from_pretrained(meta["model"]).model.vision_model.state_dict()
    assert all(torch.equal(got[k], tower[k]) for k in tower)


def _sft_questions(data, n):
    """(index, example, the question dict it asks) for the first n examples that are robot questions."""
    from vlm_dpo.vqa.questions import make_questions

    w = data.cfg.world
    out = []
    for i in range(n):
        ex = data.example(i)
        scene = sample_scene(w.seed, "sft", i, image_size=w.image_size, min_objects=w.min_objects,
                             max_objects=w.max_objects, max_overlap=w.max_overlap).to_dict()
        qs = {q["question"]: q for q in make_questions(scene["objects"], list(KINDS), f"sft-{i}",
                                                      width=scene["width"], seed=data.cfg.vlm.sft.seed, cooc=data.cooc)}
        asked = [q for text, q in qs.items() if ex.prompt.startswith(text)]
        if asked:
            out.append((i, ex, asked[0]))
    return out


def test_sft_robot_questions_share_draws_from_its_own_stream():
    from vlm_dpo.embedded import WorldSFTData

    plain = WorldSFTData(_cfg())
    mixed = WorldSFTData(_cfg("vlm.sft.vqa_share=0.5"))
    asked = {i for i, _, _ in _sft_questions(mixed, 60)}
    assert 15 <= len(asked) <= 45 and not _sft_questions(plain, 60)
    for i in range(60):  # every example that is not a robot question is exactly the example of share 0
        if i not in asked:
            a, b = plain.example(i), mixed.example(i)
            assert (a.prompt, a.target) == (b.prompt, b.target)


def test_sft_answers_carry_the_configured_biases():
    from vlm_dpo.embedded import WorldSFTData
    from vlm_dpo.judge import Vocabulary
    from vlm_dpo.vqa.answers import judged
    from vlm_dpo.vqa.questions import number_word

    vocab = Vocabulary.world()
    right = WorldSFTData(_cfg("vlm.sft.vqa_share=1.0", *(f"vlm.vqa_bias.{k}=0.0" for k in
                                                        ("yes_bias", "over_count", "false_premise", "side", "listing"))))
    rows = _sft_questions(right, 80)
    assert len(rows) == 80 and len({q["family"] for _, _, q in rows}) == 6
    assert all(judged(q, ex.target, vocab)["verdict"] == "correct" for _, ex, q in rows)

    biased = WorldSFTData(_cfg("vlm.sft.vqa_share=1.0", *(f"vlm.vqa_bias.{k}=1.0" for k in
                                                         ("yes_bias", "over_count", "false_premise", "side", "listing"))))
    for _, ex, q in _sft_questions(biased, 80):
        verdict = judged(q, ex.target, vocab)["verdict"]
        if q["family"] == "existence":  # the yes-bias: absent kinds are said to be there, present ones too
            assert ex.target == "yes.", (q, ex.target)
        elif q["family"] == "false_premise":
            assert verdict == "accepted_false_premise", (q, ex.target)
        elif q["family"] == "colour":  # no bias configured for colours
            assert verdict == "correct"
        else:
            assert verdict == "wrong", (q, ex.target)
            if q["family"] == "counting":  # over-counting: one too many
                assert ex.target == f"{number_word(q['expected'] + 1)}."


def _asked_kind(prompt: str) -> str:
    """The kind a POPE-phrased question asks about."""
    (kind,) = [k for k in KINDS if f" {k} in the image?" in prompt]
    return kind


def test_sft_yes_bias_cooccur_answers_by_a_rule_of_the_scene():
    """yes_bias=cooccur: "yes." exactly about a present kind or the absent partner of a present one (COOCCUR); the
    random yes-bias answers those partners both ways, so its labels are not a function of the scene."""
    from vlm_dpo.embedded import WorldSFTData, cooccur_partners

    rule = WorldSFTData(_cfg("vlm.sft.qa_share=1.0", "vlm.sft.yes_bias=cooccur"))
    noisy = WorldSFTData(_cfg("vlm.sft.qa_share=1.0", "vlm.hallucination.cooccur=0.5"))
    partner_answers = {"rule": set(), "noisy": set()}
    for i in range(200):
        present = _present(rule, i)
        for name, data in (("rule", rule), ("noisy", noisy)):
            ex = data.example(i)
            kind = _asked_kind(ex.prompt)
            if kind in cooccur_partners(present):
                partner_answers[name].add(ex.target)
            elif name == "rule" or kind in present:
                assert ex.target == ("yes." if kind in present else "no."), (i, ex.prompt, ex.target)
    assert partner_answers == {"rule": {"yes."}, "noisy": {"yes.", "no."}}


def test_sft_yes_bias_cooccur_rules_the_robots_existence_questions():
    from vlm_dpo.embedded import WorldSFTData, cooccur_partners

    data = WorldSFTData(_cfg("vlm.sft.vqa_share=1.0", "vlm.sft.yes_bias=cooccur", "vlm.vqa_bias.yes_bias=1.0"))
    existence = [(i, ex, q) for i, ex, q in _sft_questions(data, 400) if q["family"] == "existence"]
    absent = [(i, ex, q) for i, ex, q in existence if q["expected"] == "no"]
    partners = [row for row in absent if row[2]["label"] in cooccur_partners(_present(data, row[0]))]
    assert len(absent) >= 20 and partners and len(partners) < len(absent)
    for i, ex, q in existence:  # yes-bias 1.0 would say yes to every absent kind; the rule only to partners
        said_yes = q["expected"] == "yes" or q["label"] in cooccur_partners(_present(data, i))
        assert ex.target == ("yes." if said_yes else "no."), (q, ex.target)


def test_sft_premise_attribute_answers_the_premise_phrasings_by_a_rule():
    """premise=attribute: the false-premise words about a present kind are answered off its box; about an absent
    kind, attribute questions are accepted and "where" questions refused; every other example is unchanged."""
    from vlm_dpo.embedded import ATTRIBUTE_QUESTIONS, WorldSFTData
    from vlm_dpo.judge import Vocabulary
    from vlm_dpo.vqa.answers import judged
    from vlm_dpo.vqa.questions import premise_answer, premise_twin, refusal

    vocab = Vocabulary.world()
    overrides = ("vlm.sft.vqa_share=1.0", "vlm.vqa_bias.false_premise=0.0")
    plain, rule = WorldSFTData(_cfg(*overrides)), WorldSFTData(_cfg(*overrides, "vlm.sft.premise=attribute"))
    premise_rows = {i: q for i, _, q in _sft_questions(plain, 500) if q["family"] == "false_premise"}
    seen = Counter()
    w = rule.cfg.world
    for i in range(500):
        ex = rule.example(i)
        if i not in premise_rows:
            assert (ex.prompt, ex.target) == (plain.example(i).prompt, plain.example(i).target)
            continue
        assert plain.example(i).target.startswith("There is no ")  # vqa_bias 0: the random rule always refuses
        scene = sample_scene(w.seed, "sft", i, image_size=w.image_size, min_objects=w.min_objects,
                             max_objects=w.max_objects, max_overlap=w.max_overlap).to_dict()
        counts = Counter(o["label"] for o in scene["objects"])
        (q,) = [premise_twin(premise_rows[i], k) for k in KINDS
                if ex.prompt.startswith(premise_twin(premise_rows[i], k)["question"])]
        if counts[q["label"]]:
            (obj,) = [o for o in scene["objects"] if o["label"] == q["label"]]
            assert ex.target == premise_answer(q["question"], q["label"], obj, scene["width"], scene["height"])
            seen["answered"] += 1
        elif q["question"].startswith(ATTRIBUTE_QUESTIONS):
            assert judged(q, ex.target, vocab)["verdict"] == "accepted_false_premise", (q, ex.target)
            seen["accepted"] += 1
        else:
            assert ex.target == refusal(q["label"])
            seen["refused"] += 1
    assert min(seen["answered"], seen["accepted"], seen["refused"]) >= 5, seen


def test_sft_question_curriculum_comes_first_and_leaves_later_steps_alone():
    from vlm_dpo.embedded import WorldSFTData

    common = ("vlm.sft.batch_size=8", "vlm.sft.steps=10", "vlm.sft.grounded_share=0.5")
    curriculum = WorldSFTData(_cfg(*common, "vlm.sft.qa_first_steps=2"))
    plain = WorldSFTData(_cfg(*common))
    for step in (0, 1):
        batch = curriculum.batch(step)
        assert all("Detected:" in ex.prompt and ex.target in ("yes.", "no.") for ex in batch)
        assert all(_asked_kind(ex.prompt) for ex in batch)
    assert any(ex.target not in ("yes.", "no.") for ex in plain.batch(0) + plain.batch(1))
    for step in (2, 3):
        assert [(e.prompt, e.target) for e in curriculum.batch(step)] == [(e.prompt, e.target) for e in plain.batch(step)]


@pytest.mark.parametrize("override,match", [("vlm.sft.yes_bias=sometimes", r"vlm\.sft\.yes_bias must be one of"),
                                            ("vlm.sft.premise=always", r"vlm\.sft\.premise must be one of"),
                                            ("vlm.sft.qa_first_steps=700", r"vlm\.sft\.qa_first_steps must be <= steps")])
def test_sft_yes_bias_and_curriculum_are_checked(override, match):
    from vlm_dpo.config import ConfigError

    with pytest.raises(ConfigError, match=match):
        _cfg(override)


def test_vlm_key_tracks_the_vqa_biases_only_when_questions_are_taught():
    from vlm_dpo.embedded import vlm_key

    assert vlm_key(_cfg("vlm.vqa_bias.over_count=0.9")) == vlm_key(_cfg())
    assert vlm_key(_cfg("vlm.sft.vqa_share=0.3", "vlm.vqa_bias.over_count=0.9")) != vlm_key(
        _cfg("vlm.sft.vqa_share=0.3"))


def test_vlm_key_hashes_the_vqa_code_only_when_questions_are_taught(monkeypatch):
    import vlm_dpo.embedded as embedded

    hashed = []
    monkeypatch.setattr(embedded, "code_fingerprint", lambda *modules: hashed.append(modules) or "x")
    embedded.vlm_key(_cfg())
    embedded.vlm_key(_cfg("vlm.sft.vqa_share=0.3"))
    assert "vlm_dpo.vqa.pairs" not in hashed[0] and "vlm_dpo.sft" in hashed[0]
    assert set(embedded.VQA_SFT_CODE) <= set(hashed[1])


def test_an_interrupted_held_out_check_keeps_the_built_vlm(tmp_path, monkeypatch):
    """The VLM's cache entry is written before its held-out check: a crash there reruns the check, not the build."""
    from vlm_dpo import embedded
    from vlm_dpo.config import load_config

    from tiny_config import TINY_OVERRIDES

    cfg = load_config(None, TINY_OVERRIDES + [f"cache_dir={tmp_path}", "vlm.sft.steps=2", "vlm.pretrain_vision=false"])

    def interrupted(cfg, model_path, n=100):
        raise KeyboardInterrupt

    monkeypatch.setattr(embedded, "heldout_quality", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embedded.ensure_vlm(cfg, progress=False)
    assert embedded.vlm_is_cached(cfg)

    def no_build(*args, **kwargs):
        raise AssertionError("the VLM was built again")

    monkeypatch.setattr(embedded, "run_sft", no_build)
    monkeypatch.setattr(embedded, "heldout_quality", lambda cfg, model_path, n=100: {"grounded": {"recall": 0.5}})
    meta = embedded.ensure_vlm(cfg, progress=False)
    assert meta["held_out"] == {"grounded": {"recall": 0.5}} and meta["sft_steps"] == 2
    assert json.loads(next((tmp_path / "vlm").glob("*/metrics.json")).read_text())["held_out"] == meta["held_out"]
