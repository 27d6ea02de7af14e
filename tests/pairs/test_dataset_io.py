"""The pair record and dataset (vlm_dpo.pairs.dataset), imports/exports and annotation judgements (vlm_dpo.pairs.io)."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter

import pytest
from PIL import Image

from vlm_dpo.pairs.dataset import (
    COLUMNS, Rejections, dedupe, load_pairs, make_pair, pair_id, save_pairs, split_by_image,
    statistics, validate_pair,
)
from vlm_dpo.pairs.io import (
    ImportError_, export_csv, export_jsonl, export_trl, import_pairs, pair_from_row, pairs_from_judgements,
)


def _pairs(root_scenes):
    """Pairs of every kind of provenance over the rendered scenes: nested dicts, None, floats, boxes; captions
    and a question pair (task "vqa")."""
    _, scenes = root_scenes
    a, b, c, d = [f"images/{s.image_id}.png" for s in scenes]
    ia, ib, ic, id_ = (s.image_id for s in scenes)
    return [
        make_pair(image_id=ia, image=a, prompt="Describe the objects on the table. Detected: 2 cups (left).",
                  grounding="Detected: 2 cups (left).", chosen="two red cups.", rejected="three red cups.",
                  source="synthetic", kind="count",
                  scores={"chosen": {"score": 1.0, "hallucinated": [], "perfect": True},
                          "rejected": {"score": 0.5, "hallucinated": [], "perfect": False}},
                  margin=0.5, boxes=[[1.5, 2.25, 30.0, 40.125], [33.0, 2.0, 60.0, 41.0]]),
        make_pair(image_id=ia, image=a, prompt="Describe the objects on the table.", chosen="two red cups.",
                  rejected="some objects on a table.", source="mined", kind="mined",
                  scores={"chosen": {"score": 1.0}, "rejected": {"score": -0.25, "vague": 1}}, margin=1.25,
                  generator={"model": "tiny", "settings": {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 32}},
                  boxes=[[1.5, 2.25, 30.0, 40.125]]),
        make_pair(image_id=ib, image=b, prompt="Describe the objects on the table.", chosen="a blue ball.",
                  rejected="a blue ball and a cup.", source="human", kind="human", annotator="ann-7", split="val"),
        make_pair(image_id=ic, image=c, prompt="Describe the objects on the table.", chosen="an apple, \"quoted\".",
                  rejected="an apple, a bowl\nand, a comma.", source="context", kind="inject_false",
                  grounding="Detected: 1 apple (center), 1 bowl (left).", margin=0.333333333333, boxes=[]),
        make_pair(image_id=id_, image=d, prompt="How many cups are on the table? Detected: 2 cups (left).",
                  grounding="Detected: 2 cups (left).", chosen="two.", rejected="three.", source="human",
                  kind="human", annotator="ann-7", task="vqa"),
    ]


# ----------------------------------------------------------------------------------------------------- dataset


def test_make_pair_and_pair_id():
    p = make_pair(image_id=3, image="x.png", prompt="P", chosen=" a cup. ", rejected="a ball.\n", source="mined",
                  kind="mined")
    assert p["chosen"] == "a cup." and p["rejected"] == "a ball." and p["image_id"] == "3"
    assert set(p) == set(COLUMNS) and p["scores"] == {} and p["split"] == "train"
    assert p["pair_id"] == pair_id("x.png", "P", "a cup.", "a ball.") == pair_id("x.png", "P", " a cup.", "a ball.")
    others = {pair_id("y.png", "P", "a cup.", "a ball."), pair_id("x.png", "Q", "a cup.", "a ball."),
              pair_id("x.png", "P", "a ball.", "a cup.")}
    assert p["pair_id"] not in others and len(others) == 3
    with pytest.raises(ValueError, match="unknown pair source"):
        make_pair(image_id="1", image="x.png", prompt="P", chosen="a", rejected="b", source="gpt", kind="k")


def test_dedupe_keeps_one_of_each_pair_human_first():
    p1 = make_pair(image_id="1", image="x.png", prompt="P", chosen="a", rejected="b", source="mined", kind="mined")
    p2 = make_pair(image_id="1", image="x.png", prompt="P", chosen="a", rejected="c", source="mined", kind="mined")
    p1_again = make_pair(image_id="1", image="x.png", prompt="P", chosen="a ", rejected="b", source="human",
                         kind="human")
    # issue 16: the human judgement of the mined pair p1 wins (in p1's place); same-source repeats are dropped
    rejections, merged = Rejections(), Counter()
    assert dedupe([p1, p2, p1_again, p2], rejections, merged) == [p1_again, p2]
    assert rejections.counts == {"duplicate": 1} and merged == {"human_over_mined": 1}
    mined_again = dict(p1, source="synthetic", kind="synthetic")
    merged = Counter()
    assert dedupe([p1_again, p1, mined_again], Rejections(), merged) == [p1_again]  # human first: still human
    assert merged == {"human_over_mined": 1, "human_over_synthetic": 1}
    merged = Counter()
    assert dedupe([mined_again, p1, p2], Rejections(), merged) == [mined_again, p2]  # no human: the first stays
    assert merged == {"synthetic_over_mined": 1}
    assert dedupe([p1, p2, p1, p2]) == [p1, p2]
    assert dedupe([]) == []


def test_split_by_image_never_splits_an_image():
    pairs = [make_pair(image_id=f"img{i}", image=f"img{i}.png", prompt="P", chosen=f"c{j}", rejected=f"r{j}",
                       source="mined", kind="mined") for i in range(20) for j in range(i % 3 + 1)]
    out = split_by_image(pairs, 0.25, seed=1)
    assert [p["pair_id"] for p in out] == [p["pair_id"] for p in pairs]  # same pairs, same order
    splits = {}
    for p in out:
        splits.setdefault(p["image_id"], set()).add(p["split"])
    assert all(len(s) == 1 for s in splits.values())
    val = sorted(i for i, s in splits.items() if s == {"val"})
    assert len(val) == 5  # round(20 * 0.25) images, however many pairs they have
    assert split_by_image(pairs, 0.25, seed=1) == out  # deterministic
    assert sorted(i for i in {p["image_id"] for p in split_by_image(pairs, 0.25, seed=2) if p["split"] == "val"}) != val
    assert all(p["split"] == "train" for p in split_by_image(pairs, 0.0))
    assert all(p["split"] == "val" for p in split_by_image(pairs, 1.0))
    # an image's pairs stay together whatever else is in the list
    sub = split_by_image([p for p in pairs if p["image_id"] in ("img2", "img5", "img8")], 0.34)
    assert len({p["image_id"] for p in sub if p["split"] == "val"}) == 1


def test_statistics_on_a_hand_made_list():
    def p(image, source, kind, split, margin, chosen, rejected):
        return make_pair(image_id=image, image=f"{image}.png", prompt="P", chosen=chosen, rejected=rejected,
                         source=source, kind=kind, split=split, margin=margin)

    pairs = [
        p("a", "mined", "mined", "train", 1.0, "a b c", "a b"),  # length diff +1
        p("a", "synthetic", "count", "train", 0.5, "x", "x y z"),  # -2
        p("b", "human", "human", "val", None, "p q", "r s"),  # 0
        p("c", "mined", "mined", "val", 0.25, "one two three four", "one"),  # +3
    ]
    s = statistics(pairs)
    assert s["pairs"] == 4 and s["images"] == 3
    assert s["by_source"] == {"mined": 2, "synthetic": 1, "human": 1}
    assert s["by_kind"] == {"mined": 2, "count": 1, "human": 1}
    assert s["by_split"] == {"train": 2, "val": 2}
    assert s["margin"] == pytest.approx({"mean": 1.75 / 3, "min": 0.25, "median": 0.5, "max": 1.0})
    assert s["length_diff_words"] == {"mean": 0.5, "min": -2, "median": 1, "max": 3}
    assert s["chosen_shorter_share"] == 0.25
    empty = statistics([])
    assert empty["pairs"] == 0 and empty["margin"] is None and empty["chosen_shorter_share"] is None
    assert statistics(pairs[2:3])["margin"] is None  # human pairs carry no margin


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_save_load_round_trip(image_root, tmp_path, suffix):
    pairs = _pairs(image_root)
    path = save_pairs(pairs, tmp_path / f"pairs{suffix}")
    assert path.exists() and not path.with_name(path.name + ".tmp").exists()
    back = load_pairs(path)
    assert back == pairs
    assert back[0]["scores"]["chosen"]["hallucinated"] == [] and back[1]["generator"]["settings"]["top_p"] == 0.9
    assert back[0]["boxes"][0] == [1.5, 2.25, 30.0, 40.125] and back[2]["boxes"] is None
    assert back[2]["margin"] is None and back[3]["margin"] == 0.333333333333
    # the parquet file is a plain `datasets` table with our columns
    if suffix == ".parquet":
        import datasets

        ds = datasets.Dataset.from_parquet(str(path))
        assert ds.column_names == list(COLUMNS) and len(ds) == len(pairs)


def test_load_pairs_refuses_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_pairs(tmp_path / "nope.parquet")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no pairs"):
        load_pairs(tmp_path / "empty.jsonl")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ValueError, match="bad.parquet"):
        load_pairs(tmp_path / "bad.parquet")
    p = make_pair(image_id="1", image="x.png", prompt="P", chosen="a", rejected="b", source="mined", kind="mined")
    save_pairs([p, p | {"prompt": ""}], tmp_path / "holes.jsonl")
    with pytest.raises(ValueError, match=r"pair 1 .*prompt"):
        load_pairs(tmp_path / "holes.jsonl")


def test_validate_pair_reasons(image_root):
    root, scenes = image_root
    good = make_pair(image_id="a", image=f"images/{scenes[0].image_id}.png", prompt="P", chosen="a cup.",
                     rejected="a ball.", source="mined", kind="mined")
    cases = {
        "empty_caption": good | {"rejected": "  "},
        "chosen_equals_rejected": good | {"rejected": " a cup. "},
        "empty_prompt": good | {"prompt": " "},
        "image_outside_root": good | {"image": "../x.png"},
        "missing_image": good | {"image": "images/none.png"},
    }
    rej = Rejections()
    assert validate_pair(good, "w0", rej, root)
    for i, (reason, p) in enumerate(cases.items(), 1):
        assert not validate_pair(p, f"w{i}", rej, root), reason
    assert dict(rej.counts) == {r: 1 for r in cases}
    assert [e["reason"] for e in rej.examples] == list(cases)
    assert rej.examples[0] == {"reason": "empty_caption", "where": "w1", "row": cases["empty_caption"]}
    # the root itself or a folder is no image
    rej = Rejections()
    assert not validate_pair(good | {"image": ""}, "w", rej, root)
    assert not validate_pair(good | {"image": "images"}, "w", rej, root)
    assert rej.counts == {"missing_image": 2}
    # without a root the image is not checked
    assert validate_pair(good | {"image": "images/none.png"}, "w", Rejections(), None)


def test_rejections_keep_only_the_first_rows():
    rej = Rejections(keep=2)
    for i in range(5):
        rej.add("r", f"w{i}", {"i": i})
    d = rej.to_dict()
    assert d["skipped"] == {"r": 5} and [e["where"] for e in d["first"]] == ["w0", "w1"]


# ----------------------------------------------------------------------------------------------- import/export


def test_export_trl_round_trip_and_columns(image_root, tmp_path):
    import datasets

    root, scenes = image_root
    pairs = _pairs(image_root)
    ds = export_trl(pairs, root, tmp_path / "trl")
    loaded = datasets.load_from_disk(str(tmp_path / "trl"))
    assert len(loaded) == len(pairs)
    assert loaded.column_names[:4] == ["images", "prompt", "chosen", "rejected"]
    # TRL reads a column named "image" as the image itself: the export must not carry one
    assert "image" not in loaded.column_names
    row = loaded[0]
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None},
                                                          {"type": "text", "text": pairs[0]["prompt"]}]}]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "two red cups."}]}]
    assert row["rejected"] == [{"role": "assistant", "content": [{"type": "text", "text": "three red cups."}]}]
    assert len(row["images"]) == 1 and isinstance(row["images"][0], Image.Image)
    assert row["images"][0].convert("RGB").tobytes() == Image.open(root / pairs[0]["image"]).convert("RGB").tobytes()
    assert ds.column_names == loaded.column_names
    # round trip: every field of every pair
    assert import_pairs(tmp_path / "trl", root) == pairs
    # the images are embedded: the dataset does not need the original files
    for s in scenes:
        (root / "images" / f"{s.image_id}.png").rename(tmp_path / f"{s.image_id}.png")
    again = datasets.load_from_disk(str(tmp_path / "trl"))
    assert again[3]["images"][0].size == (64, 64)
    assert import_pairs(tmp_path / "trl", root, check_images=False) == pairs


def test_trl_task_round_trip_and_rows_without_it(image_root, tmp_path):
    """Issue 17: the TRL export keeps each pair's task; an export without the column (older, or TRL's own rows)
    imports as captions."""
    root, _ = image_root
    pairs = _pairs(image_root)
    ds = export_trl(pairs, root, tmp_path / "trl")
    assert ds["task"] == ["caption"] * 4 + ["vqa"]
    assert [p["task"] for p in import_pairs(tmp_path / "trl", root)] == ["caption"] * 4 + ["vqa"]
    ds.remove_columns("task").save_to_disk(str(tmp_path / "old"))
    assert import_pairs(tmp_path / "old", root) == [p | {"task": "caption"} for p in pairs]


def test_export_trl_refuses_a_missing_image(image_root, tmp_path):
    root, _ = image_root
    p = _pairs(image_root)[0] | {"image": "images/gone.png"}
    with pytest.raises(ValueError, match=f"pair {p['pair_id']}.*gone.png"):
        export_trl([p], root, tmp_path / "trl")


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_jsonl_csv_parquet_round_trip(image_root, tmp_path, fmt):
    root, _ = image_root
    pairs = _pairs(image_root)
    path = tmp_path / f"pairs.{fmt}"
    {"jsonl": export_jsonl, "csv": export_csv, "parquet": save_pairs}[fmt](pairs, path)
    rej = Rejections()
    assert import_pairs(path, root, rejections=rej) == pairs
    assert not rej.counts


def test_import_plain_trl_rows_with_pixels(image_root, tmp_path):
    """TRL's plain (non-conversational) rows with PIL images in a `datasets` folder: pixels stored once."""
    import datasets

    root, scenes = image_root
    imgs = [Image.open(root / "images" / f"{s.image_id}.png").convert("RGB") for s in scenes[:2]]
    ds = datasets.Dataset.from_dict(
        {"images": [[imgs[0]], [imgs[0]], [imgs[1]]], "prompt": ["Describe.", "Describe.", "What is there?"],
         "chosen": ["a red cup.", "a cup.", "a ball."], "rejected": ["a blue cup.", "a bowl.", "a ball and a cup."]},
        features=datasets.Features({"images": datasets.List(datasets.Image()), "prompt": datasets.Value("string"),
                                    "chosen": datasets.Value("string"), "rejected": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "plain"))
    got = import_pairs(tmp_path / "plain", root, annotator="ann-1")
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in got] == [
        ("Describe.", "a red cup.", "a blue cup."), ("Describe.", "a cup.", "a bowl."),
        ("What is there?", "a ball.", "a ball and a cup.")]
    stored = sorted((root / "imported").iterdir())
    assert len(stored) == 2  # one file per distinct image, however many rows use it
    assert got[0]["image"] == got[1]["image"] != got[2]["image"]
    for p in got:
        assert p["image"].startswith("imported/") and (root / p["image"]).is_file()
        assert p["source"] == "human" and p["kind"] == "human" and p["annotator"] == "ann-1"
        assert p["image_id"] == p["image"].rsplit("/", 1)[1].removesuffix(".png")
    assert Image.open(root / got[2]["image"]).convert("RGB").tobytes() == imgs[1].tobytes()
    # importing again writes nothing new and gives the same pairs
    assert import_pairs(tmp_path / "plain", root, annotator="ann-1") == got
    assert sorted((root / "imported").iterdir()) == stored


