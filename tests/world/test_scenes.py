import numpy as np

from vlm_dpo.world import COLORS, KINDS, grid_position, render_scene, sample_scene
from vlm_dpo.world.captions import CorruptionRates, corrupted_caption, reference_caption


def test_scene_is_deterministic_and_pixels_too():
    a, b = sample_scene(3, "train", 7), sample_scene(3, "train", 7)
    assert a.to_dict() == b.to_dict()
    assert render_scene(a).tobytes() == render_scene(b).tobytes()
    assert sample_scene(4, "train", 7).to_dict() != a.to_dict()


def test_splits_draw_different_scenes():
    train = [sample_scene(0, "train", i).to_dict()["objects"] for i in range(50)]
    test = [sample_scene(0, "test", i).to_dict()["objects"] for i in range(50)]
    assert not any(t in train for t in test)


def test_ground_truth_is_consistent():
    seen_kinds, counts = set(), []
    for i in range(300):
        s = sample_scene(0, "train", i, image_size=128, min_objects=1, max_objects=6)
        assert 1 <= len(s.objects) <= 6
        for o in s.objects:
            assert o.label in KINDS and o.color in COLORS
            x1, y1, x2, y2 = o.box
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 128
            seen_kinds.add(o.label)
        counts.append(max(sum(o.label == k for o in s.objects) for k in KINDS))
    assert seen_kinds == set(KINDS)
    assert sum(c >= 2 for c in counts) > 60  # repeats are common, so counts matter


def test_objects_are_drawn_where_their_boxes_are():
    s = sample_scene(1, "val", 2)
    img = render_scene(s)
    for o in s.objects:
        cx, cy = int((o.box[0] + o.box[2]) / 2), int((o.box[1] + o.box[3]) / 2)
        region = np.asarray(img.crop((cx - 3, cy - 3, cx + 3, cy + 3))).reshape(-1, 3)
        # the centre of an object is not bare table (objects may be occluded, but by another object)
        assert (region != np.array(s.table)).any(axis=1).any()


def test_grid_position_words():
    assert grid_position([0, 0, 10, 10], 90, 90) == "top left"
    assert grid_position([40, 40, 50, 50], 90, 90) == "center"
    assert grid_position([80, 40, 90, 50], 90, 90) == "right"
    assert grid_position([40, 80, 50, 90], 90, 90) == "bottom"


def test_reference_caption_counts_colours_and_sides():
    objs = [
        {"label": "cup", "color": "red", "box": [0, 0, 10, 10]},
        {"label": "cup", "color": "red", "box": [12, 0, 22, 10]},
        {"label": "ball", "color": "blue", "box": [100, 0, 110, 10]},
    ]
    assert reference_caption(objs, 128) == "two red cups on the left and a blue ball on the right."
    objs[1]["color"] = "green"
    objs.append({"label": "apple", "color": "red", "box": [60, 60, 70, 70]})
    assert reference_caption(objs, 128) == "two cups, a red apple and a blue ball."


def test_corrupted_captions_are_systematic():
    import random

    objs = [{"label": "bowl", "color": "red", "box": [0, 0, 10, 10]}]
    rng = random.Random(0)
    caps = [corrupted_caption(objs, 128, rng, CorruptionRates(cooccur=1.0, count=0, vague=0)) for _ in range(5)]
    assert all(c == ("a red bowl and an apple.", ["cooccur"]) for c in caps)
    cap, applied = corrupted_caption(objs, 128, rng, CorruptionRates(cooccur=0, count=0, vague=0))
    assert (cap, applied) == ("a red bowl.", [])
