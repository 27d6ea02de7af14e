"""The report's "Robot questions" section: accuracy per question family and model (95% intervals over images),
false-premise rejection beside its control (vqa/control.py) and yes-ratio, then questions the two compared models
answered differently, each with both answers and their verdicts (from eval/<model>.vqa.jsonl, eval/vqa.py)."""

from __future__ import annotations

import html

from .records import read_jsonl
from .run import RunFolder
from .vqa.questions import FAMILIES


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.0f}%"


def vqa_section(run: RunFolder, models: dict, base: str, after: str | None, n_examples: int = 8) -> str:
    names = [n for n in models if models[n].get("vqa")]
    if not names:
        return ""
    rows = []
    for family in [f for f in FAMILIES if any(f in models[n]["vqa"]["accuracy"] for n in names)] + ["overall"]:
        cells = []
        for n in names:
            v = models[n]["vqa"]
            ci = (v.get("ci") or {}).get(family)
            cells.append(f"<td>{_pct(v['accuracy'].get(family))}"
                         + (f' <span class="note">[{_pct(ci[0])}, {_pct(ci[1])}]</span>' if ci else "") + "</td>")
        rows.append(f"<tr><td>{'<b>overall</b>' if family == 'overall' else family}</td>{''.join(cells)}</tr>")
    for key, label in (("false_premise_rejection", "false premise refused"),
                       ("true_premise_refusal", "the same words about a kind that is there: refused"),
                       ("premise_balanced_accuracy", "premise checked (balanced accuracy; 50% = by phrasing)"),
                       ("yes_ratio", "yes-ratio (yes/no)"), ("pope_f1", "POPE F1 (adversarial)")):
        if key.startswith(("true_premise", "premise_")) and all(models[n]["vqa"].get(key) is None for n in names):
            continue  # evaluated before the premise control existed, or without it
        rows.append(f"<tr><td>{label}</td>" + "".join(f"<td>{_pct(models[n]['vqa'].get(key))}</td>" for n in names)
                    + "</tr>")
    # The same POPE probes without the context: a model that only echoes "Detected: ..." falls to all-yes here.
    if any("no_context" in (models[n]["vqa"].get("pope_f1_by_context") or {}) for n in names):
        rows.append("<tr><td>POPE F1 (adversarial, no context)</td>" + "".join(
            f"<td>{_pct((models[n]['vqa'].get('pope_f1_by_context') or {}).get('no_context'))}</td>" for n in names)
            + "</tr>")
    table = (f'<table id="vqa"><tr><th>accuracy</th>{"".join(f"<th>{html.escape(n)}</th>" for n in names)}</tr>'
             f'{"".join(rows)}</table>')
    examples = ""
    if after in names and base in names:
        a_rows = {(r["image_id"], r["family"]): r for r in read_jsonl(run.eval / f"{base}.vqa.jsonl")}
        b_rows = [r for r in read_jsonl(run.eval / f"{after}.vqa.jsonl")
                  if (r["image_id"], r["family"]) in a_rows and a_rows[(r["image_id"], r["family"])]["verdict"]
                  != r["verdict"]][:n_examples]
        items = "".join(
            f'<tr><td>{html.escape(r["image_id"])}</td><td>{html.escape(r["question"])}</td>'
            f'<td>{html.escape(a_rows[(r["image_id"], r["family"])]["answer"])} '
            f'<span class="note">({a_rows[(r["image_id"], r["family"])]["verdict"]})</span></td>'
            f'<td>{html.escape(r["answer"])} <span class="note">({r["verdict"]})</span></td></tr>' for r in b_rows)
        examples = (f"<h3>Where {html.escape(base)} and {html.escape(after)} answer differently</h3>"
                    + (f"<table><tr><th>image</th><th>question</th><th>{html.escape(base)}</th>"
                       f"<th>{html.escape(after)}</th></tr>{items}</table>" if items
                       else '<p class="note">none: both models give the same verdict on every question</p>'))
    return ('<h2 id="vqa-section">Robot questions</h2><p class="note">One question per family and held-out image, '
            "from its ground truth, with the grounding context; answers judged (correct, wrong, refused wrongly, "
            "accepted a false premise, unparsed).</p>" + table + examples)