def test_pair_from_row_with_image_bytes_and_single_image(image_root):
    root, scenes = image_root
    img = Image.open(root / "images" / f"{scenes[0].image_id}.png").convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    base = {"prompt": "Describe.", "chosen": "a cup.", "rejected": "a ball."}
    from_bytes = pair_from_row(base | {"images": [{"bytes": buf.getvalue(), "path": None}]}, "row 1", root)
    from_pil = pair_from_row(base | {"image": img}, "row 2", root)  # TRL's single-image column
    assert from_bytes["image"] == from_pil["image"] and from_bytes["image"].startswith("imported/")
    assert len(list((root / "imported").iterdir())) == 1
    from_path = pair_from_row(base | {"images": ["images/x.png"]}, "row 3", root)
    assert from_path["image"] == "images/x.png" and from_path["image_id"] == "x"
    conv = pair_from_row({"images": ["a.png"],
                          "prompt": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Hi"}]}],
                          "chosen": [{"role": "assistant", "content": "a cup."}],
                          "rejected": [{"role": "assistant", "content": [{"type": "text", "text": "a ball."}]}]},
                         "row 4", root, source="mined")
    assert (conv["prompt"], conv["chosen"], conv["rejected"], conv["source"]) == \
        ("Be brief. Hi", "a cup.", "a ball.", "mined")
    with pytest.raises(ValueError, match="row 5: no image"):
        pair_from_row(base, "row 5", root)
    with pytest.raises(ValueError, match="row 6: missing column 'chosen'"):
        pair_from_row({"prompt": "P", "rejected": "r", "image": "a.png"}, "row 6", root)


