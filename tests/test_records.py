import json

import pytest

from vlm_dpo.records import RecordError, ResumableJsonl, read_jsonl, write_jsonl_atomic


def test_atomic_write_and_read(tmp_path):
    p = write_jsonl_atomic(tmp_path / "a.jsonl", [{"id": 1}, {"id": 2}])
    assert [r["id"] for r in read_jsonl(p)] == [1, 2]
    assert not (tmp_path / "a.jsonl.tmp").exists()


def test_malformed_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"id": 1}\n{"id": 2\n{"id": 3}\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: not valid JSON"):
        list(read_jsonl(p))
    p.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(RecordError, match=r"bad.jsonl:2: expected a JSON object"):
        list(read_jsonl(p))


def test_resumable_survives_interruption_and_torn_line(tmp_path):
    out = tmp_path / "s.jsonl"
    with pytest.raises(KeyboardInterrupt):
        with ResumableJsonl(out, key="id") as w:
            w.write_many([{"id": "a"}, {"id": "b"}])
            raise KeyboardInterrupt
    assert not out.exists()
    # simulate a kill in the middle of writing a line
    with open(str(out) + ".partial", "a") as f:
        f.write('{"id": "c", "x": ')
    with ResumableJsonl(out, key="id") as w:
        assert w.done == {"a", "b"} and not w.finished
        w.write_many([{"id": "c"}])
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c"]
    with ResumableJsonl(out, key="id") as w:
        assert w.finished and w.done == {"a", "b", "c"}
    assert json.loads(out.read_text().splitlines()[2]) == {"id": "c"}
