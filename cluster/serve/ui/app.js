// MEL playground: plain JS over the linking API (POST /link, GET /entities, GET /entities/{id}). No network
// beyond this server. Errors from the API carry {error, field}; they are shown beside the field they name.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { image: null, browseOffset: 0, browseTotal: 0 };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
const fmt = (x, digits = 3) => (typeof x === "number" ? x.toFixed(digits) : "–");

// -- errors --------------------------------------------------------------------------------------------------
const FIELD_IDS = { mention: "mention", context: "context", image: "image", top_k: "top_k", q: "q",
  limit: "limit", "filters.name": "filters.name", "filters.has_image": "filters.has_image",
  "filters.entity_ids": "filters.entity_ids", body: "image" };  // a too-large body is nearly always the image

function clearErrors(scope) {
  scope.querySelectorAll(".err").forEach((p) => (p.textContent = ""));
  scope.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
}

function errorSlot(field, fallback) {
  let name = (field || "").replace(/^query\./, "");
  if (name.startsWith("filters.entity_ids")) name = "filters.entity_ids";
  const id = FIELD_IDS[name];
  return (id && $("err-" + id)) || $(fallback);
}

function showError(status, body, fallback) {
  const message = body && body.error ? body.error : `HTTP ${status}`;
  const prefix = status === 503 ? "The service is not ready: " : status >= 500 ? "Server error: " : "";
  const slot = errorSlot(body && body.field, fallback);
  slot.textContent = prefix + message + (body && body.request_id ? ` (request ${body.request_id})` : "");
  const input = slot.id === "err-image" ? $("drop") : $(slot.id.replace(/^err-/, "")) ;
  if (input && slot.id !== fallback) { input.classList.add("invalid"); input.setAttribute("aria-invalid", "true"); }
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { body = null; }
  return { ok: response.ok, status: response.status, body };
}