# ------------------------------------------------------------------------------------------------- bad input


def test_bad_rows_are_skipped_and_counted_nothing_else_lost(image_root, tmp_path):
    root, scenes = image_root
    img = f"images/{scenes[0].image_id}.png"
    ok = {"image": img, "prompt": "Describe.", "chosen": "a cup.", "rejected": "a ball."}
    lines = [
        json.dumps(ok),  # 1
        json.dumps(ok | {"rejected": "a cup."}),  # 2 chosen == rejected
        json.dumps(ok | {"chosen": ""}),  # 3 empty caption
        json.dumps(ok | {"image": "images/missing.png"}),  # 4 missing image
        json.dumps(ok | {"image": "../x.png"}),  # 5 escapes the root
        '{"image": "a.png", "prompt": ',  # 6 malformed JSON
        "",  # blank lines are not rows
        json.dumps([1, 2]),  # 8 not an object
        json.dumps({k: v for k, v in ok.items() if k != "rejected"}),  # 9 missing column
        json.dumps(ok | {"prompt": ""}),  # 10 empty prompt
        json.dumps(ok | {"chosen": "two cups."}),  # 11
    ]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    rej = Rejections()
    got = import_pairs(tmp_path / "in.jsonl", root, rejections=rej)
    assert [p["chosen"] for p in got] == ["a cup.", "two cups."]
    assert dict(rej.counts) == {"chosen_equals_rejected": 1, "empty_caption": 1, "missing_image": 1,
                                "image_outside_root": 1, "malformed_row": 3, "empty_prompt": 1}
    first = [(e["reason"], e["where"].rsplit(":", 1)[1]) for e in rej.examples]
    assert first == [("chosen_equals_rejected", "2"), ("empty_caption", "3"), ("missing_image", "4"),
                     ("image_outside_root", "5"), ("malformed_row", "6")]
    assert rej.examples[0]["row"]["rejected"] == "a cup." and "not valid JSON" in rej.examples[4]["row"]
    assert str(tmp_path / "in.jsonl") in rej.examples[0]["where"]


