"""The annotation API through FastAPI's TestClient: judgements, resume, overlap, safety, export -> pairs."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from vlm_dpo.annotate import AnnotateConfig, agreement, export_judgements, resolve
from vlm_dpo.annotate.app import build, create_app
from vlm_dpo.annotate.items import items_from_pairs, load_items, make_item, safe_image_path, split_question
from vlm_dpo.annotate.page import CSP, PAGE, SCRIPT, STYLE
from vlm_dpo.annotate.store import Store, is_swapped
from vlm_dpo.pairs.dataset import Rejections, save_pairs, validate_pair
from vlm_dpo.pairs.io import pairs_from_judgements
from vlm_dpo.records import read_jsonl

from .conftest import N_IMAGES, QUESTION, vqa_pair, write_jsonl

URL = "http://127.0.0.1:8765"


@pytest.fixture
def server(data, tmp_path):
    """make(**AnnotateConfig overrides) -> (client, store, summary); every store is closed afterwards."""
    opened = []

    def make(**kw):
        kw = {"captions": str(data.captions), "detections": str(data.detections), "image_root": str(data.root),
              "db": str(tmp_path / "annotate" / "judgements.sqlite"), "overlap": 1.0} | kw
        app, store, summary = build(AnnotateConfig(**kw), log=lambda *a, **k: None)
        opened.append(store)
        return TestClient(app, base_url=URL), store, summary

    yield make
    for s in opened:
        try:
            s.close()
        except sqlite3.ProgrammingError:
            pass


def judge(client, annotator, choice, edit=None, **extra):
    r = client.get("/api/next", params={"annotator": annotator} | extra)
    assert r.status_code == 200, r.text
    item = r.json()["item"]
    assert item is not None
    r = client.post("/api/judgements", json={"item_id": item["item_id"], "annotator": annotator, "choice": choice,
                                             "edit": edit}, params=extra)
    assert r.status_code == 200, r.text
    assert r.json()["saved"] is True
    return item, r.json()


def test_judgement_round_trip(server, data):
    client, store, summary = server()
    assert summary["items"] == N_IMAGES and summary["new_items"] == N_IMAGES
    r = client.get("/api/next", params={"annotator": "ann1"})
    body = r.json()
    assert body["progress"] == {"done": 0, "total": N_IMAGES}
    item = body["item"]
    assert {item["a"], item["b"]} == {store.item(item["item_id"])["c1"], store.item(item["item_id"])["c2"]}
    assert item["grounding"].startswith("Detected objects:") and item["prompt"].endswith("Describe the image.")
    scene = next(s for s in data.scenes if s.image_id == item["image_id"])
    assert item["detections"]["width"] == scene.width and len(item["detections"]["boxes"]) == len(scene.objects)
    assert client.get("/api/next", params={"annotator": "ann1"}).json()["item"] == item  # stable until judged

    img = client.get(f"/api/items/{item['item_id']}/image")
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    assert img.content == (data.root / "images" / f"{item['image_id']}.png").read_bytes()

    r = client.post("/api/judgements", json={"item_id": item["item_id"], "annotator": "ann1", "choice": "b",
                                             "edit": "  a cleaner caption  "})
    assert r.status_code == 200 and r.json()["revision"] == 1
    assert r.json()["progress"] == {"done": 1, "total": N_IMAGES}
    got = client.get(f"/api/items/{item['item_id']}", params={"annotator": "ann1"}).json()["item"]
    assert got["judgement"]["choice"] == "b" and got["judgement"]["edit"] == "a cleaner caption"
    assert got["a"] == item["a"] and got["b"] == item["b"]  # same order on every view
    assert client.get("/api/next", params={"annotator": "ann1"}).json()["item"]["item_id"] != item["item_id"]

    # A revision replaces the judgement in the export; the history stays in the database.
    r = client.post("/api/judgements", json={"item_id": item["item_id"], "annotator": "ann1", "choice": "a"})
    assert r.json()["revision"] == 2
    lines = [json.loads(x) for x in client.get("/api/export").text.splitlines()]
    assert len(lines) == 1
    rec = lines[0]
    assert rec["choice"] == "a" and rec["edit"] is None and rec["revision"] == 2
    assert (rec["a"], rec["b"]) == (item["a"], item["b"]) and rec["image"] == f"images/{item['image_id']}.png"
    assert rec["swapped"] == is_swapped(store.seed, item["item_id"], "ann1")
    assert set(rec) >= {"judgement_id", "annotator", "image_id", "image", "prompt", "grounding", "a", "b",
                        "choice", "edit", "time"}
    assert store.counts()["submissions"] == 2


def test_ab_order_seeded_per_item_and_annotator(server):
    client, store, _ = server()
    orders = {}
    for who in ("ann1", "ann2", "ann3"):
        for _ in range(N_IMAGES):
            item, _ = judge(client, who, "tie")
            orders[who, item["item_id"]] = (item["a"], item["b"])
    swaps = {k: v != tuple(sorted(v)) for k, v in orders.items()}  # c1/c2 are the sorted captions
    assert any(swaps.values()) and not all(swaps.values())
    assert all(swaps[k] == is_swapped(store.seed, k[1], k[0]) for k in swaps)
    recs = {(r["annotator"], r["item_id"]): r for r in store.latest()}
    assert all((recs[k]["a"], recs[k]["b"]) == orders[k] and recs[k]["swapped"] == swaps[k] for k in orders)


def test_resume_after_restart(server, tmp_path):
    client, store, _ = server()
    first = [judge(client, "ann1", "a")[0]["item_id"] for _ in range(2)]
    upcoming = client.get("/api/next", params={"annotator": "ann1"}).json()["item"]["item_id"]
    # "Restart": a new app over the same database file (the old connection is simply abandoned, like a kill).
    client2, store2, summary = server()
    assert summary["new_items"] == 0 and summary["judgements"] == 2
    body = client2.get("/api/next", params={"annotator": "ann1"}).json()
    assert body["progress"] == {"done": 2, "total": N_IMAGES}
    assert body["item"]["item_id"] == upcoming and upcoming not in first
    assert client2.get("/api/next", params={"annotator": "ann2"}).json()["progress"]["done"] == 0


def test_saved_judgement_survives_sigkill(data, tmp_path):
    """A process that saved a judgement and is then killed -9 (no close, no checkpoint) loses nothing."""
    db = tmp_path / "kill.sqlite"
    items, _ = load_items(captions=str(data.captions), image_root=data.root)
    code = f"""
