"""The annotation page: one HTML document, CSS and JavaScript inline, nothing loaded from elsewhere.

A question pair (task "vqa") shows its question on its own, large, where a caption pair shows its prompt, and
the two answers as the options; elements of one task only carry the class `vqa-only` or `caption-only`.

The server sends it with a Content-Security-Policy that allows exactly this script (by its hash) and
same-origin requests, so even a caption containing markup cannot run code (captions are set as text anyway).
"""

from __future__ import annotations

import base64
import hashlib

STYLE = """
:root { --fg: #1d232a; --muted: #5b6670; --line: #d5dbe1; --accent: #1f6feb; --ok: #1a7f37; --bad: #cf222e; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       background: #f6f8fa; }
header { display: flex; gap: 1.2em; align-items: baseline; padding: .6em 1.2em; background: #fff;
         border-bottom: 1px solid var(--line); }
header .grow { flex: 1; }
#progress { font-weight: 600; font-variant-numeric: tabular-nums; }
#status.ok { color: var(--ok); } #status.error { color: var(--bad); } #status.busy { color: var(--muted); }
main, section { padding: 1em 1.2em; }
#work { display: grid; grid-template-columns: minmax(240px, 520px) 1fr; gap: 1.4em; align-items: start; }
#work.zoomed { grid-template-columns: minmax(240px, 1000px) 1fr; }
#stage { position: relative; width: 100%; background: #000; line-height: 0; }
#image { width: 100%; height: auto; image-rendering: pixelated; }
#boxes { position: absolute; inset: 0; width: 100%; height: 100%; pointer-events: none; }
#boxes rect { fill: none; stroke: #ffde00; stroke-width: 2; vector-effect: non-scaling-stroke; }
#labels { position: absolute; inset: 0; pointer-events: none; overflow: hidden; }
.blabel { position: absolute; font: 600 11px/14px system-ui, sans-serif; background: #ffde00; color: #000;
          padding: 0 3px; border-radius: 2px; white-space: nowrap; opacity: .92; }
.tools { display: flex; flex-wrap: wrap; gap: .4em 1em; align-items: center; margin: .4em 0; }
#tags button[aria-pressed="true"] { background: #cf222e; border-color: #cf222e; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: .6em 1em; margin: 0 1.2em; }
#review-list { list-style: none; padding: 0; } #review-list li { border-top: 1px solid var(--line); padding: .4em 0; }
#review-list .choice { font-weight: 600; } .flagged { color: var(--bad); font-weight: 600; }
h3 { margin: .2em 0; font-size: .8em; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); }
pre { margin: 0 0 .6em; white-space: pre-wrap; font: inherit; background: #fff; border: 1px solid var(--line);
      padding: .4em .6em; border-radius: 6px; }
.cands { display: grid; grid-template-columns: 1fr 1fr; gap: .8em; margin: .6em 0; }
.cand { background: #fff; border: 2px solid var(--line); border-radius: 8px; padding: .5em .8em; }
.cand.win { border-color: var(--ok); } .cand.lose { opacity: .65; } .cand.bad { border-color: var(--bad); }
.cand p { margin: .2em 0; font-size: 1.05em; }
.question { margin: 0 0 .6em; font-size: 1.35em; font-weight: 600; }
#choices { display: flex; flex-wrap: wrap; gap: .5em; margin: .6em 0; }
button { font: inherit; padding: .45em .9em; border-radius: 6px; border: 1px solid var(--line); background: #fff;
         cursor: pointer; }
button[aria-pressed="true"] { background: var(--accent); color: #fff; border-color: var(--accent); }
#save { background: var(--fg); color: #fff; }
#flag[aria-pressed="true"] { background: var(--bad); color: #fff; }
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
const TAG_KEYS = {"h": "hallucination", "c": "count", "o": "colour", "s": "side", "v": "vague"};
let annotator = "", item = null, choice = null, busy = false, shownAt = 0, prefill = null;
let tags = new Set(), flagged = false, revisiting = false, hist = [], backIdx = -1, skipped = [];
let judgedNow = 0, startedAt = 0;

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
function show(which) { for (const id of ["login", "work", "done", "review"]) $(id).hidden = id !== which; }
function setProgress(p) {
  $("progress").textContent = p.done + " / " + p.total;
  document.title = p.done + "/" + p.total + " \u00b7 vlm-dpo annotate";
}
function skipKey() { return "vlm_dpo.skipped." + annotator; }
function saveSkipped() { try { sessionStorage.setItem(skipKey(), JSON.stringify(skipped)); } catch (e) { /* */ } }

async function begin(id) {
  id = (id || "").trim();
  if (!ID_RE.test(id)) {
    $("login-error").textContent = id ? "ids are letters, digits and _ . @ - (at most 64)" : "";
    show("login");
    $("annotator-input").focus();
    return;
  }
  annotator = id;
  try { localStorage.setItem("vlm_dpo.annotator", id); } catch (e) { /* private mode */ }
  try { skipped = JSON.parse(sessionStorage.getItem(skipKey()) || "[]"); } catch (e) { skipped = []; }
  const u = new URL(location.href);
  u.searchParams.set("annotator", id);
  history.replaceState(null, "", u);
  $("who").textContent = id;
  startedAt = performance.now(); judgedNow = 0;
  await loadNext();
}

async function loadNext() {
  let r;
  revisiting = false; backIdx = -1;
  try { r = await api("/api/next?annotator=" + encodeURIComponent(annotator) + "&skip=" + skipped.join(",")); }
  catch (e) {
    if (e.status === 403 || e.status === 422) { $("login-error").textContent = e.message; show("login"); }
    else status(e.message, "error");
    return;
  }
  setProgress(r.progress);
  if (!r.item) {
    item = null;
    $("done-skipped").hidden = !skipped.length;
    $("done-text").textContent = skipped.length
      ? skipped.length + " skipped item(s) left; everything else is judged."
      : "Every item for this annotator is judged. Thank you.";
    show("done");
    return;
  }
  render(r.item);
}

async function openItem(itemId, idx) {
  let r;
  try { r = await api("/api/items/" + encodeURIComponent(itemId) + "?annotator=" + encodeURIComponent(annotator)); }
  catch (e) { status(e.message, "error"); return; }
  setProgress(r.progress);
  render(r.item);
  revisiting = !!r.item.judgement; backIdx = idx;
  if (r.item.judgement) {
    choice = r.item.judgement.choice;
    $("edit").value = r.item.judgement.edit || "";
    $("revisit").textContent = "revisiting: saved " + r.item.judgement.time.slice(0, 19).replace("T", " ")
      + " (revision " + r.item.judgement.revision + "); saving adds a new revision";
  }
  markChoice();
}

function render(it) {
  item = it; choice = null; prefill = null; flagged = false; tags = new Set();
  const vqa = it.task === "vqa";
  for (const el of document.querySelectorAll(".vqa-only")) el.hidden = !vqa;
  for (const el of document.querySelectorAll(".caption-only")) el.hidden = vqa;
  $("work").dataset.task = vqa ? "vqa" : "caption";
  $("question").textContent = it.question || "";
  $("prompt").textContent = it.prompt;
  $("grounding").textContent = it.grounding || "";
  $("grounding-field").hidden = !it.grounding;
  $("text-a").textContent = it.a;
  $("text-b").textContent = it.b;
  $("edit").value = "";
  $("reason").value = "";
  $("revisit").textContent = "";
  if (it.note) { tags = new Set(it.note.tags); $("reason").value = it.note.reason || ""; flagged = it.note.flag; }
  $("work").dataset.item = it.item_id;
  markChoice();
  const img = $("image");
  img.alt = "image " + it.image_id;
  img.src = "/api/items/" + encodeURIComponent(it.item_id) + "/image" + (token ? "?token=" + encodeURIComponent(token) : "");
  show("work");
  drawBoxes();
  shownAt = performance.now();
}

function threshold() { return parseFloat($("threshold").value); }

function drawBoxes() {
  const svg = $("boxes"), labels = $("labels");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  labels.textContent = "";
  if (!item) return;
  const d = item.detections || {boxes: []};
  const img = $("image");
  const w = d.width || img.naturalWidth || 1, h = d.height || img.naturalHeight || 1;
  svg.setAttribute("viewBox", "0 0 " + w + " " + h);
  const NS = "http://www.w3.org/2000/svg";
  const thr = threshold();
  const shownBoxes = d.boxes.filter((b) => b.score == null || b.score >= thr - 1e-9);
  const sx = (img.clientWidth || 1) / w, sy = (img.clientHeight || 1) / h;
  const W = img.clientWidth, H = img.clientHeight, LH = 15, placed = [];
  const sorted = shownBoxes.slice().sort((p, q) => p.box[1] - q.box[1] || p.box[0] - q.box[0]);
  for (const det of sorted) {
    const [x1, y1, x2, y2] = det.box;
    const r = document.createElementNS(NS, "rect");
    r.setAttribute("x", x1); r.setAttribute("y", y1);
    r.setAttribute("width", Math.max(0, x2 - x1)); r.setAttribute("height", Math.max(0, y2 - y1));
    svg.appendChild(r);
    if (!det.label || !W) continue;
    const span = document.createElement("span");
    span.className = "blabel";
    span.textContent = det.label + (det.score != null ? " " + det.score.toFixed(2) : "");
    labels.appendChild(span);
    const lw = span.offsetWidth;
    let lx = Math.min(Math.max(0, x1 * sx), Math.max(0, W - lw));
    let ly = Math.min(Math.max(0, y1 * sy - LH), H - LH);
    // move down (then up) until it overlaps no label placed before it
    const hit = (y) => placed.some((p) => lx < p.x + p.w && p.x < lx + lw && y < p.y + LH && p.y < y + LH);
    let tries = 0;
    while (hit(ly) && tries++ < 40) ly += 3;
    if (ly > H - LH) { ly = Math.min(Math.max(0, y1 * sy - LH), H - LH); tries = 0; while (hit(ly) && tries++ < 40) ly -= 3; }
    ly = Math.min(Math.max(0, ly), Math.max(0, H - LH));
    span.style.left = lx + "px"; span.style.top = ly + "px";
    placed.push({x: lx, y: ly, w: lw});
  }
  $("threshold-value").textContent = thr.toFixed(2);
  $("box-count").textContent = d.boxes.length
    ? "(" + shownBoxes.length + " of " + d.boxes.length + ")" : "(none)";
  const on = $("show-boxes").checked;
  svg.style.display = on ? "" : "none";
  labels.style.display = on ? "" : "none";
}

function chosenText(c) { return c === "a" ? item.a : c === "b" ? item.b : c === "tie" ? item.a : ""; }

function pick(c) {
  if (!item) return;
  const e = $("edit");
  if (prefill !== null && e.value === prefill) { prefill = chosenText(c); e.value = prefill; }  // untouched: follow
  choice = c; markChoice(); status("");
}
function markChoice() {
  for (const b of document.querySelectorAll("#choices button")) b.setAttribute("aria-pressed", String(b.dataset.choice === choice));
  for (const b of document.querySelectorAll("#tags button")) b.setAttribute("aria-pressed", String(tags.has(b.dataset.tag)));
  $("flag").setAttribute("aria-pressed", String(flagged));
  $("cand-a").className = "cand" + (choice === "a" ? " win" : choice === "b" ? " lose" : choice === "both_bad" ? " bad" : "");
  $("cand-b").className = "cand" + (choice === "b" ? " win" : choice === "a" ? " lose" : choice === "both_bad" ? " bad" : "");
}
function toggleTag(t) { if (!item) return; tags.has(t) ? tags.delete(t) : tags.add(t); markChoice(); }

function startEdit() {
  if (!item) return;
  if (!choice) { status("choose first: e edits the chosen caption", "error"); return; }
  const e = $("edit");
  if (!e.value) { prefill = chosenText(choice); e.value = prefill; }
  e.focus();
  e.setSelectionRange(e.value.length, e.value.length);
}

async function saveNote(flag) {
  const reason = $("reason").value.trim();
  if (!tags.size && !reason && !flag && !(item.note)) return;
  await api("/api/notes", {item_id: item.item_id, annotator: annotator, tags: Array.from(tags),
                           reason: reason || null, flag: !!flag});
}

async function save() {
  if (!item || busy) return;
  if (!choice) { status("choose A, B, tie or both bad first", "error"); return; }
  let edit = $("edit").value.trim();
  if (edit === item.a.trim() || edit === item.b.trim()) edit = "";  // an unchanged caption is no edit
  busy = true;
  status("saving\u2026", "busy");
  try {
    await saveNote(flagged);
    const r = await api("/api/judgements", {item_id: item.item_id, annotator: annotator, choice: choice,
                                            edit: edit || null, ms: Math.round(performance.now() - shownAt)});
    setProgress(r.progress);
    skipped = skipped.filter((x) => x !== item.item_id); saveSkipped();
    if (!revisiting) judgedNow += 1;
    showRate();
    status(revisiting ? "changed \u2713 (revision " + r.revision + ")" : "saved \u2713", "ok");  // after the commit
    $("edit").blur();
    await loadNext();
  } catch (e) {
    status("NOT saved: " + e.message, "error");
  } finally {
    busy = false;
  }
}

function showRate() {
  const min = (performance.now() - startedAt) / 60000;
  $("rate").textContent = judgedNow ? judgedNow + " this session \u00b7 " + (judgedNow / Math.max(min, 1e-6)).toFixed(1) + " items/min" : "";
}

async function skip() {
  if (!item || busy) return;
  if (!skipped.includes(item.item_id)) skipped.push(item.item_id);
  saveSkipped();
  status("skipped (it comes back at the end)", "ok");
  await loadNext();
}

async function flag() {
  if (!item || busy) return;
  busy = true;
  try { flagged = !flagged; await saveNote(flagged); markChoice(); status(flagged ? "flagged \u2691" : "flag removed", "ok"); }
  catch (e) { status("NOT saved: " + e.message, "error"); }
  finally { busy = false; }
  if (flagged && !revisiting) await skip();
}

async function loadHistory() {
  const r = await api("/api/history?annotator=" + encodeURIComponent(annotator));
  hist = r.history;
  return r;
}

async function back() {
  if (busy) return;
  try { await loadHistory(); } catch (e) { status(e.message, "error"); return; }
  const idx = backIdx + 1;
  if (idx >= hist.length) { status("nothing earlier to go back to", "error"); return; }
  await openItem(hist[idx].item_id, idx);
}

async function openReview() {
  let r;
  try { r = await loadHistory(); } catch (e) { status(e.message, "error"); return; }
  const ul = $("review-list");
  ul.textContent = "";
  const names = {a: "A", b: "B", tie: "tie", both_bad: "both bad"};
  hist.forEach((h, i) => {
    const li = document.createElement("li");
    li.dataset.item = h.item_id;
    const head = document.createElement("div");
    const c = document.createElement("span"); c.className = "choice"; c.textContent = names[h.choice] || h.choice;
    head.append(c, " \u00b7 " + h.image_id + " \u00b7 " + h.time.slice(0, 19).replace("T", " ")
                + (h.revision > 1 ? " \u00b7 revision " + h.revision : ""));
    if (h.note && h.note.flag) { const f = document.createElement("span"); f.className = "flagged"; f.textContent = " \u2691 flagged"; head.append(f); }
    if (h.note && h.note.tags.length) head.append(" \u00b7 tags: " + h.note.tags.join(", "));
    const body = document.createElement("div"); body.className = "hint";
    body.textContent = "A: " + h.a + "  |  B: " + h.b + (h.edit ? "  |  edit: " + h.edit : "");
    const open = document.createElement("button"); open.type = "button"; open.textContent = "open";
    open.addEventListener("click", () => openItem(h.item_id, i));
    li.append(head, body, open);
    ul.appendChild(li);
  });
  $("review-count").textContent = "(" + hist.length + " judged, " + r.progress.total + " in all)";
  show("review");
}

function toggleGuide(on) { $("guidelines").hidden = on === undefined ? !$("guidelines").hidden : !on; }
function toggleZoom() { $("work").classList.toggle("zoomed"); requestAnimationFrame(drawBoxes); }

document.addEventListener("keydown", (ev) => {
  const t = ev.target;
  if (t && t.id === "edit") {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); save(); }
    else if (ev.key === "Escape") t.blur();
    return;
  }
  if (t && t.id === "reason") {
    if (ev.key === "Enter") { ev.preventDefault(); t.blur(); save(); }
    else if (ev.key === "Escape") t.blur();
    return;
  }
  if (t && t.id === "annotator-input") {
    if (ev.key === "Enter") { ev.preventDefault(); begin(t.value); }
    return;
  }
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (ev.key === "?" || (ev.key === "g" && $("login").hidden)) { ev.preventDefault(); toggleGuide(); return; }
  if (ev.key === "Escape") {
    if (!$("guidelines").hidden) toggleGuide(false);
    else if (!$("review").hidden) { if (item) show("work"); else loadNext(); }
    return;
  }
  if (ev.key === "r" && annotator && $("login").hidden) { ev.preventDefault(); openReview(); return; }
  if ($("work").hidden) return;
  if (ev.key === "Enter") { ev.preventDefault(); save(); return; }
  if (ev.key === "Backspace") { ev.preventDefault(); back(); return; }
  const k = ev.key.length === 1 ? ev.key.toLowerCase() : "";
  if (KEYS[k]) { ev.preventDefault(); pick(KEYS[k]); }
  else if (TAG_KEYS[k]) { ev.preventDefault(); toggleTag(TAG_KEYS[k]); }
  else if (k === "e") { ev.preventDefault(); startEdit(); }
  else if (k === "u") { ev.preventDefault(); back(); }
  else if (k === "n") { ev.preventDefault(); skip(); }
  else if (k === "f") { ev.preventDefault(); flag(); }
  else if (k === "z") { ev.preventDefault(); toggleZoom(); }
  else if (k === "d") { ev.preventDefault(); $("show-boxes").checked = !$("show-boxes").checked; drawBoxes(); }
});

for (const b of document.querySelectorAll("#choices button")) b.addEventListener("click", () => pick(b.dataset.choice));
for (const b of document.querySelectorAll("#tags button")) b.addEventListener("click", () => toggleTag(b.dataset.tag));
$("save").addEventListener("click", save);
$("back").addEventListener("click", back);
$("skip").addEventListener("click", skip);
$("flag").addEventListener("click", flag);
$("btn-zoom").addEventListener("click", toggleZoom);
$("btn-review").addEventListener("click", openReview);
$("done-review").addEventListener("click", openReview);
$("review-close").addEventListener("click", () => { if (item) show("work"); else loadNext(); });
$("btn-guide").addEventListener("click", () => toggleGuide());
$("guide-close").addEventListener("click", () => toggleGuide(false));
$("done-skipped").addEventListener("click", () => { skipped = []; saveSkipped(); loadNext(); });
$("start").addEventListener("click", () => begin($("annotator-input").value));
$("switch").addEventListener("click", () => { $("annotator-input").value = annotator; show("login"); $("annotator-input").focus(); });
$("show-boxes").addEventListener("change", drawBoxes);
$("threshold").addEventListener("input", drawBoxes);
$("image").addEventListener("load", drawBoxes);
window.addEventListener("resize", drawBoxes);
$("image").addEventListener("error", () => { if (item) status("image could not be loaded", "error"); });

(function init() {
  let saved = "";
  try { saved = localStorage.getItem("vlm_dpo.annotator") || ""; } catch (e) { saved = ""; }
  const ms = parseFloat(params.get("min_score"));
  if (ms >= 0 && ms <= 1) $("threshold").value = String(ms);
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
    &middot; <kbd>4</kbd>/<kbd>x</kbd> both bad &middot; <kbd>e</kbd> edit &middot; <kbd>Enter</kbd> save
    &middot; <kbd>u</kbd> back &middot; <kbd>?</kbd> all keys</span>
  <span id="rate" class="hint"></span>
  <button id="btn-review" type="button">My judgements <kbd>r</kbd></button>
  <button id="btn-guide" type="button">Guidelines <kbd>?</kbd></button>
</header>
<section id="login" hidden>
  <label>Annotator id <input id="annotator-input" autocomplete="off" spellcheck="false" maxlength="64"></label>
  <button id="start" type="button">Start</button>
  <p id="login-error" class="hint"></p>
</section>
<section id="guidelines" class="panel" hidden>
  <h2>Guidelines</h2>
  <ol>
    <li>Pick the caption that says <b>only what is in the image</b>: a caption naming an object that is not there
      (hallucination) loses to one that misses an object.</li>
    <li>Then: right <b>counts</b>, right <b>colours</b>, right <b>sides</b> (left/right), then the more specific
      (no "some objects") and the shorter.</li>
    <li>The grounding context comes from a detector and can be wrong: judge against the <b>image</b>; zoom
      (<kbd>z</kbd>) when unsure; boxes (<kbd>d</kbd>) show what the detector saw at or above the threshold.</li>
    <li>A <b>question</b> pair (a robot's question, two short answers): pick the answer that is right for the
      image; refusing a question about something that is not there is right, answering it is not.</li>
    <li><b>Tie</b> when both are equally right or wrong in the same way; <b>Both bad</b> when neither is
      acceptable (then <kbd>e</kbd> and write a good caption if you can).</li>
    <li>Tag what was wrong with the loser: <kbd>h</kbd> hallucination, <kbd>c</kbd> count, <kbd>o</kbd> colour,
      <kbd>s</kbd> side, <kbd>v</kbd> vague; a reason is optional.</li>
    <li><b>Skip</b> (<kbd>n</kbd>) when unsure (it comes back at the end); <b>Flag</b> (<kbd>f</kbd>) a broken item
      (image missing, identical captions). <kbd>u</kbd> goes back to your previous judgement to change it; every
      change is kept as a new revision.</li>
  </ol>
  <p class="hint">Keys: <kbd>1</kbd>/<kbd>a</kbd> A, <kbd>2</kbd>/<kbd>b</kbd> B, <kbd>3</kbd>/<kbd>t</kbd> tie,
    <kbd>4</kbd>/<kbd>x</kbd> both bad, <kbd>e</kbd> edit the chosen caption, <kbd>Enter</kbd> save,
    <kbd>u</kbd> back, <kbd>n</kbd> skip, <kbd>f</kbd> flag, <kbd>z</kbd> zoom, <kbd>d</kbd> boxes,
    <kbd>r</kbd> my judgements, <kbd>?</kbd> this help, <kbd>Esc</kbd> close.</p>
  <button id="guide-close" type="button">Close <kbd>Esc</kbd></button>
</section>
<section id="review" class="panel" hidden>
  <h2>My judgements <span id="review-count" class="hint"></span></h2>
  <p class="hint">Newest first. Open one to change it (a new revision; the old one is kept).</p>
  <ul id="review-list"></ul>
  <button id="review-close" type="button">Back to work <kbd>Esc</kbd></button>
</section>
<main id="work" hidden>
  <div>
    <div id="stage"><img id="image" alt=""><svg id="boxes" preserveAspectRatio="none"
      xmlns="http://www.w3.org/2000/svg"></svg><div id="labels"></div></div>
    <div class="tools hint">
      <label><input type="checkbox" id="show-boxes" checked> detector boxes <span id="box-count"></span>
        <kbd>d</kbd></label>
      <label>score &ge; <input type="range" id="threshold" min="0" max="1" step="0.05" value="{min_score}">
        <output id="threshold-value">{min_score:.2f}</output></label>
      <button id="btn-zoom" type="button">Zoom <kbd>z</kbd></button>
    </div>
  </div>
  <div>
    <div class="caption-only"><h3>Prompt</h3><pre id="prompt"></pre></div>
    <div id="question-field" class="vqa-only" hidden><h3>Question</h3><p id="question" class="question"></p></div>
    <div id="grounding-field"><h3>Grounding context</h3><pre id="grounding"></pre></div>
    <div class="cands">
      <div id="cand-a" class="cand"><h3><span class="vqa-only" hidden>Answer </span>A</h3><p id="text-a"></p></div>
      <div id="cand-b" class="cand"><h3><span class="vqa-only" hidden>Answer </span>B</h3><p id="text-b"></p></div>
    </div>
    <div id="choices">
      <button type="button" id="btn-a" data-choice="a">A better <kbd>1</kbd></button>
      <button type="button" id="btn-b" data-choice="b">B better <kbd>2</kbd></button>
      <button type="button" id="btn-tie" data-choice="tie">Tie <kbd>3</kbd></button>
      <button type="button" id="btn-both-bad" data-choice="both_bad">Both bad <kbd>4</kbd></button>
    </div>
    <div id="tags" class="tools"><span class="hint">what is wrong (optional):</span>
      <button type="button" data-tag="hallucination">hallucination <kbd>h</kbd></button>
      <button type="button" data-tag="count">count <kbd>c</kbd></button>
      <button type="button" data-tag="colour">colour <kbd>o</kbd></button>
      <button type="button" data-tag="side">side <kbd>s</kbd></button>
      <button type="button" data-tag="vague">vague <kbd>v</kbd></button>
      <input id="reason" placeholder="reason (optional)" maxlength="2000" size="24">
    </div>
    <label for="edit" class="hint">A better version of the chosen <span class="caption-only">caption</span><span
      class="vqa-only" hidden>answer</span> (optional; it becomes the chosen side)
      <kbd>e</kbd></label>
    <textarea id="edit" rows="3" spellcheck="true"></textarea>
    <p class="tools"><button type="button" id="save">Save <kbd>Enter</kbd></button>
      <button type="button" id="back">&larr; Back <kbd>u</kbd></button>
      <button type="button" id="skip">Skip <kbd>n</kbd></button>
      <button type="button" id="flag">Flag broken item <kbd>f</kbd></button>
      <span id="revisit" class="hint"></span></p>
  </div>
</main>
<section id="done" hidden><h2>All done</h2><p id="done-text">Every item for this annotator is judged. Thank you.</p>
  <p><button id="done-skipped" type="button" hidden>Judge the skipped items</button>
  <button id="done-review" type="button">Review my judgements</button></p></section>
"""