def test_rows_with_wrong_types_are_counted_not_fatal(image_root, tmp_path):
    root, scenes = image_root
    ok = {"image": f"images/{scenes[0].image_id}.png", "prompt": "Describe.", "chosen": "a cup.", "rejected": "a ball."}
    no_image = {k: v for k, v in ok.items() if k != "image"}
    rows = [ok | {"margin": [1]}, ok | {"margin": "high"}, ok | {"image": 123}, no_image | {"images": [{"x": 1}]},
            ok | {"prompt": 5}, ok | {"chosen": ["a cup."]}, ok | {"source": "gpt"}, ok | {"scores": "{broken"},
            ok | {"margin": "0.5"}]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rej = Rejections(keep=20)
    got = import_pairs(tmp_path / "in.jsonl", root, rejections=rej)
    assert len(got) == 1 and got[0]["margin"] == 0.5
    assert rej.counts == {"malformed_row": len(rows) - 1}
    assert "margin [1] is not a number" in rej.examples[0]["row"]
    # bytes that are no image
    with pytest.raises(ValueError, match="row 1: image bytes are not an image"):
        pair_from_row(no_image | {"images": [{"bytes": b"not a png"}]}, "row 1", root)
    # a spreadsheet's CSV with a byte order mark
    (tmp_path / "bom.csv").write_text("\ufeffimage,prompt,chosen,rejected\n" + ",".join(ok.values()) + "\n",
                                      encoding="utf-8")
    assert [p["chosen"] for p in import_pairs(tmp_path / "bom.csv", root)] == ["a cup."]


