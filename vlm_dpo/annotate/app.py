"""The annotation server: a FastAPI app over the Store, and `run` (what `vlm-dpo annotate` calls).

Endpoints (JSON unless noted; all behind the token when one is set):
    GET  /                          the page (HTML)
    GET  /api/next?annotator=ID     {"item": {...} | null, "progress": {"done", "total"}}: resume = this call; an
                                    item's `task` is "caption" or "vqa" (then `question`: its prompt's question)
    GET  /api/items/{id}?annotator  one item as that annotator sees it, with their last judgement
    GET  /api/items/{id}/image      the item's image (only a file inside the image root)
    POST /api/judgements            {"item_id", "annotator", "choice", "edit"?, "ms"?} -> answered after commit
    GET  /api/progress?annotator=ID
    GET  /api/agreement             Cohen's kappa per annotator pair (agreement.py)
    GET  /api/export                the judgement JSONL (application/x-ndjson)
    GET  /api/stats                 counts
    POST /api/notes                 {"item_id", "annotator", "tags": [hallucination|count|colour|side|vague], "reason",
                                    "flag"}: error tags, a reason, a flag (broken item) for one item
    GET  /api/notes                 the latest note per (item, annotator)
    GET  /api/history?annotator=ID  the annotator's judged items, newest first (review, back/undo)

Safety: binds 127.0.0.1 unless told otherwise; an optional token (header X-Annotate-Token, Authorization:
Bearer, or ?token=) compared in constant time; a Host allow-list on loopback (stops DNS rebinding); POSTs must be
JSON from the same origin (no cross-site form posts); request bodies are small and validated by pydantic, so
anything malformed is a 4xx JSON answer. Images are looked up by item id, never by a path from the request.
"""

from __future__ import annotations

import hmac
import json
import re
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from . import ACTIONS, AnnotateConfig
from .agreement import agreement_of
from .items import IMAGE_TYPES, load_detections, load_items, safe_image_path, split_question
from .page import CSP, NO_TOKEN_PAGE, page_html
from .store import TAGS, NotVisible, Store, export_judgements

ANNOTATOR_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$"
ITEM_PATTERN = r"^[0-9a-f]{16}$"
MAX_BODY = 64 * 1024
LOOPBACK = ("127.0.0.1", "localhost", "::1")

AnnotatorQ = Annotated[str, Query(pattern=ANNOTATOR_PATTERN, description="annotator id")]
ItemP = Annotated[str, PathParam(pattern=ITEM_PATTERN)]


class JudgementIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(pattern=ITEM_PATTERN)
    annotator: str = Field(pattern=ANNOTATOR_PATTERN)
    choice: Literal["a", "b", "tie", "both_bad"]
    edit: str | None = Field(default=None, max_length=4000)
    ms: int | None = Field(default=None, ge=0, le=10**9)  # time on the item, for curiosity (not exported)


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: str = Field(pattern=ITEM_PATTERN)
    annotator: str = Field(pattern=ANNOTATOR_PATTERN)
    tags: list[Literal[TAGS]] = Field(default_factory=list, max_length=len(TAGS))
    reason: str | None = Field(default=None, max_length=2000)
    flag: bool = False


def _host_only(netloc: str) -> str:
    try:
        return (urlsplit("//" + netloc).hostname or "").lower()
    except ValueError:
        return ""