// -- the image: drop, paste or pick -> data URL ------------------------------------------------------------
function readImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => {
    state.image = reader.result;
    $("preview").src = reader.result;
    $("preview").alt = "The mention's image: " + file.name;
    $("preview").hidden = false;
    $("clear-image").hidden = false;
  };
  reader.readAsDataURL(file);
}
function clearImage() {
  state.image = null; $("image").value = ""; $("preview").hidden = true; $("preview").removeAttribute("src");
  $("clear-image").hidden = true;
}
$("preview").addEventListener("error", () => { $("preview").hidden = true; });  // the server will say why
$("image").addEventListener("change", (e) => readImage(e.target.files[0]));
$("clear-image").addEventListener("click", clearImage);
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault(); drop.classList.remove("over");
  readImage([...e.dataTransfer.files].find((f) => f.type.startsWith("image/")) || e.dataTransfer.files[0]);
});
drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("image").click(); } });
document.addEventListener("paste", (e) => {
  const item = [...(e.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
  if (item) { e.preventDefault(); readImage(item.getAsFile()); }
});

// -- charts ----------------------------------------------------------------------------------------------------
function bar(label, fraction, text, markAt) {
  const track = el("span", { class: "track", role: "img", "aria-label": `${label}: ${text}` },
    el("span", { class: "fill", style: `width:${Math.max(0, Math.min(1, fraction)) * 100}%` }));
  if (markAt !== undefined) track.append(el("span", { class: "mark", style: `left:${markAt * 100}%`, title: "NIL threshold" }));
  return el("div", { class: "bar" }, el("span", { class: "lbl", text: label }), track, el("span", { text }));
}

function stacked(label, parts, total, unit = "") {
  const sum = parts.reduce((s, [, v]) => s + Math.abs(v), 0) || 1;
  const summary = parts.map(([k, v]) => `${k} ${fmt(v, unit ? 1 : 2)}${unit}`).join(", ");
  const strip = el("span", { class: "stack", role: "img", "aria-label": `${label}: ${summary}` });
  for (const [k, v] of parts) strip.append(el("span", { class: "s-" + k, style: `width:${(Math.abs(v) / sum) * 100}%`, title: `${k}: ${fmt(v)}` }));
  return el("div", { class: "bar" }, el("span", { class: "lbl", text: label }), strip, el("span", { text: total }));
}

function legend(keys, values = {}) {
  const p = el("p", { class: "muted" });
  for (const k of keys) p.append(el("span", { class: "key k-" + k }), k in values ? `${k} ${values[k]}` : k);
  return p;
}

function usageChart(layer, weights) {
  const share = weights.share || weights.weight || [];
  const w = 16, h = 40, svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("width", share.length * (w + 4)); svg.setAttribute("height", h + 14);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${layer}: ` + share.map((s, i) => `expert ${i} ${(s * 100).toFixed(0)}%`).join(", "));
  share.forEach((s, i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect");
    const bh = Math.max(1, s * h);
    r.setAttribute("x", i * (w + 4)); r.setAttribute("y", h - bh); r.setAttribute("width", w); r.setAttribute("height", bh);
    const t = document.createElementNS(svg.namespaceURI, "title"); t.textContent = `expert ${i}: ${(s * 100).toFixed(1)}%`;
    r.append(t); svg.append(r);
    const n = document.createElementNS(svg.namespaceURI, "text");
    n.setAttribute("x", i * (w + 4) + 4); n.setAttribute("y", h + 12); n.setAttribute("font-size", "10"); n.textContent = i;
    svg.append(n);
  });
  return el("div", { class: "usage-layer" }, el("div", { class: "muted", text: layer }), svg);
}

// -- entity cards ------------------------------------------------------------------------------------------
function thumb(entityId, name) {
  const img = el("img", { class: "thumb", src: `/entities/${encodeURIComponent(entityId)}/images/0`, alt: `Image of ${name}`, loading: "lazy" });
  img.addEventListener("error", () => img.replaceWith(el("span", { class: "thumb", role: "img", "aria-label": `No image of ${name}` })));
  return img;
}

function entityLink(entity) {
  return el("a", { class: "open", href: `#entity/${encodeURIComponent(entity.entity_id)}`, text: entity.name || entity.entity_id });
}

function renderCandidate(c, lo, hi, threshold) {
  const span = hi - lo || 1;
  const body = el("div", { class: "body" }, entityLink(c), el("span", { class: "muted", text: ` ${c.entity_id}` }),
    el("p", { class: "desc", text: c.description || "" }),
    bar("score", (c.score - lo) / span, fmt(c.score), threshold == null ? undefined : (threshold - lo) / span));
  if (typeof c.confidence === "number") body.append(bar("confidence", c.confidence, `${(c.confidence * 100).toFixed(0)}%`));
  if (c.units) body.append(stacked("text/image/cross", [["text", c.units.text], ["image", c.units.image], ["cross", c.units.cross]], ""));
  return el("li", { class: "cand", "data-entity-id": c.entity_id, "data-rank": c.rank },
    el("span", { class: "rank", text: `#${c.rank}` }), thumb(c.entity_id, c.name), body);
}

function renderResult(r) {
  const cands = r.candidates || [];
  const verdict = $("verdict");
  const best = cands.length ? cands[0].score : null;
  const th = r.nil_threshold;
  verdict.className = r.nil ? "nil" : "linked";
  verdict.textContent = r.nil
    ? `NIL: no entity in the KB matches (best score ${fmt(best)}${th == null ? "" : ` < threshold ${fmt(th)}`}).`
    : `Linked to ${cands[0].name} (score ${fmt(best)}${th == null ? ", no NIL threshold calibrated" : ` ≥ threshold ${fmt(th)}`}).`;
  // bars span this list's scores (and the threshold), with a 10% floor so the last one still shows
  const scores = cands.map((c) => c.score).concat(th == null ? [] : [th]);
  const top = Math.max(...scores), bottom = Math.min(...scores);
  const hi = top, lo = bottom - Math.max(0.1 * (top - bottom), 1e-6);
  const list = $("candidates"); list.replaceChildren(...cands.map((c) => renderCandidate(c, lo, hi, th)));
  const old = $("units-legend");
  if (old) old.remove();
  if (cands.some((c) => c.units)) list.after(Object.assign(legend(["text", "image", "cross"]), { id: "units-legend" }));
  const usage = r.explain && r.explain.expert_usage;
  $("usage-fig").hidden = !usage;
  $("usage").replaceChildren(...Object.entries(usage || {}).map(([layer, w]) => usageChart(layer, w)));
  const t = r.timings_ms || {};
  const names = ["parse", "encode_wait", "encode", "search_wait", "search", "fetch", "rerank_wait", "rerank", "assemble"];
  const stages = names.filter((k) => k in t).map((k) => [k, t[k]]);
  const other = (t.total || 0) - stages.reduce((s, [, v]) => s + v, 0);
  if (other > 0) stages.push(["other", other]);
  $("timings").replaceChildren(stacked("stages", stages, `${fmt(t.total, 1)} ms total`, " ms"), legend(stages.map(([k]) => k), Object.fromEntries(stages.map(([k, v]) => [k, `${fmt(v, 1)} ms`]))));
  $("result").hidden = false;
}

// -- linking -----------------------------------------------------------------------------------------------
$("link-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const form = $("link-form"); clearErrors(form);
  if (!$("mention").value.trim()) { showError(422, { error: "mention: type the mention to link", field: "mention" }, "err-form"); $("mention").focus(); return; }
  const filters = {};
  if ($("has_image").value) filters.has_image = $("has_image").value === "true";
  if ($("filter_name").value.trim()) filters.name = $("filter_name").value.trim();
  const ids = $("entity_ids").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (ids.length) filters.entity_ids = ids;
  const body = { mention: $("mention").value, context: $("context").value, explain: $("explain").checked };
  const k = parseInt($("top_k").value, 10);
  if (!Number.isNaN(k)) body.top_k = k;
  if (state.image) body.image = state.image;
  if (Object.keys(filters).length) body.filters = filters;
  $("link-button").disabled = true;
  try {
    const r = await api("/link", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    if (r.ok) renderResult(r.body);
    else { $("result").hidden = true; showError(r.status, r.body, "err-form"); }
  } catch (err) {
    $("err-form").textContent = "Cannot reach the server: " + err;
  } finally { $("link-button").disabled = false; }
});

// -- KB browser ----------------------------------------------------------------------------------------------
let browseSeq = 0;  // answers can arrive out of order (the first listing vs a search typed meanwhile)
async function browse(offset) {
  const seq = ++browseSeq;
  const form = $("browse-form"); clearErrors(form);
  const limit = parseInt($("limit").value, 10) || 20;
  const params = new URLSearchParams({ q: $("q").value, offset: String(offset), limit: String(limit) });
  const r = await api("/entities?" + params, {});
  if (seq !== browseSeq) return;  // a newer search was sent: only its answer is shown
  if (!r.ok) { showError(r.status, r.body, "err-browse"); return; }
  const page = r.body;
  state.browseOffset = page.offset; state.browseTotal = page.total;
  const last = Math.min(page.offset + page.entities.length, page.total);
  $("browse-count").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total} entities` : "No entity matches.";
  $("browse-list").replaceChildren(...page.entities.map((en) =>
    el("li", { class: "cand", "data-entity-id": en.entity_id }, thumb(en.entity_id, en.name),
      el("div", { class: "body" }, entityLink(en), el("span", { class: "muted", text: ` ${en.entity_id}` }),
        el("p", { class: "desc", text: en.description || "" }),
        el("p", { class: "muted", text: (en.aliases || []).length ? "aliases: " + en.aliases.join(", ") : "" })))));
  $("prev").disabled = page.offset === 0;
  $("next").disabled = last >= page.total;
}
$("browse-form").addEventListener("submit", (e) => { e.preventDefault(); browse(0); });
$("prev").addEventListener("click", () => browse(Math.max(0, state.browseOffset - (parseInt($("limit").value, 10) || 20))));
$("next").addEventListener("click", () => browse(state.browseOffset + (parseInt($("limit").value, 10) || 20)));

// -- entity page -------------------------------------------------------------------------------------------
async function showEntity(entityId) {
  $("err-entity").textContent = "";
  const path = `/entities/${encodeURIComponent(entityId)}`;
  for (const id of ["entity-id", "entity-description"]) $(id).textContent = "";
  $("entity-name").textContent = "Loading…"; $("entity-json").href = path;
  const r = await api(path, {});
  $("entity-id").textContent = entityId;
  if (!r.ok) { $("entity-name").textContent = "Unknown entity"; showError(r.status, r.body, "err-entity"); return; }
  const en = r.body;
  $("entity-name").textContent = en.name;
  $("entity-description").textContent = en.description || "";
  $("entity-aliases").replaceChildren(...(en.aliases || []).map((a) => el("li", { text: a })));
  if (!(en.aliases || []).length) $("entity-aliases").append(el("li", { class: "muted", text: "none" }));
  const known = new Set(["entity_id", "name", "description", "aliases", "image_uris"]);
  let attrs = Object.entries(en).filter(([k]) => !known.has(k));
  if (attrs.length === 1 && attrs[0][0] === "attributes" && attrs[0][1] && typeof attrs[0][1] === "object") attrs = Object.entries(attrs[0][1]);
  $("entity-attributes").replaceChildren(...attrs.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: typeof v === "string" ? v : JSON.stringify(v) })]));
  if (!attrs.length) $("entity-attributes").append(el("dd", { class: "muted", text: "none" }));
  const n = Math.max(1, (en.image_uris || []).length);
  $("entity-images").replaceChildren();
  for (let i = 0; i < n; i++) {
    const img = el("img", { src: `${path}/images/${i}`, alt: `Image ${i + 1} of ${en.name}` });
    img.addEventListener("error", () => img.remove());
    $("entity-images").append(img);
  }
}

// -- views -----------------------------------------------------------------------------------------------------
function route() {
  const hash = location.hash || "#link";
  const entity = hash.startsWith("#entity/") ? decodeURIComponent(hash.slice(8)) : null;
  $("view-link").hidden = hash !== "#link";
  $("view-browse").hidden = hash !== "#browse";
  $("view-entity").hidden = entity === null;
  for (const [id, h] of [["nav-link", "#link"], ["nav-browse", "#browse"]]) {
    if (h === hash) $(id).setAttribute("aria-current", "page"); else $(id).removeAttribute("aria-current");
  }
  if (entity !== null) showEntity(entity).then(() => $("entity-name").focus());
  if (hash === "#browse" && !$("browse-list").children.length) browse(0);
}
$("entity-name").tabIndex = -1;
$("back").addEventListener("click", (e) => { if (history.length > 1) { e.preventDefault(); history.back(); } });
window.addEventListener("hashchange", route);
route();
api("/readyz", {}).then((r) => {
  $("ready").textContent = r.ok ? `ready · ${r.body.entities} entities in ${r.body.collection}` : `not ready: ${(r.body && (r.body.reason || r.body.error)) || r.status}`;
}).catch(() => ($("ready").textContent = "server unreachable"));