def test_csv_row_missing_a_column(image_root, tmp_path):
    root, scenes = image_root
    img = f"images/{scenes[0].image_id}.png"
    with (tmp_path / "in.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image", "prompt", "chosen", "rejected"])
        w.writerow([img, "Describe.", "a cup.", "a ball."])
        w.writerow([img, "Describe.", "a cup."])  # short row: no rejected
        w.writerow([img, "", "a cup.", "a bowl."])  # empty prompt cell
        w.writerow([img, "Describe.", "two cups.", "a ball."])
    rej = Rejections()
    got = import_pairs(tmp_path / "in.csv", root, rejections=rej)
    assert [(p["chosen"], p["rejected"]) for p in got] == [("a cup.", "a ball."), ("two cups.", "a ball.")]
    assert dict(rej.counts) == {"malformed_row": 2}
    assert [e["where"].rsplit(":", 1)[1] for e in rej.examples] == ["3", "4"]  # CSV line numbers (header = 1)
    assert "missing column 'rejected'" in rej.examples[0]["row"]
    # a file without a needed column loses every row, each counted
    with (tmp_path / "nocol.csv").open("w", newline="") as f:
        csv.writer(f).writerows([["image", "prompt", "chosen"], [img, "P", "a cup."], [img, "P", "a ball."]])
    rej = Rejections()
    assert import_pairs(tmp_path / "nocol.csv", root, rejections=rej) == []
    assert rej.counts == {"malformed_row": 2}


