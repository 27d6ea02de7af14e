"""The notebooks execute headless on a tiny run and fail if any cell fails; they are stored without outputs."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: strip outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes_on_a_tiny_run(path, pipeline_run, monkeypatch, tmp_path):
    _, out, _ = pipeline_run
    monkeypatch.setenv("VLM_DPO_RUN", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors


def _outputs(nb):
    """Per code cell: (source, text of stream/HTML/plain outputs, number of PNG figures)."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        text, pngs = [], 0
        for o in c.outputs:
            if o.output_type == "stream":
                text.append(o.text)
            elif o.output_type in ("display_data", "execute_result"):
                text.append(o.data.get("text/html", "") + o.data.get("text/plain", ""))
                pngs += "image/png" in o.data
        out.append((c.source, "".join(text), pngs))
    return out


def _execute(name, pipeline_run, monkeypatch, tmp_path):
    _, out, _ = pipeline_run
    monkeypatch.setenv("VLM_DPO_RUN", str(out))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # figures shown as in Jupyter
    nb = nbformat.read(Path(__file__).resolve().parents[1] / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    return _outputs(nb)


def test_pairs_notebook_shows_labelled_figures(pipeline_run, monkeypatch, tmp_path):
    cells = _execute("01_explore_pairs.ipynb", pipeline_run, monkeypatch, tmp_path)
    figures = [c for c in cells if "show_pair" in c[0]][0]
    assert figures[2] >= 2  # one figure per pair kind
    allout = "".join(t for _, t, _ in cells)
    assert "TqdmWarning" not in allout and "Traceback" not in allout
    assert "boxes drawn at score >=" in allout


def test_pair_figure_labels_boxes_by_source_and_threshold(pipeline_run):
    import matplotlib

    matplotlib.use("Agg")
    from vlm_dpo import explore

    _, out, _ = pipeline_run
    boxes = explore.pair_boxes(out)
    df = explore.pairs_frame(out)
    row = df.iloc[0]
    boxes["detections"][row["image_id"]] = [{"label": "cup", "score": 0.9, "box": [1, 1, 20, 20]},
                                            {"label": "ball", "score": 0.01, "box": [2, 2, 30, 30]}]
    fig = explore.show_pair(row, explore.image_root_of(out), boxes)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    truth = boxes["truth"][row["image_id"]]
    assert sum(t.startswith("GT ") for t in texts) == len(truth) > 0
    assert "det cup 0.90" in texts and not any("ball 0.01" in t for t in texts)  # below the threshold: not drawn
    assert any(t.startswith("judge flagged") for t in texts)
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert legend[0] == "ground truth" and legend[1].startswith("detector (score >=")


def test_eval_notebook_tables_and_logratio_view(pipeline_run, monkeypatch, tmp_path):
    cells = _execute("02_training_and_eval.ipynb", pipeline_run, monkeypatch, tmp_path)
    table = [t for s, t, _ in cells if "metrics_table" in s][0]
    assert re.search(r"\d\.\d{3} \[\d\.\d{3}, \d\.\d{3}\]", table), table[:500]  # rounded, with intervals
    assert not re.search(r"\d\.\d{5,}", table)
    view = [t for s, t, _ in cells if "logratio_view" in s][0]
    assert view.count('<img alt="pair image"') == 3 and view.count("<b>prompt</b>") == 3
    assert view.count("per-token log-ratios:   0%") == 1 and "it/s]" in view  # one progress bar, updated in place
    assert "Loading weights" not in view and "TqdmWarning" not in view
    vqa = [t for s, t, _ in cells if "vqa_table" in s][0]  # the robot's questions: accuracy per family, POPE both ways
    assert "accuracy counting" in vqa and "accuracy overall" in vqa and "pope_f1 (no_context)" in vqa
    examples = [(t, n) for s, t, n in cells if "show_answers" in s][0]
    assert "questions;" in examples[0] and examples[1] >= 1  # at least one judged example, drawn


def test_answer_figure_shows_each_models_judged_answer(pipeline_run):
    import matplotlib

    matplotlib.use("Agg")
    from vlm_dpo import explore

    _, out, _ = pipeline_run
    qa = explore.vqa_frame(out)
    assert {"sft", "dpo"} <= {c[len("verdict_"):] for c in qa.columns if c.startswith("verdict_")}
    assert qa["image"].notna().all() and qa.groupby(["image_id", "family"]).size().max() == 1
    row = qa.iloc[0]
    fig = explore.show_answers(row, explore.image_root_of(out), explore.pair_boxes(out), models=["sft", "dpo"])
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert any(row["question"] in t for t in texts)
    assert f"SFT ({row['verdict_sft']}):\n{row['answer_sft']}" in texts
    assert f"DPO ({row['verdict_dpo']}):\n{row['answer_dpo']}" in texts
    assert any(t.startswith("GT ") for t in texts)  # the image's ground-truth boxes
