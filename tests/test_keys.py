"""Stage and cache keys: deterministic over dataclasses/dicts, sensitive to code and file content."""

import os
from dataclasses import dataclass, field

from vlm_dpo import keys
from vlm_dpo.keys import code_fingerprint, file_fingerprint, key, path_fingerprint


@dataclass
class Inner:
    a: int = 1
    names: list[str] = field(default_factory=lambda: ["x"])


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    b: float = 0.5


def test_key_is_deterministic_and_sees_every_field():
    assert key(Outer(), {"z": 1, "y": 2}) == key(Outer(), {"y": 2, "z": 1})  # dict order does not matter
    assert key(Outer()) == key({"inner": {"a": 1, "names": ["x"]}, "b": 0.5})  # a dataclass is its fields
    assert key(Outer()) != key(Outer(inner=Inner(names=["x", "y"])))
    assert key((1, 2)) == key([1, 2]) and key(1, 2) != key(2, 1)
    assert len(key("anything")) == keys.KEY_CHARS


def test_code_fingerprint_covers_modules_and_packages(tmp_path, monkeypatch):
    pkg = tmp_path / "fp_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "one.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    whole, one = code_fingerprint("fp_pkg"), code_fingerprint("fp_pkg.one")
    assert whole != one and code_fingerprint("fp_pkg") == whole
    (pkg / "one.py").write_text("X = 2\n")  # editing the code changes both (in the next process)
    code_fingerprint.cache_clear()
    assert code_fingerprint("fp_pkg") != whole and code_fingerprint("fp_pkg.one") != one
    assert code_fingerprint("vlm_dpo.world") == code_fingerprint(__import__("vlm_dpo.world").world)


def test_file_fingerprint_is_content_not_mtime(tmp_path, monkeypatch):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    fp = file_fingerprint(f)
    os.utime(f, ns=(10**9, 10**9))
    assert file_fingerprint(f) == fp
    f.write_bytes(b"a" * 999 + b"b")
    assert file_fingerprint(f) != fp
    # big files: size + sampled chunks
    monkeypatch.setattr(keys, "WHOLE_FILE_BYTES", 100)
    monkeypatch.setattr(keys, "CHUNK_BYTES", 10)
    big = file_fingerprint(f)
    f.write_bytes(b"a" * 999 + b"c")  # the last chunk is sampled
    assert file_fingerprint(f) != big
    assert path_fingerprint(tmp_path / "missing") is None
    assert path_fingerprint(tmp_path) == path_fingerprint(tmp_path)


def test_paths_in_a_run_folder_count_where_the_run_was_made(tmp_path, monkeypatch):
    import json
    import shutil
    from pathlib import Path

    from vlm_dpo.keys import model_fingerprint, portable_path
    from vlm_dpo.run import RunFolder

    monkeypatch.chdir(tmp_path)
    run = RunFolder("runs/demo")
    run.root.mkdir(parents=True)
    (run.dpo_model).mkdir(parents=True)
    (run.dpo_model / "model.safetensors").write_bytes(b"weights")
    # no origin recorded (a run made before it existed): every path as it is
    assert portable_path("runs/demo/dpo/model") == "runs/demo/dpo/model"
    before = key({"pairs": "runs/demo/pairs/pairs.parquet"}), model_fingerprint("runs/demo/dpo/model")
    run.record_origin()
    assert json.loads(run.origin.read_text()) == {"path": "runs/demo", "resolved": str(tmp_path / "runs" / "demo")}
    # recorded where it is: the identity, so the keys of a run made before stay as they were
    assert (key({"pairs": "runs/demo/pairs/pairs.parquet"}), model_fingerprint("runs/demo/dpo/model")) == before
    shutil.copytree("runs/demo", "elsewhere/copy")
    assert portable_path("elsewhere/copy/dpo/model") == "runs/demo/dpo/model"
    assert portable_path(Path("elsewhere/copy")) == "runs/demo"  # the root itself
    assert portable_path(str(tmp_path / "elsewhere/copy/dpo")) == str(tmp_path / "runs/demo/dpo")  # absolute stays so
    assert (key({"pairs": "elsewhere/copy/pairs/pairs.parquet"}), model_fingerprint("elsewhere/copy/dpo/model")) == before
    # outside any run folder, a hub id, text that is no path: unchanged
    for text in ("elsewhere/other.jsonl", "HuggingFaceTB/SmolVLM-256M-Instruct", "a/b\nc", "x/" * 600, "no-slash"):
        assert portable_path(text) == text
    (Path("elsewhere/copy") / ".origin").write_text("not json")
    assert portable_path("elsewhere/copy/dpo/model") == "elsewhere/copy/dpo/model"  # unreadable: as it is
