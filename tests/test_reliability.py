"""Reliability (issue 18): no stale reuse, no torn state, no silent corruption, a clear error for bad input."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlm_dpo.cli import main as cli_main
from vlm_dpo.config import ConfigError, load_config


# ---- bad numbers and bad YAML are one clear config error --------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("train.batch_size=-4", "train.batch_size"), ("train.batch_size=0", "train.batch_size"),
    ("describe.batch_size=-1", "describe.batch_size"), ("train.max_steps=-5", "train.max_steps"),
    ("train.lr=0", "train.lr"), ("describe.n_samples=-1", "describe.n_samples"),
    ("describe.temperature=-0.5", "describe.temperature"), ("pairs.val_fraction=1.5", "pairs.val_fraction"),
    ("eval.temperature=-1", "eval.temperature"), ("eval.noise_drop=2", "eval.noise_drop"),
    ("vlm.sft.batch_size=0", "vlm.sft.batch_size"), ("vlm.hallucination.count=-0.1", "vlm.hallucination.count"),
    ("detector.conf=1.2", "detector.conf"), ("rft.steps=-1", "rft.steps"), ("pairs.mine.min_margin=-1",
                                                                          "pairs.mine.min_margin"),
    ("world.n_train=-3", "world.n_train"), ("ground.min_score=3", "ground.min_score"),
    ("train.loss.beta=-1", "train.loss"), ("pairs.vqa_adversarial=1.2", "pairs.vqa_adversarial"),
])
def test_out_of_range_numbers_are_refused_at_load_with_the_full_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


def test_bad_number_is_one_line_from_the_cli(capsys, tmp_path):
    # (cache and run folder in tmp_path: without the check, the command would start working)
    from tiny_config import TINY_OVERRIDES

    assert cli_main(["describe", *TINY_OVERRIDES, "describe.batch_size=-1", f"cache_dir={tmp_path}",
                     f"out={tmp_path}/run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "config error" in err[0] and "describe.batch_size" in err[0]


@pytest.mark.parametrize("text, match", [("describe:\n  n_samples: [1,\n", "not valid YAML.*line"),
                                         ("- 1\n- 2\n", "top level must be a mapping")])
def test_broken_yaml_files_are_a_clean_config_error(tmp_path, capsys, text, match):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)
    assert cli_main(["describe", str(path), f"cache_dir={tmp_path}", f"out={tmp_path}/run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlm-dpo: config error:") and "bad.yaml" in err[0]


def test_broken_yaml_override_is_a_clean_config_error(capsys, tmp_path):
    with pytest.raises(ConfigError, match="override.*not valid YAML"):
        load_config(None, ["eval.models={sft: [1,"])
    assert cli_main(["eval", "describe.n_samples=[1,", f"cache_dir={tmp_path}", f"out={tmp_path}/run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vlm-dpo: config error:")


def test_defaults_and_shipped_configs_still_load():
    for path in sorted(Path("configs").glob("*.yaml")):
        load_config(path)


# ---- pair imports: no silent drop, no NaN, no abort on one bad byte, a length limit ----------------------

def _import_root(tmp_path):
    root = tmp_path / "root"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 20, 30)).save(root / "images" / "a.png")
    return root


def _build_from_imports(tmp_path, rows: list[bytes], **cfg):
    from vlm_dpo.pairs.stage import PairsConfig, build_pairs

    root = _import_root(tmp_path)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(r + b"\n" for r in rows))
    out = tmp_path / "pairs"
    stats = build_pairs(PairsConfig(captions="", detections="", image_root=str(root), imports=[str(path)],
                                    val_fraction=0.0, **cfg), out, progress=False)
    return stats, out, path


ROW = {"image": "images/a.png", "prompt": "Describe.", "chosen": "a cup.", "rejected": "a ball."}


def test_two_different_pairs_with_one_pair_id_are_not_a_silent_duplicate(tmp_path):
    rows = [json.dumps(ROW | {"pair_id": "same"}).encode(),
            json.dumps(ROW | {"pair_id": "same", "chosen": "two cups."}).encode(),
            json.dumps(ROW | {"pair_id": "same"}).encode()]  # a true duplicate of the first
    stats, out, path = _build_from_imports(tmp_path, rows)
    skipped = stats["rejections"]["skipped"]
    assert skipped.get("pair_id_conflict") == 1 and skipped.get("duplicate", 0) == 1
    first = [e for e in stats["rejections"]["first"] if e["reason"] == "pair_id_conflict"][0]
    assert first["where"] == f"{path}:2" and "already used" in first["row"]


def test_nan_and_infinite_scores_are_rejected_and_stats_stay_valid_json(tmp_path):
    rows = [json.dumps(ROW).encode(),
            json.dumps(ROW | {"chosen": "two cups.", "margin": float("nan")}).encode(),
            json.dumps(ROW | {"chosen": "three cups.", "scores": {"chosen": {"score": float("inf")}}}).encode(),
            (json.dumps(ROW | {"chosen": "four cups."})[:-1] + ', "margin": Infinity}').encode()]
    stats, out, path = _build_from_imports(tmp_path, rows)
    assert stats["pairs"] == 1 and stats["rejections"]["skipped"] == {"non_finite_score": 3}
    assert [e["where"] for e in stats["rejections"]["first"]] == [f"{path}:{i}" for i in (2, 3, 4)]
    json.loads((out / "stats.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in stats.json"))


def test_a_non_utf8_byte_skips_and_counts_its_row(tmp_path):
    bad = json.dumps(ROW | {"chosen": "two cups."}).encode().replace(b"two", b"tw\xff")
    stats, out, path = _build_from_imports(tmp_path, [json.dumps(ROW).encode(), bad])
    assert stats["pairs"] == 1 and stats["rejections"]["skipped"] == {"malformed_row": 1}
    (e,) = stats["rejections"]["first"]
    assert e["where"] == f"{path}:2" and "not UTF-8" in e["row"]


def test_a_non_utf8_byte_in_a_csv_skips_its_row(tmp_path):
    from vlm_dpo.pairs.dataset import Rejections
    from vlm_dpo.pairs.io import import_pairs

    root = _import_root(tmp_path)
    path = tmp_path / "in.csv"
    path.write_bytes(b"image,prompt,chosen,rejected\nimages/a.png,Describe.,a cup.,a ball.\n"
                     b"images/a.png,Describe.,tw\xff cups.,a ball.\n")
    rej = Rejections()
    assert len(import_pairs(path, root, rejections=rej)) == 1
    assert rej.counts == {"malformed_row": 1} and rej.examples[0]["where"] == f"{path}:3"


def test_a_runaway_caption_is_rejected_at_import_by_default(tmp_path):
    from vlm_dpo.pairs.dataset import MAX_CHARS

    huge = " ".join(["cup"] * 10_000)
    stats, _, path = _build_from_imports(tmp_path, [json.dumps(ROW).encode(),
                                                    json.dumps(ROW | {"chosen": huge}).encode()])
    assert stats["pairs"] == 1 and stats["rejections"]["skipped"] == {"too_long": 1}
    assert stats["rejections"]["first"][0]["where"] == f"{path}:2"
    assert load_config(None, []).pairs.max_chars == MAX_CHARS
    stats, _, _ = _build_from_imports(tmp_path / "nolimit", [json.dumps(ROW | {"chosen": huge}).encode()], max_chars=0)
    assert stats["pairs"] == 1


# ---- images ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grey_png_is_scaled_not_clipped_to_white(tmp_path, mode):
    from vlm_dpo.images import open_image

    ramp = (np.arange(64, dtype=np.uint16)[None, :].repeat(8, 0) * 1040)  # 0 .. 65520
    im = Image.fromarray(ramp)  # mode I;16 (a 16-bit PNG); mode I as TIFF (PNG cannot hold it)
    path = tmp_path / ("grey16.png" if mode == "I;16" else "grey32.tiff")
    (im if mode == "I;16" else im.convert("I")).save(path)
    rgb = np.asarray(open_image(path))
    assert rgb.shape == (8, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[0, -1, 0] == 255 and abs(int(rgb[0, 32, 0]) - round(32 * 1040 / 257)) <= 1
    assert (rgb[..., 0] == 255).mean() < 0.05  # not all white


def test_a_folder_whose_only_image_is_an_outward_symlink_says_why(tmp_path):
    from vlm_dpo.images import DataError, folder_items

    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cam.png").symlink_to(tmp_path / "outside.png")
    with pytest.raises(DataError, match="no images.*symlinked image.*outside the folder.*cam.png"), \
            pytest.warns(UserWarning, match="refused"):
        folder_items(tmp_path / "photos")


# ---- stale reuse: a stage file is redone when what made it changed ----------------------------------------

def _photos(folder: Path, names, colour=(90, 60, 30)):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        Image.new("RGB", (96, 96), colour).save(folder / f"{n}.png")
    return folder


def test_detect_redoes_its_file_when_the_folder_changes(tiny_cfg, tmp_path):
    from vlm_dpo import detect
    from vlm_dpo.records import read_jsonl
    from vlm_dpo.run import RunFolder

    tiny_cfg.data.images = str(_photos(tmp_path / "photos", ["a", "b"]))
    ids = lambda: sorted(r["image_id"] for r in read_jsonl(detect.run(tiny_cfg, RunFolder.setup(tiny_cfg),  # noqa: E731
                                                                      progress=False)))
    assert ids() == ["a", "b"]
    (tmp_path / "photos" / "a.png").unlink()
    _photos(tmp_path / "photos", ["c"])
    assert ids() == ["b", "c"]  # added and deleted images
    tiny_cfg.data.images = str(_photos(tmp_path / "other", ["x"]))
    assert ids() == ["x"]  # another folder, same --out
    _photos(tmp_path / "other", ["x"], colour=(10, 200, 10))  # same name, new pixels
    path = detect.run(tiny_cfg, RunFolder.setup(tiny_cfg), progress=False)
    settings = json.loads(path.with_name(path.name + ".settings.json").read_text())
    assert settings["images"] == __import__("vlm_dpo.keys", fromlist=["x"]).images_fingerprint(
        [{"image_id": "x", "file": "x.png", "path": str(tmp_path / "other" / "x.png")}])


def test_detect_redoes_its_file_for_other_detector_weights(tiny_cfg, tmp_path):
    import shutil

    from vlm_dpo import detect
    from vlm_dpo.records import settings_path
    from vlm_dpo.run import RunFolder

    weights = tmp_path / "det.pt"
    shutil.copy(detect.detector_weights(tiny_cfg), weights)
    tiny_cfg.detector.model = str(weights)
    path = detect.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    before = json.loads(settings_path(path).read_text())["detector"]
    with weights.open("ab") as f:
        f.write(b"\0")  # a retrained checkpoint at the same path
    detect.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    assert json.loads(settings_path(path).read_text())["detector"] != before


def test_describe_with_other_settings_does_not_return_the_old_file(tiny_cfg, caplog):
    from vlm_dpo import describe
    from vlm_dpo.records import read_jsonl
    from vlm_dpo.run import RunFolder

    path = describe.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    assert {len(r["samples"]) for r in read_jsonl(path)} == {2}
    tiny_cfg.describe.n_samples, tiny_cfg.describe.temperature = 1, 0.3
    with caplog.at_level("WARNING", logger="vlm_dpo"):
        path = describe.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    recs = list(read_jsonl(path))
    assert {len(r["samples"]) for r in recs} == {1} and {r["generation"]["temperature"] for r in recs} == {0.3}
    assert "n_samples: 2 -> 1" in caplog.text and "temperature: 1.0 -> 0.3" in caplog.text


def test_describe_redoes_captions_of_a_model_retrained_at_the_same_path(tiny_cfg, tmp_path):
    import shutil

    from vlm_dpo import describe
    from vlm_dpo.embedded import ensure_vlm
    from vlm_dpo.records import settings_path
    from vlm_dpo.run import RunFolder

    model = tmp_path / "model"
    shutil.copytree(ensure_vlm(tiny_cfg, progress=False)["model"], model)
    tiny_cfg.vlm.model = str(model)
    path = describe.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    before = json.loads(settings_path(path).read_text())["model"]
    (model / "extra.json").write_text("{}")  # the folder's content changed
    describe.run(tiny_cfg, RunFolder.setup(tiny_cfg), "val", progress=False)
    assert json.loads(settings_path(path).read_text())["model"] != before


# ---- torn state ------------------------------------------------------------------------------------------------

def test_disk_full_mid_batch_then_rerun_writes_each_image_once(tiny_cfg, monkeypatch, capsys):
    """ENOSPC while a batch is written: one clear CLI line, no temp files, and the rerun neither loses nor
    duplicates a record."""
    from tiny_config import TINY_OVERRIDES

    from vlm_dpo import records
    from vlm_dpo.records import read_jsonl
    from vlm_dpo.run import RunFolder

    args = ["describe", *TINY_OVERRIDES, f"cache_dir={tiny_cfg.cache_dir}", f"out={tiny_cfg.out}", "data.split=val",
            "--quiet"]
    real_dumps, calls = json.dumps, []

    def filling_disk(obj, *a, **kw):
        if isinstance(obj, dict) and "samples" in obj:
            calls.append(1)
            if len(calls) == 6:  # the second record of the second batch (batches of 4)
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_dumps(obj, *a, **kw)

    monkeypatch.setattr(records.json, "dumps", filling_disk)
    assert cli_main(args) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [e for e in err.splitlines() if "error" in e.lower()]  # (progress bars of the cache build aside)
    assert line.startswith("vlm-dpo describe: error:") and "no space left on device" in line, err
    run = RunFolder(tiny_cfg.out)
    assert not list(run.root.rglob("*.tmp"))
    monkeypatch.setattr(records.json, "dumps", real_dumps)
    assert cli_main(args) == 0
    ids = [r["image_id"] for r in read_jsonl(run.captions("val"))]
    assert len(ids) == len(set(ids)) == tiny_cfg.world.n_val


def test_a_failed_write_is_cut_back_to_the_last_whole_batch(tmp_path, monkeypatch):
    from vlm_dpo import records
    from vlm_dpo.records import ResumableJsonl, StorageError, read_jsonl

    out = tmp_path / "out.jsonl"
    real_write = os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError, match="out.jsonl.partial: no space left"):
        with ResumableJsonl(out, key="id") as w:
            w.write_many([{"id": 1}, {"id": 2}])
            monkeypatch.setattr(records.os, "write", half_then_full)
            w.write_many([{"id": 3}, {"id": 4}])
    monkeypatch.setattr(records.os, "write", real_write)
    assert [r["id"] for r in read_jsonl(out.with_name("out.jsonl.partial"))] == [1, 2]
    with ResumableJsonl(out, key="id") as w:
        assert w.done == {"1", "2"}
        w.write_many([{"id": 1}, {"id": 2}, {"id": 3}, {"id": 4}])  # a regenerated batch is not appended twice
    assert [r["id"] for r in read_jsonl(out)] == [1, 2, 3, 4]


def test_atomic_writes_leave_no_temp_file_when_the_disk_is_full(tmp_path, monkeypatch):
    from pathlib import Path as P

    from vlm_dpo.records import StorageError, write_jsonl_atomic, write_text_atomic

    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(P, "write_text", full)
    with pytest.raises(StorageError):
        write_text_atomic(tmp_path / "a.json", "{}")
    monkeypatch.setattr(os, "fsync", lambda fd: full(None))
    with pytest.raises(StorageError):
        write_jsonl_atomic(tmp_path / "b.jsonl", [{"x": 1}])
    assert list(tmp_path.iterdir()) == []


# ---- eval: results keyed by model content; metrics.json merged, never replaced by a partial one -----------

def test_eval_merges_into_a_finished_run_and_keys_results_by_model_content(tiny_cfg, tmp_path):
    import shutil

    from vlm_dpo.embedded import ensure_vlm
    from vlm_dpo.eval import stage
    from vlm_dpo.run import RunFolder

    cfg = tiny_cfg
    cfg.eval.limit, cfg.eval.n_samples, cfg.eval.bootstrap, cfg.eval.robustness = 3, 1, 10, False
    cfg.eval.clip_model = ""
    sft = ensure_vlm(cfg, progress=False)["model"]
    cfg.eval.models = {"sft": sft, "dpo": sft}
    run = RunFolder.setup(cfg)
    stage.run(cfg, run, progress=False)
    finished = json.loads(run.metrics.read_text())
    finished |= {"pairs": {"pairs": 7}, "train": {"model": "x"}}  # as a pipeline writes it
    run.metrics.write_text(json.dumps(finished))

    cfg.eval.models = {"sft": sft}  # `vlm-dpo eval` on the finished run
    stage.run(cfg, run, progress=False)
    after = json.loads(run.metrics.read_text())
    assert set(after["models"]) == {"sft", "dpo"} and after["pairs"] == {"pairs": 7} and after["train"]
    assert after["models"]["dpo"] == finished["models"]["dpo"]

    other = tmp_path / "other_model"  # another model under the name "sft": evaluated, not the cached numbers
    shutil.copytree(sft, other)
    (other / "note.txt").write_text("retrained")
    cfg.eval.models = {"sft": str(other)}
    stage.run(cfg, run, progress=False)
    assert json.loads(run.metrics.read_text())["models"]["sft"]["model"] == str(other)

    cfg.eval.split = "val"  # other images: refused, naming what changed, the finished results untouched
    with pytest.raises(ValueError, match="another evaluation.*eval.split: 'test' -> 'val'"):
        stage.run(cfg, run, progress=False)
    assert set(json.loads(run.metrics.read_text())["models"]) == {"sft", "dpo"}


# ---- worker processes ------------------------------------------------------------------------------------

def test_a_killed_worker_is_a_clear_error_not_a_broken_pool_traceback():
    from vlm_dpo.parallel import WorkerDiedError, run_parallel

    with pytest.raises(WorkerDiedError, match="worker process running abort died.*rerun to resume"):
        run_parallel(os.abort, [(), ()], workers=2)


def _spawned_workers(parent: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            try:
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(int(pid))
            except OSError:
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed():
    code = ("import time\nfrom vlm_dpo.parallel import run_parallel\n"
            "run_parallel(time.sleep, [(120,), (120,)], workers=2)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], env=os.environ | {"OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 60
        while len(workers := _spawned_workers(parent.pid)) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert len(workers) == 2
        time.sleep(4)  # the workers are set up and sleeping in their job
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 15
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "workers outlived their parent"


# ---- annotation server: the body cap holds for the stream; errors never echo the body ----------------------

@pytest.fixture
def annotate_client(tmp_path):
    from annotate.conftest import make_data
    from fastapi.testclient import TestClient

    from vlm_dpo.annotate import AnnotateConfig
    from vlm_dpo.annotate.app import build

    data = make_data(tmp_path)
    app, store, _ = build(AnnotateConfig(captions=str(data.captions), detections=str(data.detections),
                                         image_root=str(data.root), db=str(tmp_path / "j.sqlite"), overlap=1.0),
                          log=lambda *a, **k: None)
    yield TestClient(app, base_url="http://127.0.0.1:8765")
    store.close()


def test_a_chunked_body_over_the_cap_is_refused_without_reading_it_all(annotate_client):
    """A real server and a raw socket: chunked transfer, no Content-Length; the answer must come (413) long
    before the client has sent everything."""
    import select
    import socket
    import threading

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(annotate_client.app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not (server.started and server.servers) and time.time() < deadline:
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    sent, reply = 0, b""
    try:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # little room in flight
            sock.connect(("127.0.0.1", port))
            sock.sendall(f"POST /api/judgements HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: "
                         "application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"%x\r\n%s\r\n" % (16384, b" " * 16384)
            while sent < 20 * 1024 * 1024:  # 20 MB if the server reads it all
                if select.select([sock], [], [], 0)[0]:
                    break
                try:
                    sock.sendall(chunk)
                except OSError:  # the server answered and closed
                    break
                sent += 16384
            sock.settimeout(10)
            reply = sock.recv(4096)
    finally:
        server.should_exit = True
        thread.join(10)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 8 * 1024 * 1024  # answered while the client was still sending (kernel buffers aside)


def test_validation_errors_do_not_echo_the_body(annotate_client):
    secret = "s3cr3t-" + "x" * 5000
    r = annotate_client.post("/api/judgements", json={"item_id": secret, "annotator": "ann", "choice": "a"})
    assert r.status_code == 422
    assert "s3cr3t" not in r.text and r.json()["detail"][0]["loc"] == ["body", "item_id"]
    r = annotate_client.post("/api/judgements", content=b'{"item_id": "s3cr3t", ', headers={"content-type":
                                                                                             "application/json"})
    assert r.status_code == 422 and "s3cr3t" not in r.text