def page_html(min_score: float = 0.5) -> str:
    """The page, its box-score slider starting at `min_score` (the run's grounding threshold, so the boxes first
    shown are those the prompt's context listed; `?min_score=` in the link still overrides it)."""
    if not 0.0 <= min_score <= 1.0:
        raise ValueError(f"annotate.min_score must be within [0, 1], got {min_score}")
    # str.replace, not str.format: the CSS and script are full of braces.
    body = BODY.replace("{min_score}", f"{min_score:g}").replace("{min_score:.2f}", f"{min_score:.2f}")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<title>vlm-dpo annotate</title>\n<style>" + STYLE + "</style></head>\n<body>" + body
            + "<script>" + SCRIPT + "</script>\n</body></html>\n")


PAGE = page_html()


NO_TOKEN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>vlm-dpo annotate: link needed</title>
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;color:#1d232a}
code{background:#f0f0f0;padding:0 .3em}</style></head><body>
<h1>This page needs its access link</h1>
<p>The annotation server is protected by a token, and this address has none (or a wrong one).</p>
<p>Open the link the server printed when it started, the one that looks like
<code>http://127.0.0.1:8765/?token=&hellip;&amp;annotator=&hellip;</code>, or ask the person who runs it for
yours.</p></body></html>
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


CSP = ("default-src 'none'; img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
       f"frame-ancestors 'none'; script-src {_csp_hash(SCRIPT)}; style-src {_csp_hash(STYLE)}")
