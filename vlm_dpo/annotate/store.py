"""The annotation database: SQLite in WAL mode with synchronous=FULL, so a judgement whose request returned is
on disk, and a killed server loses nothing.

Tables:
    meta        key/value: the seed fixed when the database was created (item order and A/B order use it)
    items       the candidates (c1, c2 in canonical order), `order_key` (seeded hash: the order everyone works
                in), `shared` (every annotator sees it; the others go to one annotator each) and `task` ("caption"
                or "vqa"; added to older databases, whose items read as captions until their source is loaded)
    claims      item -> the one annotator a non-shared item belongs to
    judgements  every submission, append-only; the latest per (item, annotator) counts, earlier ones are history
    notes       per (item, annotator), append-only, latest counts: error tags (TAGS), a free reason, a flag
                ("this item is broken"); kept beside the judgements so their export format does not change

Overlap: of each batch of new items, round(overlap * n) (the first by order_key) are shared. With a fixed
annotator list the other items are dealt out at start-up, each to the annotator with the fewest so far; with
an open list (any id) a non-shared item is claimed by the first annotator it is served to, so an id that
appears later still gets work. Resume is a query: the next item is the first by order_key that the annotator
may see and has not judged.

The A/B order is a seeded hash of (seed, item, annotator): stable across reloads and restarts, and recorded
with each judgement (`swapped`), whose `a`/`b` are the captions as shown.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

CHOICES = ("a", "b", "tie", "both_bad")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY, order_key TEXT NOT NULL, shared INTEGER NOT NULL, image_id TEXT NOT NULL,
    image TEXT NOT NULL, prompt TEXT NOT NULL, grounding TEXT, c1 TEXT NOT NULL, c2 TEXT NOT NULL,
    source TEXT, boxes TEXT, added TEXT NOT NULL, task TEXT NOT NULL DEFAULT 'caption');
CREATE INDEX IF NOT EXISTS items_order ON items (order_key);
CREATE TABLE IF NOT EXISTS claims (item_id TEXT PRIMARY KEY REFERENCES items, annotator TEXT NOT NULL,
    time TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS claims_annotator ON claims (annotator);
CREATE TABLE IF NOT EXISTS judgements (
    id INTEGER PRIMARY KEY AUTOINCREMENT, judgement_id TEXT NOT NULL, item_id TEXT NOT NULL REFERENCES items,
    annotator TEXT NOT NULL, revision INTEGER NOT NULL, swapped INTEGER NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad')), edit TEXT, time TEXT NOT NULL,
    ms INTEGER);
CREATE INDEX IF NOT EXISTS judgements_item ON judgements (item_id, annotator);
CREATE INDEX IF NOT EXISTS judgements_annotator ON judgements (annotator);
CREATE TABLE IF NOT EXISTS notes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, item_id TEXT NOT NULL REFERENCES items, annotator TEXT NOT NULL,
    tags TEXT NOT NULL, reason TEXT, flag INTEGER NOT NULL, time TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS notes_item ON notes (item_id, annotator);
"""
TAGS = ("hallucination", "count", "colour", "side", "vague")


class NotVisible(LookupError):
    """The item belongs to another annotator."""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _hash(*parts) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def order_key(seed: int, item_id: str) -> str:
    return _hash("annotate-order", seed, item_id)[:16]


def is_swapped(seed: int, item_id: str, annotator: str) -> bool:
    """Whether this annotator sees c2 as A (and c1 as B)."""
    return int(_hash("annotate-ab", seed, item_id, annotator)[:8], 16) % 2 == 1


def judgement_id(item_id: str, annotator: str) -> str:
    return _hash("annotate-judgement", item_id, annotator)[:16]


