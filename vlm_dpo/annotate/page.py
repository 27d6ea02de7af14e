"""The annotation page: one HTML document, CSS and JavaScript inline, nothing loaded from elsewhere.

The server sends it with a Content-Security-Policy that allows exactly this script (by its hash) and
same-origin requests, so even a caption containing markup cannot run code (captions are set as text anyway).
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { --fg: #1d232a; --muted: #5b6670; --line: #d5dbe1; --accent: #1f6feb; --ok: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: #f6f8fa; }
header { display: flex; gap: 1.2em; align-items: baseline; padding: .6em 1.2em; background: #fff;
         border-bottom: 1px solid var(--line); }
header .grow { flex: 1; }
#progress { font-weight: 600; font-variant-numeric: tabular-nums; }
#status.ok { color: var(--ok); } #status.error { color: var(--bad); } #status.busy { color: var(--muted); }
main, section { padding: 1em 1.2em; }
#work { display: grid; grid-template-columns: minmax(240px, 520px) 1fr; gap: 1.4em; align-items: start; }
#stage { position: relative; width: 100%; background: #000; line-height: 0; }
#image { width: 100%; height: auto; image-rendering: pixelated; }
#boxes { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
#boxes rect { fill: none; stroke: #ffde00; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
#boxes text { fill: #ffde00; font-size: 9px; paint-order: stroke; stroke: #000; stroke-width: 2px;
              vector-effect: non-scaling-stroke; }
h3 { margin: .2em 0; font-size: .8em; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
pre { margin: 0 0 .6em; white-space: pre-wrap; font: inherit; background: #fff; border: 1px solid var(--line);
      padding: .4em .6em; border-radius: 6px; }
.cands { display: grid; grid-template-columns: 1fr 1fr; gap: .8em; margin: .6em 0; }
.cand { background: #fff; border: 2px solid var(--line); border-radius: 8px; padding: .5em .8em; }
.cand.win { border-color: var(--ok); } .cand.lose { opacity: .65; } .cand.bad { border-color: var(--bad); }
.cand p { margin: .2em 0; font-size: 1.05em; }
#choices { display: flex; flex-wrap: wrap; gap: .5em; margin: .6em 0; }
button { font: inherit; padding: .45em .9em; border-radius: 6px; border: 1px solid var(--line); background: #fff;
         cursor: pointer; }
button[aria-pressed="true"] { background: var(--accent); color: #fff; border-color: var(--accent); }
#save { background: var(--fg); color: #fff; }
kbd { font: .8em ui-monospace, monospace; border: 1px solid currentColor; border-radius: 3px; padding: 0 .25em;
      opacity: .7; }
textarea { width: 100%; font: inherit; padding: .5em; border: 1px solid var(--line); border-radius: 6px; }
.hint { color: var(--muted); font-size: .85em; }
"""

SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const token = params.get("token") || "";
const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$/;
const KEYS = {"1": "a", "a": "a", "2": "b", "b": "b", "3": "tie", "t": "tie", "4": "both_bad", "x": "both_bad"};
let annotator = "", item = null, choice = null, busy = false, shownAt = 0;

class ApiError extends Error { constructor(status, msg) { super(msg); this.status = status; } }

async function api(path, body) {
  const headers = {"Accept": "application/json"};
  if (token) headers["X-Annotate-Token"] = token;
  const opts = {headers: headers, cache: "no-store"};
  if (body !== undefined) {
    opts.method = "POST";
    headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  let res;
  try { res = await fetch(path, opts); }
  catch (e) { throw new ApiError(0, "server unreachable"); }
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) {
    const d = data && data.detail;
    throw new ApiError(res.status, res.status + " " + (typeof d === "string" ? d : JSON.stringify(d)));
  }
  return data;
}

function status(text, kind) { const s = $("status"); s.textContent = text; s.className = kind || ""; }
function show(which) { for (const id of ["login", "work", "done"]) $(id).hidden = id !== which; }
function setProgress(p) {
  $("progress").textContent = p.done + " / " + p.total;
  document.title = p.done + "/" + p.total + " \u00b7 vlm-dpo annotate";
}

