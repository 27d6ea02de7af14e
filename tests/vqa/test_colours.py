"""vlm_dpo/vqa/colours.py: object colours read off detection boxes, checked against the world's ground truth, and
the palette files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from vlm_dpo.vqa.colours import box_colour, detection_colours, load_palette, world_palette
from vlm_dpo.world import render_scene, sample_scene

PALETTE = world_palette()


def test_world_objects_are_read_in_their_colour():
    read = Counter()
    for i in range(120):
        s = sample_scene(0, "val", i)
        boxes = [{"label": o.label, "box": list(o.box)} for o in s.objects]
        for o, colour in zip(s.objects, detection_colours(render_scene(s), boxes, PALETTE), strict=True):
            read["unread" if colour is None else colour == o.color] += 1
    assert read[False] == 0, read  # never a wrong colour
    assert read[True] >= 0.95 * sum(read.values()), read


def test_no_colour_without_a_clear_winner():
    table = np.full((40, 40, 3), (150, 110, 75), dtype=np.uint8)
    assert box_colour(table, [0, 0, 40, 40], PALETTE) is None  # no palette colour: no answer
    half = table.copy()
    half[:, :20] = PALETTE["red"]
    half[:, 20:] = PALETTE["blue"]
    assert box_colour(half, [0, 0, 40, 40], PALETTE) is None  # a tie is no answer
    half[:, 20:] = PALETTE["blue"][0], PALETTE["blue"][1], 255  # near blue still votes blue: still a tie
    assert box_colour(half, [0, 0, 40, 40], PALETTE) is None
    assert box_colour(half, [0, 0, 14, 40], PALETTE) == "red"
    assert box_colour(half, [5, 5, 5, 30], PALETTE) is None  # an empty box


def test_a_box_mostly_covered_by_another_is_not_read():
    img = np.full((40, 40, 3), 128, dtype=np.uint8)
    img[0:20, 0:20] = PALETTE["green"]
    dets = [{"box": [0, 0, 20, 20]}, {"box": [2, 2, 20, 20]}]  # the second covers 81% of the first, and vice versa
    assert detection_colours(Image.fromarray(img), dets, PALETTE) == [None, None]
    assert detection_colours(Image.fromarray(img), dets[:1], PALETTE) == ["green"]


def test_palette_files(tmp_path):
    good = tmp_path / "palette.yaml"
    good.write_text("red: [200, 30, 30]\nGrey: [128, 128, 128]\n")
    assert load_palette(str(good)) == {"red": (200, 30, 30), "grey": (128, 128, 128)}
    (tmp_path / "p.json").write_text(json.dumps({"red": [1, 2, 3]}))
    assert load_palette(str(tmp_path / "p.json")) == {"red": (1, 2, 3)}
    assert load_palette("world") == PALETTE
    for text, problem in [("sparkly: [1, 2, 3]\n", "not a colour word"), ("red: [1, 2]\n", "must be \\[r, g, b\\]"),
                          ("red: [1, 2, 300]\n", "must be \\[r, g, b\\]"), ("- red\n", "a mapping"),
                          ("red: [1,\n", "not valid YAML"), ("", "is empty")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        with pytest.raises(ValueError, match=problem) as e:
            load_palette(str(bad))
        assert str(bad) in str(e.value)
    with pytest.raises(ValueError, match="nope.yaml"):
        load_palette(str(tmp_path / "nope.yaml"))