def test_import_errors_name_the_file(tmp_path):
    with pytest.raises(ImportError_, match="nowhere.jsonl: pair file not found"):
        import_pairs(tmp_path / "nowhere.jsonl", tmp_path)
    (tmp_path / "pairs.txt").write_text("x")
    with pytest.raises(ImportError_, match="pairs.txt: unknown pair file type"):
        import_pairs(tmp_path / "pairs.txt", tmp_path)


# ---------------------------------------------------------------------------------------------- judgements


def test_task_survives_jsonl_csv_and_defaults_to_caption(image_root, tmp_path):
    root, _ = image_root
    pairs = _pairs(image_root)
    export_csv(pairs, tmp_path / "pairs.csv")
    assert [p["task"] for p in import_pairs(tmp_path / "pairs.csv", root)] == ["caption"] * 4 + ["vqa"]
    old = [{k: v for k, v in p.items() if k != "task"} for p in pairs]  # written before the column
    (tmp_path / "old.jsonl").write_text("".join(json.dumps(p) + "\n" for p in old))
    assert import_pairs(tmp_path / "old.jsonl", root) == [p | {"task": "caption"} for p in pairs]
    assert load_pairs(tmp_path / "old.jsonl") == [p | {"task": "caption"} for p in pairs]


def _judgement(jid, choice, edit=None, **kw):
    return {"judgement_id": jid, "annotator": "ann-2", "image_id": "img9", "image": "images/img9.png",
            "prompt": "Describe.", "grounding": None, "a": "a red cup.", "b": "a red cup and a bottle.",
            "choice": choice, "edit": edit, "time": "2025-01-01T00:00:00Z"} | kw