async function begin(id) {
  id = (id || "").trim();
  if (!ID_RE.test(id)) {
    $("login-error").textContent = id ? "ids are letters, digits and _ . @ - (at most 64)" : "";
    show("login");
    return;
  }
  annotator = id;
  try { localStorage.setItem("vlm_dpo.annotator", id); } catch (e) { /* private mode */ }
  const u = new URL(location.href);
  u.searchParams.set("annotator", id);
  history.replaceState(null, "", u);
  $("who").textContent = id;
  await loadNext();
}

async function loadNext() {
  let r;
  try { r = await api("/api/next?annotator=" + encodeURIComponent(annotator)); }
  catch (e) {
    if (e.status === 403 || e.status === 422) { $("login-error").textContent = e.message; show("login"); }
    else status(e.message, "error");
    return;
  }
  setProgress(r.progress);
  if (!r.item) { item = null; show("done"); return; }
  render(r.item);
}

function render(it) {
  item = it; choice = null;
  $("prompt").textContent = it.prompt;
  $("grounding").textContent = it.grounding || "";
  $("grounding-field").hidden = !it.grounding;
  $("text-a").textContent = it.a;
  $("text-b").textContent = it.b;
  $("edit").value = "";
  $("work").dataset.item = it.item_id;
  markChoice();
  const img = $("image");
  img.alt = "image " + it.image_id;
  img.src = "/api/items/" + encodeURIComponent(it.item_id) + "/image" + (token ? "?token=" + encodeURIComponent(token) : "");
  drawBoxes();
  show("work");
  shownAt = performance.now();
}

function drawBoxes() {
  const svg = $("boxes");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (!item) return;
  const d = item.detections || {boxes: []};
  const img = $("image");
  const w = d.width || img.naturalWidth || 1, h = d.height || img.naturalHeight || 1;
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const NS = "http://www.w3.org/2000/svg";
  for (const det of d.boxes) {
    const [x1, y1, x2, y2] = det.box;
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", x1); r.setAttribute("y", y1);
    r.setAttribute("width", Math.max(0, x2 - x1)); r.setAttribute("height", Math.max(0, y2 - y1));
    svg.appendChild(r);
    if (det.label) {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", x1 + 1); t.setAttribute("y", Math.max(8, y1 - 1));
      t.textContent = det.label + (det.score != null ? " " + det.score.toFixed(2) : "");
      svg.appendChild(t);
    }
  }
  $("box-count").textContent = d.boxes.length ? "(" + d.boxes.length + ")" : "(none)";
  svg.style.display = $("show-boxes").checked ? "" : "none";
}

function pick(c) { if (!item) return; choice = c; markChoice(); status(""); }
function markChoice() {
  for (const b of document.querySelectorAll("#choices button")) b.setAttribute("aria-pressed", String(b.dataset.choice === choice));
  $("cand-a").className = "cand" + (choice === "a" ? " win" : choice === "b" ? " lose" : choice === "both_bad" ? " bad" : "");
  $("cand-b").className = "cand" + (choice === "b" ? " win" : choice === "a" ? " lose" : choice === "both_bad" ? " bad" : "");
}

function startEdit() {
  if (!item) return;
  const e = $("edit");
  if (!e.value) e.value = choice === "b" ? item.b : item.a;
  e.focus();
  e.setSelectionRange(e.value.length, e.value.length);
}

async function save() {
  if (!item || busy) return;
  if (!choice) { status("choose A, B, tie or both bad first", "error"); return; }
  let edit = $("edit").value.trim();
  if (edit === item.a.trim() || edit === item.b.trim()) edit = "";  // an unchanged caption is no edit
  busy = true;
  status("saving\u2026", "busy");
  try {
    const r = await api("/api/judgements", {item_id: item.item_id, annotator: annotator, choice: choice,
                                            edit: edit || null, ms: Math.round(performance.now() - shownAt)});
    setProgress(r.progress);
    status("saved \u2713", "ok");  // only now: the server answers after the commit
    $("edit").blur();
    await loadNext();
  } catch (e) {
    status("NOT saved: " + e.message, "error");
  } finally {
    busy = false;
  }
}