def create_app(store: Store, image_root: str | Path, *, annotators: list[str] | tuple[str, ...] = (),
               token: str = "", detections: dict[str, dict] | None = None,
               allowed_hosts: list[str] | tuple[str, ...] | None = None, min_score: float = 0.5) -> FastAPI:
    """The app over an open Store. `allowed_hosts` None = any Host header (tests); `run` passes the loopback
    names when bound to loopback. `min_score`: where the page's box-score slider starts."""
    html = page_html(min_score)
    root = Path(image_root).resolve()
    annotators = list(annotators)
    open_ = not annotators
    detections = detections or {}
    hosts = {h.lower().strip("[]") for h in allowed_hosts} if allowed_hosts is not None else None
    app = FastAPI(title="vlm-dpo annotate", docs_url=None, redoc_url=None, openapi_url=None)

    def error(status: int, detail: str) -> JSONResponse:
        return JSONResponse({"detail": detail}, status_code=status)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if hosts is not None and _host_only(request.headers.get("host", "")) not in hosts:
            return error(400, "unexpected Host header")
        if token and request.url.path != "/favicon.ico":  # browsers ask for it without the token
            got = request.headers.get("x-annotate-token") or request.query_params.get("token") or ""
            auth = request.headers.get("authorization", "")
            if not got and auth.lower().startswith("bearer "):
                got = auth[7:].strip()
            if not hmac.compare_digest(got.encode(), token.encode()):
                if request.url.path == "/" and "text/html" in request.headers.get("accept", ""):
                    return HTMLResponse(NO_TOKEN_PAGE, status_code=401)  # a person, not a script: say what to do
                return error(401, "missing or wrong token")
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
                return error(403, "cross-origin request refused")
            if request.headers.get("sec-fetch-site") == "cross-site":
                return error(403, "cross-site request refused")
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype != "application/json":
                return error(415, "send application/json")
            try:
                length = int(request.headers.get("content-length", "0"))
            except ValueError:
                return error(400, "bad Content-Length")
            if length > MAX_BODY:
                return error(413, f"request body over {MAX_BODY} bytes")
            # The cap holds for the stream itself (chunked bodies have no Content-Length): read at most one chunk
            # past it, then refuse; the endpoint gets the body read here.
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY:
                    return error(413, f"request body over {MAX_BODY} bytes")
            request._body = bytes(body)
        response = await call_next(request)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"  # the token may sit in the URL
        response.headers["X-Frame-Options"] = "DENY"
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):  # never echo the request body back
        return JSONResponse({"detail": [{"type": e.get("type"), "msg": e.get("msg"),
                                         "loc": [str(part)[:64] for part in e.get("loc", ())]}
                                        for e in exc.errors()[:20]]}, status_code=422)

    @app.exception_handler(Exception)
    async def crash(request: Request, exc: Exception):  # last resort: still a JSON answer
        return error(500, f"internal error: {type(exc).__name__}")

    def check_annotator(annotator: str) -> None:
        if annotators and annotator not in annotators:
            raise HTTPException(403, f"unknown annotator {annotator!r}; ask for one of the configured ids")

    def payload(item: dict, annotator: str) -> dict:
        v = store.view(item, annotator)
        det = detections.get(item["image_id"])
        if det is not None:
            boxes = {"width": det["width"], "height": det["height"], "boxes": det["detections"]}
        else:
            boxes = {"width": None, "height": None, "boxes": item.get("boxes") or []}
        # A question pair: the page shows the question on its own (the two answers are the options) and the
        # context it came with as the grounding, so nothing of the prompt is hidden.
        question, grounding = None, v["grounding"]
        if v["task"] == "vqa":
            question, grounding = split_question(v["prompt"], v["grounding"])
        return {"item_id": v["item_id"], "image_id": v["image_id"], "prompt": v["prompt"],
                "grounding": grounding, "task": v["task"], "question": question, "a": v["a"], "b": v["b"],
                "detections": boxes, "judgement": store.judgement(item["item_id"], annotator),
                "note": store.note(item["item_id"], annotator)}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse(html, headers={"Content-Security-Policy": CSP})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return Response(status_code=204)

    @app.get("/api/next")
    def next_item(annotator: AnnotatorQ, skip: Annotated[str, Query(pattern=r"^[0-9a-f,]{0,9000}$")] = ""):
        check_annotator(annotator)
        item = store.next_item(annotator, open_=open_, skip=[s for s in skip.split(",") if s])
        return {"item": payload(item, annotator) if item else None,
                "progress": store.progress(annotator, open_=open_)}

    @app.get("/api/progress")
    def progress(annotator: AnnotatorQ):
        check_annotator(annotator)
        return store.progress(annotator, open_=open_)

    @app.get("/api/items/{item_id}")
    def get_item(item_id: ItemP, annotator: AnnotatorQ):
        check_annotator(annotator)
        item = store.item(item_id)
        if item is None:
            raise HTTPException(404, "no such item")
        return {"item": payload(item, annotator), "progress": store.progress(annotator, open_=open_)}

    @app.get("/api/items/{item_id}/image")
    def image(item_id: ItemP):
        item = store.item(item_id)
        if item is None:
            raise HTTPException(404, "no such item")
        path = safe_image_path(item["image"], root)  # checked on every request: files can change under us
        if path is None:
            raise HTTPException(404, "image not available")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()],
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/api/judgements")
    def save(j: JudgementIn):
        check_annotator(j.annotator)
        try:
            saved = store.save(j.item_id, j.annotator, j.choice, j.edit, open_=open_, ms=j.ms)
        except KeyError:
            raise HTTPException(404, "no such item") from None
        except NotVisible:
            raise HTTPException(409, "this item belongs to another annotator") from None
        return {"saved": True, **saved, "progress": store.progress(j.annotator, open_=open_)}

    @app.post("/api/notes")
    def save_note(n: NoteIn):
        check_annotator(n.annotator)
        if store.item(n.item_id) is None:
            raise HTTPException(404, "no such item")
        return {"saved": True, **store.save_note(n.item_id, n.annotator, list(n.tags), n.reason, n.flag)}

    @app.get("/api/notes")
    def notes():
        return store.notes()

    @app.get("/api/history")
    def history(annotator: AnnotatorQ):
        check_annotator(annotator)
        return {"history": store.history(annotator), "progress": store.progress(annotator, open_=open_)}

    @app.get("/api/agreement")
    def agreement():
        return agreement_of(store.latest())

    @app.get("/api/export")
    def export():
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in store.latest())
        return Response(body, media_type="application/x-ndjson",
                        headers={"Content-Disposition": 'attachment; filename="judgements.jsonl"'})

    @app.get("/api/stats")
    def stats():
        return store.counts() | {"open": open_, "annotators_allowed": annotators}

    return app