class Store:
    """One connection, serialised by a lock (the server's request threads share it)."""

    def __init__(self, path: str | Path, *, seed: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self.con = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self.con.row_factory = sqlite3.Row
        mode = self.con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode!r}); is it on a network drive?")
        self.con.execute("PRAGMA synchronous=FULL")
        self.con.execute("PRAGMA foreign_keys=ON")
        self.con.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self.con.executescript(SCHEMA)
            self._add_task_column()
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('seed', ?)", (str(int(seed)),))
            self.con.execute("INSERT OR IGNORE INTO meta VALUES ('created', ?)", (now(),))
        self.seed = int(self.meta("seed"))

    # -- plumbing --------------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def meta(self, key: str) -> str | None:
        with self._lock:
            row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _write(self):
        """A write transaction: BEGIN IMMEDIATE ... COMMIT (durable on return, synchronous=FULL) or ROLLBACK."""
        store = self

        class _Tx:
            def __enter__(self):
                store._lock.acquire()
                try:
                    store.con.execute("BEGIN IMMEDIATE")
                except BaseException:
                    store._lock.release()
                    raise
                return store.con

            def __exit__(self, exc_type, exc, tb):
                try:
                    store.con.execute("COMMIT" if exc_type is None else "ROLLBACK")
                finally:
                    store._lock.release()
                return False

        return _Tx()

    def _add_task_column(self) -> None:
        """Databases made before items had a task get the column (last, as in SCHEMA), every item a caption; in a
        write transaction, so two servers opening one old database do not both add it."""
        with self._write() as con:
            if "task" not in {r["name"] for r in con.execute("PRAGMA table_info(items)")}:
                con.execute("ALTER TABLE items ADD COLUMN task TEXT NOT NULL DEFAULT 'caption'")

    # -- items -----------------------------------------------------------------------------------------------
    def add_items(self, items: list[dict], overlap: float) -> int:
        """Insert items not yet stored; of these new ones, round(overlap * n) (first by order_key) are shared.
        Stored items take the task their source gives now: one added before the task column read as a caption."""
        if not 0.0 <= overlap <= 1.0:
            raise ValueError(f"annotate.overlap must be within [0, 1], got {overlap}")
        with self._write() as con:
            have = {r[0] for r in con.execute("SELECT item_id FROM items")}
            new = sorted((it for it in items if it["item_id"] not in have),
                         key=lambda it: order_key(self.seed, it["item_id"]))
            n_shared = round(overlap * len(new))
            t = now()
            con.executemany(
                "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(it["item_id"], order_key(self.seed, it["item_id"]), int(i < n_shared), it["image_id"],
                  it["image"], it["prompt"], it.get("grounding"), it["c1"], it["c2"], it.get("source"),
                  json.dumps(it["boxes"]) if it.get("boxes") else None, t, it.get("task") or "caption")
                 for i, it in enumerate(new)])
            con.executemany("UPDATE items SET task = ? WHERE item_id = ?",
                            [(it.get("task") or "caption", it["item_id"]) for it in items if it["item_id"] in have])
        return len(new)

    def item(self, item_id: str) -> dict | None:
        with self._lock:
            row = self.con.execute("SELECT * FROM items WHERE item_id = ?", (item_id,)).fetchone()
        return _item(row) if row else None

    def counts(self) -> dict:
        with self._lock:
            return self._counts()

    def _counts(self) -> dict:
        q = self.con.execute
        return {"items": q("SELECT COUNT(*) FROM items").fetchone()[0],
                "shared": q("SELECT COUNT(*) FROM items WHERE shared = 1").fetchone()[0],
                "judgements": q("SELECT COUNT(*) FROM (SELECT 1 FROM judgements GROUP BY item_id, annotator)").fetchone()[0],
                "submissions": q("SELECT COUNT(*) FROM judgements").fetchone()[0],
                "annotators": [r[0] for r in q("SELECT DISTINCT annotator FROM judgements ORDER BY annotator")]}

    # -- who sees what ---------------------------------------------------------------------------------------
    def assign(self, annotators: list[str]) -> None:
        """Fixed annotator list: deal unclaimed non-shared items out, fewest-first; release unjudged items held by
        ids no longer on the list."""
        if not annotators:
            return
        with self._write() as con:
            marks = ",".join("?" * len(annotators))
            con.execute(f"""DELETE FROM claims WHERE annotator NOT IN ({marks}) AND NOT EXISTS (
                SELECT 1 FROM judgements j WHERE j.item_id = claims.item_id AND j.annotator = claims.annotator)""",
                        annotators)
            load = {a: 0 for a in annotators}
            for a, n in con.execute(f"SELECT annotator, COUNT(*) FROM claims WHERE annotator IN ({marks}) "
                                    "GROUP BY annotator", annotators):
                load[a] = n
            todo = [r[0] for r in con.execute("""SELECT item_id FROM items WHERE shared = 0 AND item_id NOT IN
                (SELECT item_id FROM claims) ORDER BY order_key""")]
            t = now()
            for item_id in todo:
                owner = min(annotators, key=lambda a: (load[a], annotators.index(a)))
                load[owner] += 1
                con.execute("INSERT INTO claims VALUES (?, ?, ?)", (item_id, owner, t))

    _VISIBLE = """(i.shared = 1 OR c.annotator = :who OR (:open AND c.annotator IS NULL))"""

    def next_item(self, annotator: str, *, open_: bool, skip: list[str] | tuple[str, ...] = ()) -> dict | None:
        """The annotator's next unjudged item (claiming it if it is an unclaimed non-shared one), or None; items
        in `skip` (skipped for now) are passed over."""
        skip = list(skip)[:500]
        marks = ",".join("?" * len(skip))
        with self._write() as con:
            row = con.execute(f"""SELECT i.*, c.annotator AS owner FROM items i
                LEFT JOIN claims c ON c.item_id = i.item_id
                WHERE {self._VISIBLE.replace(':who', '?').replace(':open', '?')} AND NOT EXISTS (
                    SELECT 1 FROM judgements j WHERE j.item_id = i.item_id AND j.annotator = ?)
                    {f"AND i.item_id NOT IN ({marks})" if skip else ""}
                ORDER BY i.order_key LIMIT 1""", [annotator, int(open_), annotator, *skip]).fetchone()
            if row is None:
                return None
            if not row["shared"] and row["owner"] is None:
                con.execute("INSERT INTO claims VALUES (?, ?, ?)", (row["item_id"], annotator, now()))
            return _item(row)

    def progress(self, annotator: str, *, open_: bool) -> dict:
        with self._lock:
            row = self.con.execute(f"""SELECT COUNT(*) AS total, SUM(EXISTS (SELECT 1 FROM judgements j
                    WHERE j.item_id = i.item_id AND j.annotator = :who)) AS done
                FROM items i LEFT JOIN claims c ON c.item_id = i.item_id WHERE {self._VISIBLE}""",
                                   {"who": annotator, "open": int(open_)}).fetchone()
        return {"done": int(row["done"] or 0), "total": int(row["total"] or 0)}

    # -- judgements ------------------------------------------------------------------------------------------
    def view(self, item: dict, annotator: str) -> dict:
        """The item as this annotator sees it: captions as A/B in their order."""
        swapped = is_swapped(self.seed, item["item_id"], annotator)
        a, b = (item["c2"], item["c1"]) if swapped else (item["c1"], item["c2"])
        return item | {"a": a, "b": b, "swapped": swapped}

    def save(self, item_id: str, annotator: str, choice: str, edit: str | None, *, open_: bool,
             ms: int | None = None) -> dict:
        """Store a judgement; committed (and fsynced) when this returns. KeyError: no such item; NotVisible:
        the item belongs to another annotator."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        edit = (edit or "").strip() or None
        with self._write() as con:
            row = con.execute("""SELECT i.*, c.annotator AS owner FROM items i
                LEFT JOIN claims c ON c.item_id = i.item_id WHERE i.item_id = ?""", (item_id,)).fetchone()
            if row is None:
                raise KeyError(item_id)
            if not row["shared"]:
                if row["owner"] is None and open_:
                    con.execute("INSERT INTO claims VALUES (?, ?, ?)", (item_id, annotator, now()))
                elif row["owner"] != annotator:
                    raise NotVisible(item_id)
            v = self.view(_item(row), annotator)
            revision = con.execute("SELECT COUNT(*) FROM judgements WHERE item_id = ? AND annotator = ?",
                                   (item_id, annotator)).fetchone()[0] + 1
            jid, t = judgement_id(item_id, annotator), now()
            con.execute("""INSERT INTO judgements (judgement_id, item_id, annotator, revision, swapped, a, b, choice,
                edit, time, ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                        (jid, item_id, annotator, revision, int(v["swapped"]), v["a"], v["b"], choice, edit, t, ms))
        return {"judgement_id": jid, "revision": revision, "time": t}

    def judgement(self, item_id: str, annotator: str) -> dict | None:
        with self._lock:
            row = self.con.execute("""SELECT choice, edit, revision, time FROM judgements WHERE item_id = ? AND
            annotator = ? ORDER BY id DESC LIMIT 1""", (item_id, annotator)).fetchone()
        return dict(row) if row else None

    def save_note(self, item_id: str, annotator: str, tags: list[str], reason: str | None, flag: bool) -> dict:
        bad = [t for t in tags if t not in TAGS]
        if bad:
            raise ValueError(f"tags must be among {TAGS}, got {bad}")
        with self._write() as con:
            if con.execute("SELECT 1 FROM items WHERE item_id = ?", (item_id,)).fetchone() is None:
                raise KeyError(item_id)
            t = now()
            con.execute("INSERT INTO notes (item_id, annotator, tags, reason, flag, time) VALUES (?, ?, ?, ?, ?, ?)",
                        (item_id, annotator, json.dumps(sorted(set(tags))), (reason or "").strip() or None,
                         int(flag), t))
        return {"time": t}

    def note(self, item_id: str, annotator: str) -> dict | None:
        with self._lock:
            row = self.con.execute("""SELECT tags, reason, flag, time FROM notes WHERE item_id = ? AND annotator = ?
                ORDER BY id DESC LIMIT 1""", (item_id, annotator)).fetchone()
        return {"tags": json.loads(row["tags"]), "reason": row["reason"], "flag": bool(row["flag"]),
                "time": row["time"]} if row else None

    def notes(self) -> list[dict]:
        """The latest note per (item, annotator)."""
        with self._lock:
            rows = self.con.execute("""SELECT n.* FROM notes n WHERE n.id = (SELECT MAX(id) FROM notes k
                WHERE k.item_id = n.item_id AND k.annotator = n.annotator) ORDER BY n.id""").fetchall()
        return [{"item_id": r["item_id"], "annotator": r["annotator"], "tags": json.loads(r["tags"]),
                 "reason": r["reason"], "flag": bool(r["flag"]), "time": r["time"]} for r in rows]

    def history(self, annotator: str) -> list[dict]:
        """The annotator's judged items, most recent first: latest judgement (+ note) per item, revisions."""
        with self._lock:
            rows = self.con.execute("""SELECT j.item_id, j.a, j.b, j.choice, j.edit, j.time, j.revision, i.image_id
                FROM judgements j JOIN items i ON i.item_id = j.item_id WHERE j.annotator = ? AND j.id = (
                    SELECT MAX(id) FROM judgements k WHERE k.item_id = j.item_id AND k.annotator = j.annotator)
                ORDER BY j.id DESC""", (annotator,)).fetchall()
        return [dict(r) | {"note": self.note(r["item_id"], annotator)} for r in rows]

    def latest(self) -> list[dict]:
        """The latest judgement per (item, annotator), as judgement records (pairs/io.py) plus our columns."""
        with self._lock:
            rows = self.con.execute("""SELECT j.*, i.image_id, i.image, i.prompt, i.grounding, i.task, i.c1, i.c2
                FROM judgements j JOIN items i ON i.item_id = j.item_id
                WHERE j.id = (SELECT MAX(id) FROM judgements k WHERE k.item_id = j.item_id
                              AND k.annotator = j.annotator)
                ORDER BY j.id""").fetchall()
        return [{"judgement_id": r["judgement_id"], "annotator": r["annotator"], "image_id": r["image_id"],
                 "image": r["image"], "prompt": r["prompt"], "grounding": r["grounding"], "task": r["task"],
                 "a": r["a"], "b": r["b"], "choice": r["choice"], "edit": r["edit"], "time": r["time"],
                 "item_id": r["item_id"], "swapped": bool(r["swapped"]), "revision": r["revision"]} for r in rows]


def _item(row) -> dict:
    return {"item_id": row["item_id"], "image_id": row["image_id"], "image": row["image"], "prompt": row["prompt"],
            "grounding": row["grounding"], "c1": row["c1"], "c2": row["c2"], "source": row["source"],
            "shared": bool(row["shared"]), "boxes": json.loads(row["boxes"]) if row["boxes"] else None,
            "task": row["task"]}


def _open(db) -> tuple[Store, bool]:
    if isinstance(db, Store):
        return db, False
    if not Path(db).exists():
        raise FileNotFoundError(f"{db}: no annotation database")
    return Store(db), True


def judgement_records(db) -> list[dict]:
    store, close = _open(db)
    try:
        return store.latest()
    finally:
        if close:
            store.close()


def export_judgements(db, path: str | Path) -> Path:
    """Latest judgement per (item, annotator) -> JSONL (atomic), consumable by `pairs_from_judgements`."""
    from ..records import write_jsonl_atomic

    return write_jsonl_atomic(path, judgement_records(db))