import os, signal, sys
from vlm_dpo.annotate.items import load_items
from vlm_dpo.annotate.store import Store
items, _ = load_items(captions={str(data.captions)!r})
s = Store({str(db)!r})
s.add_items(items, 1.0)
s.save(items[0]["item_id"], "ann1", "a", "fixed caption", open_=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env=os.environ | {"OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert Path(str(db) + "-wal").exists()  # the judgement lives in the WAL, not yet checkpointed
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT item_id, choice, edit FROM judgements").fetchall() == [
        (items[0]["item_id"], "a", "fixed caption")]
    con.close()


def test_overlap_fixed_annotators(server):
    client, store, summary = server(overlap=0.5, annotators=["x", "y"])
    assert summary["shared"] == 3
    seen = {}
    for who in ("x", "y"):
        seen[who] = set()
        while (item := client.get("/api/next", params={"annotator": who}).json()["item"]) is not None:
            seen[who].add(item["item_id"])
            client.post("/api/judgements", json={"item_id": item["item_id"], "annotator": who, "choice": "tie"})
        assert client.get("/api/progress", params={"annotator": who}).json() == {"done": len(seen[who]),
                                                                                  "total": len(seen[who])}
    shared = seen["x"] & seen["y"]
    # 3 shared; the other 3 dealt out fewest-first (ties in list order): x, y, x
    assert len(shared) == 3 and (len(seen["x"]), len(seen["y"])) == (5, 4)
    assert len(seen["x"] | seen["y"]) == N_IMAGES
    assert all(store.item(i)["shared"] for i in shared)
    assert client.get("/api/next", params={"annotator": "z"}).status_code == 403  # not on the list
    other = next(iter(seen["y"] - shared))
    r = client.post("/api/judgements", json={"item_id": other, "annotator": "x", "choice": "a"})
    assert r.status_code == 409  # y's item


def test_overlap_open_annotators_claim(server):
    client, store, summary = server(overlap=0.34)
    assert summary["shared"] == 2
    a = client.get("/api/next", params={"annotator": "a"}).json()
    assert a["progress"]["total"] == N_IMAGES  # nobody has claimed anything yet
    done = {"a": set(), "b": set()}
    for _ in range(N_IMAGES):  # interleave the two
        for who in ("a", "b"):
            item = client.get("/api/next", params={"annotator": who}).json()["item"]
            if item:
                client.post("/api/judgements", json={"item_id": item["item_id"], "annotator": who, "choice": "a"})
                done[who].add(item["item_id"])
    both = done["a"] & done["b"]
    assert {i for i in both} == {r[0] for r in store.con.execute("SELECT item_id FROM items WHERE shared = 1")}
    assert len(done["a"] | done["b"]) == N_IMAGES


def test_path_traversal_rejected(server, data, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes((data.root / "images" / f"{data.scenes[0].image_id}.png").read_bytes())
    (data.root / "escape.png").symlink_to(secret)
    (data.root / "notes.txt").write_text("not an image")
    rec = data.caption_records[0]
    bad = [rec | {"image_id": f"bad{i}", "file": f} for i, f in
           enumerate(["../secret.png", str(secret), "escape.png", "images/../../secret.png", "missing.png"])]
    write_jsonl(data.captions, data.caption_records + bad)
    client, store, summary = server()
    assert summary["items"] == N_IMAGES
    assert summary["skipped"] == {"image_outside_root": 3, "absolute_image_path": 1, "missing_image": 1}

    # Items that reach the database anyway (an older db, a file swapped for a symlink later) are still refused.
    forged = [make_item(image_id=f"f{i}", image=img, prompt="p", grounding=None, c1="x", c2=f"y{i}", source="test")
              for i, img in enumerate(["../secret.png", str(secret), "escape.png", "notes.txt", "images", ""])]
    store.add_items(forged, 1.0)
    for it in forged:
        assert client.get(f"/api/items/{it['item_id']}/image").status_code == 404
    victim = store.item(store.con.execute("SELECT item_id FROM items WHERE source = 'captions'").fetchone()[0])
    assert client.get(f"/api/items/{victim['item_id']}/image").status_code == 200
    path = data.root / victim["image"]
    path.unlink()
    path.symlink_to(secret)
    assert client.get(f"/api/items/{victim['item_id']}/image").status_code == 404
    for url in ["/api/items/..%2F..%2Fsecret.png/image", "/api/items/../../secret.png",
                "/../secret.png", "/api/items/%2e%2e/image", "/images/../secret.png", "/data/escape.png",
                "/api/items/" + "0" * 16 + "/image"]:
        r = client.get(url)
        assert r.status_code in (400, 404, 422), (url, r.status_code)
        assert r.headers["content-type"].startswith("application/json")
    assert safe_image_path(victim["image"], data.root) is None


def test_token_enforced(server):
    client, _, _ = server(token="s3cret")
    for url in ["/", "/api/next?annotator=a", "/api/export", "/api/agreement", "/api/stats"]:
        r = client.get(url)
        assert r.status_code == 401 and r.json() == {"detail": "missing or wrong token"}, url
    assert client.get("/api/next?annotator=a", headers={"X-Annotate-Token": "wrong"}).status_code == 401
    assert client.get("/api/next?annotator=a&token=s3cre").status_code == 401
    ok = client.get("/api/next?annotator=a", headers={"X-Annotate-Token": "s3cret"})
    assert ok.status_code == 200
    item_id = ok.json()["item"]["item_id"]
    assert client.get("/api/next?annotator=a", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get(f"/api/items/{item_id}/image?token=s3cret").status_code == 200
    assert client.get(f"/api/items/{item_id}/image").status_code == 401
    r = client.post("/api/judgements", json={"item_id": item_id, "annotator": "a", "choice": "a"})
    assert r.status_code == 401
    r = client.post("/api/judgements?token=s3cret", json={"item_id": item_id, "annotator": "a", "choice": "a"})
    assert r.status_code == 200
    assert client.get("/?token=s3cret").status_code == 200


def test_malformed_requests_get_4xx_json(server):
    client, store, _ = server()
    item_id = client.get("/api/next", params={"annotator": "a"}).json()["item"]["item_id"]
    good = {"item_id": item_id, "annotator": "a", "choice": "a"}
    cases = [
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 422),
        (dict(content=b"[1, 2]", headers={"content-type": "application/json"}), 422),
        (dict(content=b"", headers={"content-type": "application/json"}), 422),
        (dict(content=json.dumps(good).encode(), headers={"content-type": "text/plain"}), 415),
        (dict(data={"item_id": item_id}), 415),  # a form post
        (dict(json={k: v for k, v in good.items() if k != "choice"}), 422),
        (dict(json=good | {"choice": "c"}), 422),
        (dict(json=good | {"annotator": "../../etc"}), 422),
        (dict(json=good | {"annotator": ""}), 422),
        (dict(json=good | {"item_id": "../x"}), 422),
        (dict(json=good | {"edit": "x" * 5000}), 422),
        (dict(json=good | {"edit": 5}), 422),
        (dict(json=good | {"ms": -1}), 422),
        (dict(json=good | {"extra": 1}), 422),
        (dict(json=good | {"item_id": "f" * 16}), 404),
        (dict(json=good, headers={"origin": "http://evil.example"}), 403),
        (dict(content=b"{" + b" " * 70000 + b"}", headers={"content-type": "application/json"}), 413),
    ]
    for kwargs, status in cases:
        r = client.post("/api/judgements", **kwargs)
        assert r.status_code == status, (kwargs.get("json") or kwargs.get("content", b"")[:40], r.status_code, r.text)
        assert isinstance(r.json(), dict) and "detail" in r.json()
    for url in ["/api/next", "/api/next?annotator=", "/api/next?annotator=a%20b", "/api/items/xyz?annotator=a",
                f"/api/items/{item_id}", "/api/progress?annotator=" + "a" * 65, "/api/nope"]:
        r = client.get(url)
        assert 400 <= r.status_code < 500 and "detail" in r.json(), url
    assert client.put("/api/judgements", json=good).status_code in (405, 415)
    assert store.counts()["submissions"] == 0
    r = client.post("/api/judgements", json=good, headers={"origin": URL})  # same origin is fine
    assert r.status_code == 200
    evil = TestClient(client.app, base_url="http://evil.example:8765")  # DNS rebinding: a foreign Host name
    assert evil.get("/api/stats").status_code == 400


def test_page_is_self_contained(server):
    client, _, _ = server()
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["content-security-policy"] == CSP and "sha256-" in CSP
    html = r.text
    assert html == PAGE and SCRIPT in html
    for needle in ("https://", "<link", "@import", "<iframe", "src=\"http"):
        assert needle not in html.lower(), needle
    assert "url(" not in STYLE  # no fonts or backgrounds from anywhere
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    for element in ("btn-a", "btn-b", "btn-tie", "btn-both-bad", "edit", "progress", "show-boxes", "boxes"):
        assert f'id="{element}"' in html


def test_kappa_hand_worked():
    from vlm_dpo.annotate import cohen_kappa

    # 50 items, yes/no: both yes 20, A yes/B no 5, A no/B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(["a", "b", "tie"], ["a", "b", "tie"]) == pytest.approx(1.0)
    # Perfect disagreement on two labels: p_o = 0, p_e = 0.5 -> -1
    assert cohen_kappa(["a", "b"], ["b", "a"]) == pytest.approx(-1.0)
    assert cohen_kappa(["a", "a"], ["a", "a"]) is None  # p_e = 1: undefined
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa(["a"], [])


def test_agreement_endpoint_hand_worked(server, tmp_path):
    client, store, _ = server(annotators=["x", "y", "z"])
    # Four shared items, labels about the canonical captions (first = c1):
    #   x: first, first, second, tie       y: first, second, second, both_bad
    # p_o = 2/4; x: first 2, second 1, tie 1; y: first 1, second 2, both_bad 1
    # p_e = (2*1 + 1*2) / 16 = 0.25; kappa = (0.5 - 0.25) / 0.75 = 1/3
    ids = [r[0] for r in store.con.execute("SELECT item_id FROM items ORDER BY order_key LIMIT 4")]
    want = {"x": ["first", "first", "second", "tie"], "y": ["first", "second", "second", "both_bad"]}
    for who, labels in want.items():
        for item_id, label in zip(ids, labels):
            if label in ("first", "second"):
                shown_first = "a" if not is_swapped(store.seed, item_id, who) else "b"
                choice = shown_first if label == "first" else {"a": "b", "b": "a"}[shown_first]
            else:
                choice = label
            r = client.post("/api/judgements", json={"item_id": item_id, "annotator": who, "choice": choice})
            assert r.status_code == 200
    # z judges only the first item, like x and y ("first"): one common item, one label -> p_e = 1, undefined
    z_first = "b" if is_swapped(store.seed, ids[0], "z") else "a"
    client.post("/api/judgements", json={"item_id": ids[0], "annotator": "z", "choice": z_first})
    rep = client.get("/api/agreement").json()
    xy = next(p for p in rep["pairs"] if p["annotators"] == ["x", "y"])
    assert xy["items"] == 4 and xy["observed"] == pytest.approx(0.5) and xy["kappa"] == pytest.approx(1 / 3)
    single = [p for p in rep["pairs"] if "z" in p["annotators"]]
    assert all(p["items"] == 1 and p["kappa"] is None for p in single)  
    assert rep["kappa"] == pytest.approx(1 / 3) and rep["items_multi"] == 4
    assert agreement(store.path) == rep  # the CLI-callable function agrees


def test_export_becomes_pairs(server, data, tmp_path):
    client, store, _ = server()
    shown = {}
    for choice, edit in [("a", None), ("b", None), ("tie", "Exactly two red cups."), ("both_bad", None),
                         ("both_bad", "A green ball on the left.")]:
        item, _ = judge(client, "ann1", choice, edit)
        shown[item["item_id"]] = (item, choice, edit)
    out = export_judgements(store.path, tmp_path / "judgements.jsonl")
    records = list(read_jsonl(out))
    assert len(records) == 5
    assert [json.loads(x) for x in client.get("/api/export").text.splitlines()] == records
    rej = Rejections()
    pairs = pairs_from_judgements(records, rej)
    assert not rej.counts
    assert len(pairs) == 1 + 1 + 2 + 0 + 2
    by_kind = {}
    for p in pairs:
        by_kind.setdefault(p["kind"], []).append(p)
        assert p["source"] == "human" and p["annotator"] == "ann1"
        assert validate_pair(p, "test", rej, data.root)
    human = {(p["chosen"], p["rejected"]) for p in by_kind["human"]}
    for item, choice, edit in shown.values():
        if choice == "a":
            assert (item["a"], item["b"]) in human
        elif choice == "b":
            assert (item["b"], item["a"]) in human
        if edit:
            assert {(edit, item["a"]), (edit, item["b"])} <= {(p["chosen"], p["rejected"]) for p in by_kind["human_edit"]}


def test_question_pair_round_trip(server, data, tmp_path):
    """Issue 17: a VQA pair is served as a question (without its grounding) with the two answers as A/B; its
    judgement keeps task "vqa", and so do the pairs built from it (an edit too); caption items stay captions."""
    pair = vqa_pair(data)
    save_pairs([pair], tmp_path / "vqa.jsonl")
    client, store, summary = server(pairs=str(tmp_path / "vqa.jsonl"))
    assert summary["items"] == N_IMAGES + 1
    served = {}
    while (item := client.get("/api/next", params={"annotator": "ann1"}).json()["item"]) is not None:
        served[item["item_id"]] = item
        edit = "exactly that many." if item["task"] == "vqa" else None
        r = client.post("/api/judgements", json={"item_id": item["item_id"], "annotator": "ann1", "choice": "a",
                                                 "edit": edit})
        assert r.status_code == 200, r.text
    (q,) = [it for it in served.values() if it["task"] == "vqa"]
    assert q["question"] == QUESTION and q["prompt"] == pair["prompt"] == f"{QUESTION} {pair['grounding']}"
    assert q["grounding"] == pair["grounding"] and {q["a"], q["b"]} == {pair["chosen"], pair["rejected"]}
    captions = [it for it in served.values() if it["item_id"] != q["item_id"]]
    assert len(captions) == N_IMAGES and all(it["task"] == "caption" and it["question"] is None for it in captions)
    records = list(read_jsonl(export_judgements(store.path, tmp_path / "judgements.jsonl")))
    assert {r["item_id"]: r["task"] for r in records} == {i: it["task"] for i, it in served.items()}
    rej = Rejections()
    pairs = pairs_from_judgements(records, rej)
    assert not rej.counts
    vqa = [(p["chosen"], p["rejected"], p["kind"]) for p in pairs if p["task"] == "vqa"]
    assert vqa == [(q["a"], q["b"], "human"), ("exactly that many.", q["a"], "human_edit"),
                   ("exactly that many.", q["b"], "human_edit")]
    assert all(p["prompt"] == pair["prompt"] and p["source"] == "human" for p in pairs if p["task"] == "vqa")
    assert sum(p["task"] == "caption" for p in pairs) == N_IMAGES


def test_split_question():
    g = "Detected: 2 cups (left), 1 ball (center)."
    assert split_question(f"How many cups are on the table? {g}", g) == ("How many cups are on the table?", g)
    # no grounding column (a plain import): the "Detected:" tail is the context
    assert split_question(f"Is there a ball? {g}", None) == ("Is there a ball?", g)
    assert split_question("Is there a ball?", None) == ("Is there a ball?", None)  # ungrounded
    assert split_question(g, g) == (g, g)  # nothing left but the context: the whole prompt


def test_items_without_task_are_captions(data):
    """Older pair files and records carry no task: their items are captions; an unknown task is refused."""
    pair = vqa_pair(data)
    old = {k: v for k, v in pair.items() if k != "task"}
    rej = Rejections()
    items = items_from_pairs([pair, old, pair | {"task": "poem", "chosen": "seven."}], data.root, rej)
    assert [it["task"] for it in items] == ["vqa", "caption"] and rej.counts == {"unknown_task": 1}
    records = [r | {"task": "vqa"} for r in data.caption_records[:1]] + data.caption_records[1:2]
    write_jsonl(data.captions, records)
    assert [it["task"] for it in load_items(captions=str(data.captions), image_root=data.root)[0]] == [
        "vqa", "caption"]


def test_database_from_before_the_task_column(data, tmp_path):
    """A database made before items had a task opens with every item a caption (its judgements export as
    caption judgements); loading the source again gives the question items their task, judgements included."""
    db = tmp_path / "old.sqlite"
    pair = vqa_pair(data)
    item = make_item(image_id=pair["image_id"], image=pair["image"], prompt=pair["prompt"],
                     grounding=pair["grounding"], c1=pair["chosen"], c2=pair["rejected"], source="pairs", task="vqa")
    with Store(db) as store:
        store.add_items([item], 1.0)
        store.save(item["item_id"], "ann1", "a", None, open_=True)
        store.con.execute("ALTER TABLE items DROP COLUMN task")  # what an older version wrote
    with Store(db) as store:
        assert store.item(item["item_id"])["task"] == "caption"
        assert [r["task"] for r in store.latest()] == ["caption"]
        assert [p["task"] for p in pairs_from_judgements(store.latest())] == ["caption"]
        assert store.add_items([item], 1.0) == 0
        assert store.item(item["item_id"])["task"] == "vqa"
        assert [p["task"] for p in pairs_from_judgements(store.latest())] == ["vqa"]
    with Store(db) as store:  # reopening a database that has the column changes nothing
        assert store.item(item["item_id"])["task"] == "vqa"


def test_pairs_file_candidates(data, tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    from vlm_dpo.pairs.dataset import make_pair

    pairs = [make_pair(image_id=r["image_id"], image=r["file"], prompt=r["prompt"], chosen=r["greedy"],
                       rejected=r["samples"][1], source="mined", kind="mined", grounding=r["grounding"],
                       boxes=[[1, 2, 30, 40]]) for r in data.caption_records]
    pairs.append(make_pair(image_id="x", image="../outside.png", prompt="p", chosen="a", rejected="b",
                           source="mined", kind="mined"))
    save_pairs(pairs, tmp_path / "pairs.parquet")
    items, rej = load_items(pairs=str(tmp_path / "pairs.parquet"), image_root=data.root)
    assert len(items) == N_IMAGES and rej.counts == {"image_outside_root": 1}
    assert items[0]["boxes"] == [{"label": "", "score": None, "box": [1, 2, 30, 40]}]
    # The same two captions from the captions file are the same items (canonical order, same id).
    from_captions, _ = load_items(captions=str(data.captions), image_root=data.root)
    assert {i["item_id"] for i in items} == {i["item_id"] for i in from_captions}
    both, rej = load_items(pairs=str(tmp_path / "pairs.parquet"), captions=str(data.captions),
                           image_root=data.root, limit=4)
    assert len(both) == 4 and rej.counts["duplicate"] == N_IMAGES


def test_captions_per_image(data):
    items, rej = load_items(captions=str(data.captions), image_root=data.root, per_image=5)
    assert len(items) == N_IMAGES  # greedy, the same again, and one other: one distinct pair per image
    records = [r | {"samples": [r["greedy"], "one", "two"]} for r in data.caption_records[:2]]
    records.append(data.caption_records[2] | {"samples": [], "greedy": "only"})
    write_jsonl(data.captions, records)
    items, rej = load_items(captions=str(data.captions), image_root=data.root, per_image=2)
    assert len(items) == 4 and rej.counts == {"fewer_than_two_captions": 1}
    items, _ = load_items(captions=str(data.captions), image_root=data.root, per_image=0)
    assert len(items) == 2


def test_resolve_defaults_and_actions(data, tmp_path):
    from vlm_dpo.annotate.app import run

    out = tmp_path / "run"
    (out / "captions").mkdir(parents=True)
    (out / "detections").mkdir()
    (out / "captions" / "train.jsonl").write_text(data.captions.read_text())
    (out / "detections" / "train.jsonl").write_text(data.detections.read_text())
    cfg = SimpleNamespace(out=str(out), annotate=AnnotateConfig(), data=SimpleNamespace(split="train"),
                          pairs=SimpleNamespace(image_root=str(data.root)))
    acfg = resolve(cfg)
    assert acfg.db == str(out / "annotate" / "judgements.sqlite")
    assert acfg.captions == str(out / "captions" / "train.jsonl") and acfg.detections.endswith("train.jsonl")
    assert acfg.image_root == str(data.root) and acfg.host == "127.0.0.1" and acfg.port == 8765
    assert acfg.overlap == 0.2 and acfg.annotators == [] and acfg.token == ""
    _, store, _ = build(acfg, log=lambda *a, **k: None)
    store.save(store.next_item("a", open_=True)["item_id"], "a", "a", None, open_=True)
    store.close()
    exported = run(resolve(SimpleNamespace(**vars(cfg) | {"annotate": AnnotateConfig(action="export")})))
    assert exported == {"export": str(out / "annotate" / "judgements.jsonl"), "judgements": 1}
    rep = run(resolve(SimpleNamespace(**vars(cfg) | {"annotate": AnnotateConfig(action="agreement")})))
    assert rep["kappa"] is None and rep["annotators"] == ["a"]
    with pytest.raises(ValueError, match="action"):
        run(AnnotateConfig(action="nope", db=acfg.db))
    with pytest.raises(ValueError, match="nothing to annotate"):
        build(AnnotateConfig(image_root=str(data.root), db=str(tmp_path / "empty.sqlite")))
    with pytest.raises(ValueError, match="overlap"):
        build(AnnotateConfig(image_root=str(data.root), db=str(tmp_path / "o.sqlite"), overlap=1.5,
                             captions=str(data.captions)))


def test_box_slider_starts_at_the_runs_grounding_threshold(data, tmp_path):
    """The page's box threshold starts where the prompt's context was cut (ground.min_score), not at a fixed 0.5;
    annotate.min_score sets it, and 0.5 stands when neither is known."""
    base = dict(out=str(tmp_path / "run"), data=SimpleNamespace(split="train"),
                pairs=SimpleNamespace(image_root=str(data.root)))
    run_cfg = SimpleNamespace(**base, ground=SimpleNamespace(min_score=0.4),
                              annotate=AnnotateConfig(captions=str(data.captions)))
    assert resolve(run_cfg).min_score == 0.4
    explicit = SimpleNamespace(**base, ground=SimpleNamespace(min_score=0.4),
                               annotate=AnnotateConfig(captions=str(data.captions), min_score=0.25))
    assert resolve(explicit).min_score == 0.25
    standalone = AnnotateConfig(captions=str(data.captions), image_root=str(data.root))
    for acfg, want in ((resolve(run_cfg), ("0.4", "0.40")), (standalone, ("0.5", "0.50"))):
        acfg.db = str(tmp_path / f"{want[0]}.sqlite")
        app, store, _ = build(acfg, log=lambda *a, **k: None)
        try:
            html = TestClient(app, base_url="http://127.0.0.1").get("/").text
        finally:
            store.close()
        assert f'id="threshold" min="0" max="1" step="0.05" value="{want[0]}"' in html
        assert f'<output id="threshold-value">{want[1]}</output>' in html and "{min_score" not in html
    with pytest.raises(ValueError, match="min_score"):
        build(AnnotateConfig(captions=str(data.captions), image_root=str(data.root), db=str(tmp_path / "x.sqlite"),
                             min_score=1.5), log=lambda *a, **k: None)


def test_store_standalone_app(data, tmp_path):
    """create_app over a Store made by hand (library use), with boxes from a pair record and no Host check."""
    store = Store(tmp_path / "s.sqlite", seed=3)
    item = make_item(image_id="i", image=f"images/{data.scenes[0].image_id}.png", prompt="Describe.",
                     grounding=None, c1="one", c2="two", source="test", boxes=[{"label": "", "score": None,
                                                                                "box": [0, 0, 5, 5]}])
    store.add_items([item], 0.0)
    client = TestClient(create_app(store, data.root))
    got = client.get("/api/next", params={"annotator": "solo"}).json()
    assert got["item"]["detections"] == {"width": None, "height": None, "boxes": item["boxes"]}
    assert got["progress"] == {"done": 0, "total": 1}
    assert client.get("/api/next", params={"annotator": "other"}).json()["item"] is None  # claimed by solo
    store.close()