def build(acfg: AnnotateConfig, *, log=print) -> tuple[FastAPI, Store, dict]:
    """Load the candidates, open (or create) the database, add new items, deal them out; the app."""
    if not acfg.db:
        raise ValueError("annotate.db is not set")
    if not acfg.image_root:
        raise ValueError("annotate.image_root is not set (the folder the image paths are relative to)")
    root = Path(acfg.image_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image root not found")
    if not 0.0 <= acfg.overlap <= 1.0:
        raise ValueError(f"annotate.overlap must be within [0, 1], got {acfg.overlap}")
    if acfg.min_score > 1.0:
        raise ValueError(f"annotate.min_score must be within [0, 1] (below 0: the run's ground.min_score), got "
                         f"{acfg.min_score}")
    bad = [a for a in acfg.annotators if not re.fullmatch(ANNOTATOR_PATTERN, a)]
    if bad:
        raise ValueError(f"annotate.annotators: ids must match {ANNOTATOR_PATTERN}, got {bad}")
    items, rejections = load_items(pairs=acfg.pairs, captions=acfg.captions, image_root=root,
                                   per_image=acfg.per_image, seed=acfg.seed, limit=acfg.limit)
    detections = load_detections(acfg.detections) if acfg.detections else {}
    store = Store(acfg.db, seed=acfg.seed)
    try:
        if store.seed != acfg.seed:
            log(f"annotate: {acfg.db} was created with seed {store.seed}; keeping it (orders must not change)",
                file=sys.stderr)
        added = store.add_items(items, acfg.overlap)
        store.assign(list(acfg.annotators))
        counts = store.counts()
        if not counts["items"]:
            raise ValueError("nothing to annotate: set annotate.pairs or annotate.captions (no usable candidates;"
                             f" skipped: {rejections.to_dict()['skipped']})")
    except BaseException:
        store.close()
        raise
    loopback = acfg.host in LOOPBACK or acfg.host.startswith("127.")
    hosts = [*LOOPBACK, acfg.host] if loopback else None
    app = create_app(store, root, annotators=acfg.annotators, token=acfg.token, detections=detections,
                     allowed_hosts=hosts, min_score=acfg.min_score if acfg.min_score >= 0 else 0.5)
    summary = {"db": str(acfg.db), "items": counts["items"], "new_items": added, "shared": counts["shared"],
               "judgements": counts["judgements"], "skipped": rejections.to_dict()["skipped"]}
    return app, store, summary


def run(acfg: AnnotateConfig) -> dict:
    """Serve until interrupted (then write the export), or export / report agreement (`action`)."""
    import uvicorn

    if acfg.action not in ACTIONS:
        raise ValueError(f"annotate.action must be one of {ACTIONS}, got {acfg.action!r}")
    export_path = acfg.export or str(Path(acfg.db).with_suffix(".jsonl"))
    if acfg.action == "export":
        path = export_judgements(acfg.db, export_path)
        return {"export": str(path), "judgements": sum(1 for line in open(path, encoding="utf-8") if line.strip())}
    if acfg.action == "agreement":
        from .agreement import agreement

        return agreement(acfg.db)
    app, store, summary = build(acfg)
    loopback = acfg.host in LOOPBACK or acfg.host.startswith("127.")
    if not loopback and not acfg.token:
        print(f"annotate: WARNING: listening on {acfg.host} without a token: anyone who can reach this port can "
              "read the images and write judgements (set annotate.token)", file=sys.stderr)
    shown = f"[{acfg.host}]" if ":" in acfg.host else acfg.host
    base = f"http://{shown}:{acfg.port}/?" + (f"token={acfg.token}&" if acfg.token else "")
    who = list(acfg.annotators) or [""]  # open list: the page asks for an id
    url = " , ".join(f"{base}annotator={a}" for a in who[:5]) + (" ..." if len(who) > 5 else "")
    print(f"annotate: {summary['items']} items ({summary['new_items']} new, {summary['shared']} shared), "
          f"{summary['judgements']} judged so far; open {url}", file=sys.stderr, flush=True)
    # uvicorn stops gracefully on SIGINT/SIGTERM and then re-raises the signal to the previous handler: make
    # that handler an exception, so a stop (Ctrl-C or a service manager's SIGTERM) still writes the export.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if main else None
    try:
        uvicorn.run(app, host=acfg.host, port=acfg.port, log_level="warning", access_log=False,
                    server_header=False)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        summary["judgements"] = store.counts()["judgements"]
        summary["export"] = str(export_judgements(store, export_path))
        store.close()
    return summary


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop(signum)