document.addEventListener("keydown", (ev) => {
  const t = ev.target;
  if (t && t.id === "edit") {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); save(); }
    else if (ev.key === "Escape") t.blur();
    return;
  }
  if (t && t.id === "annotator-input") {
    if (ev.key === "Enter") { ev.preventDefault(); begin(t.value); }
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey || $("work").hidden) return;
  if (ev.key === "Enter") { ev.preventDefault(); save(); return; }
  const k = ev.key.length === 1 ? ev.key.toLowerCase() : "";
  if (KEYS[k]) { ev.preventDefault(); pick(KEYS[k]); }
  else if (k === "e") { ev.preventDefault(); startEdit(); }
  else if (k === "d") { ev.preventDefault(); $("show-boxes").checked = !$("show-boxes").checked; drawBoxes(); }
});

for (const b of document.querySelectorAll("#choices button")) b.addEventListener("click", () => pick(b.dataset.choice));
$("save").addEventListener("click", save);
$("start").addEventListener("click", () => begin($("annotator-input").value));
$("switch").addEventListener("click", () => { $("annotator-input").value = annotator; show("login"); $("annotator-input").focus(); });
$("show-boxes").addEventListener("change", drawBoxes);
$("image").addEventListener("load", drawBoxes);
$("image").addEventListener("error", () => { if (item) status("image could not be loaded", "error"); });

(function init() {
  let saved = "";
  try { saved = localStorage.getItem("vlm_dpo.annotator") || ""; } catch (e) { saved = ""; }
  const first = params.get("annotator") || saved;
  $("annotator-input").value = first;
  if (first) begin(first); else { show("login"); $("annotator-input").focus(); }
})();
"""

BODY = """
<header>
  <b>vlm-dpo annotate</b>
  <span>annotator: <span id="who">&ndash;</span> <button id="switch" type="button">change</button></span>
  <span id="progress">&ndash; / &ndash;</span>
  <span id="status" role="status" aria-live="polite"></span>
  <span class="grow"></span>
  <span class="hint"><kbd>1</kbd>/<kbd>a</kbd> A &middot; <kbd>2</kbd>/<kbd>b</kbd> B &middot; <kbd>3</kbd>/<kbd>t</kbd> tie
    &middot; <kbd>4</kbd>/<kbd>x</kbd> both bad &middot; <kbd>e</kbd> edit &middot; <kbd>d</kbd> boxes
    &middot; <kbd>Enter</kbd> save</span>
</header>
<section id="login" hidden>
  <label>Annotator id <input id="annotator-input" autocomplete="off" spellcheck="false" maxlength="64"></label>
  <button id="start" type="button">Start</button>
  <p id="login-error" class="hint"></p>
</section>
<main id="work" hidden>
  <div>
    <div id="stage"><img id="image" alt=""><svg id="boxes" preserveAspectRatio="none"
      xmlns="http://www.w3.org/2000/svg"></svg></div>
    <label class="hint"><input type="checkbox" id="show-boxes" checked> detection boxes <span id="box-count"></span>
      <kbd>d</kbd></label>
  </div>
  <div>
    <h3>Prompt</h3><pre id="prompt"></pre>
    <div id="grounding-field"><h3>Grounding context</h3><pre id="grounding"></pre></div>
    <div class="cands">
      <div id="cand-a" class="cand"><h3>A</h3><p id="text-a"></p></div>
      <div id="cand-b" class="cand"><h3>B</h3><p id="text-b"></p></div>
    </div>
    <div id="choices">
      <button type="button" id="btn-a" data-choice="a">A better <kbd>1</kbd></button>
      <button type="button" id="btn-b" data-choice="b">B better <kbd>2</kbd></button>
      <button type="button" id="btn-tie" data-choice="tie">Tie <kbd>3</kbd></button>
      <button type="button" id="btn-both-bad" data-choice="both_bad">Both bad <kbd>4</kbd></button>
    </div>
    <label for="edit" class="hint">A better caption (optional; it becomes the chosen side) <kbd>e</kbd></label>
    <textarea id="edit" rows="3" spellcheck="true"></textarea>
    <p><button type="button" id="save">Save <kbd>Enter</kbd></button></p>
  </div>
</main>
<section id="done" hidden><h2>All done</h2><p>Every item for this annotator is judged. Thank you.</p></section>
"""

PAGE = ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        "<title>vlm-dpo annotate</title>\n<style>" + STYLE + "</style></head>\n<body>" + BODY
        + "<script>" + SCRIPT + "</script>\n</body></html>\n")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = ("default-src 'none'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       f"frame-ancestors 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}")
