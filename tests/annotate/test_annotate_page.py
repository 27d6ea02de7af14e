"""The start-up link and the page a person gets without the token (no browser needed)."""

from __future__ import annotations

import uvicorn
from fastapi.testclient import TestClient

from vlm_dpo.annotate import AnnotateConfig
from vlm_dpo.annotate import app as app_mod


def test_startup_link_names_the_annotator(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    acfg = AnnotateConfig(captions=str(data.captions), image_root=str(data.root), db=str(tmp_path / "j.sqlite"),
                          token="tok", annotators=["alice", "bob"])
    app_mod.run(acfg)
    err = capsys.readouterr().err
    assert "?token=tok&annotator=alice" in err and "?token=tok&annotator=bob" in err


def test_missing_token_gets_a_page_for_people(data, tmp_path):
    app, store, _ = app_mod.build(AnnotateConfig(captions=str(data.captions), image_root=str(data.root),
                                                 db=str(tmp_path / "j.sqlite"), token="tok"))
    try:
        client = TestClient(app, base_url="http://127.0.0.1")
        r = client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")
        assert "needs its access link" in r.text and "token=" in r.text
        assert client.get("/api/stats").json() == {"detail": "missing or wrong token"}
    finally:
        store.close()