def test_pairs_from_judgements():
    js = [
        _judgement("j1", "a"),
        _judgement("j2", "b"),
        _judgement("j3", "tie"),
        _judgement("j4", "both_bad"),
        _judgement("j5", "both_bad", edit=" two red cups. "),
        _judgement("j6", "a", edit="a red cup on a table."),
        _judgement("j7", "b", edit="a red cup."),  # the edit repeats a: no pair of a with itself
        _judgement("j8", "maybe", edit="a red cup on a table."),
        _judgement("j9", None),
        _judgement("j10", "a", b=None),  # malformed: no second candidate
        _judgement("j11", "b", image_id=None),  # image id from the file name
    ]
    rej = Rejections()
    out = pairs_from_judgements(js, rej)
    got = [(p["chosen"], p["rejected"], p["kind"]) for p in out]
    a, b = "a red cup.", "a red cup and a bottle."
    assert got == [
        (a, b, "human"),  # j1
        (b, a, "human"),  # j2
        ("two red cups.", a, "human_edit"), ("two red cups.", b, "human_edit"),  # j5
        (a, b, "human"), ("a red cup on a table.", a, "human_edit"), ("a red cup on a table.", b, "human_edit"),  # j6
        (b, a, "human"), (a, b, "human_edit"),  # j7
        (b, a, "human"),  # j11
    ]
    for p in out:
        assert p["source"] == "human" and p["annotator"] == "ann-2" and p["image_id"] == "img9"
        assert p["image"] == "images/img9.png" and p["scores"] == {} and p["margin"] is None
    assert dict(rej.counts) == {"unknown_choice": 2, "malformed_judgement": 1}
    assert [(e["reason"], e["where"], e["row"]) for e in rej.examples[:2]] == [
        ("unknown_choice", "judgement j8", "maybe"), ("unknown_choice", "judgement j9", None)]
    assert {p["task"] for p in out} == {"caption"}  # judgements from before the task field


def test_pairs_from_question_judgements_keep_the_task():
    """Issue 17: a judged question pair gives question pairs (the edit's too); an unknown task is counted."""
    q = dict(prompt="How many cups are there? Detected: 2 cups (left).", a="two.", b="three.")
    rej = Rejections()
    out = pairs_from_judgements([_judgement("q1", "a", edit="two cups.", task="vqa", **q),
                                 _judgement("q2", "b", task="poem", **q), _judgement("c1", "a", task=None)], rej)
    assert [(p["chosen"], p["rejected"], p["kind"], p["task"]) for p in out] == [
        ("two.", "three.", "human", "vqa"), ("two cups.", "two.", "human_edit", "vqa"),
        ("two cups.", "three.", "human_edit", "vqa"), ("a red cup.", "a red cup and a bottle.", "human", "caption")]
    assert rej.counts == {"unknown_task": 1} and rej.examples[0]["where"] == "judgement q2"
