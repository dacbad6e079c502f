// Token-pair similarity: the cosine of two sentences split into token-pair contributions, from
// POST v1/similarity/explain. Rows are the first sentence's tokens, columns the second's; with mean pooling
// Σ_ij c_ij is the cosine itself. A pooling that is not a sum over tokens (CLS, last token, max, a Dense layer)
// is not decomposable: the page says so and shows the token vectors' pairwise cosines instead.
//
// Data attributes:
//   body               data-pair = idle | loading | ready | error
//   #pair-explain      data-state (the same); data-a, data-b (sentence indexes of the pair shown)
//   #pair-matrix       data-kind = contributions | token_cosines (what is drawn), data-values (JSON T1×T2, 6
//                      decimals), data-rows, data-cols (JSON token labels), data-cosine, data-sum (6 decimals;
//                      data-sum absent when not decomposable), data-decomposable, data-row-sums, data-column-sums

import { explainSimilarity } from "./api.js";
import { clearBanner, showBanner } from "./banner.js";
import { drawDivergingLegend, drawGrid, hitGrid, layoutGrid, maxAbs } from "./charts.js";
import { labeler } from "./tokens.js";

const $ = (selector) => document.querySelector(selector);
const round6 = (v) => Math.round(v * 1e6) / 1e6;
const MARGIN = 56; // px right of the grid for the row sums

const pair = {
  ctx: null, // {model, sentences, tokenStyle}
  a: 0,
  b: 1,
  kind: "contributions",
  requested: null,
  reply: null,
  layout: null,
  shown: null, // {values, rows, cols}
  hover: null,
  seq: 0,
  cache: new Map(),
};

function setState(value) {
  document.body.dataset.pair = value;
  $("#pair-explain").dataset.state = value;
}

function el(tag, className = "", text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

function fillSelects() {
  const { sentences } = pair.ctx;
  const fill = (select, value) => {
    select.replaceChildren(...sentences.map((s, i) => new Option(`S${i + 1}: ${s}`, String(i))));
    select.value = String(value);
  };
  fill($("#pair-a"), pair.a);
  fill($("#pair-b"), pair.b);
}

/** Called by the explorer after a run: the sentences (one per line) and the model. */
export function followSentences(ctx) {
  const changed = !pair.ctx || pair.ctx.model !== ctx.model
    || pair.ctx.sentences.join("\n") !== ctx.sentences.join("\n");
  pair.ctx = ctx;
  $("#pair-controls").hidden = ctx.sentences.length < 2;
  if (ctx.sentences.length < 2) {
    pair.requested = null;
    pair.seq += 1;
    pair.reply = null;
    setState("idle");
    const box = $("#pair-body");
    box.replaceChildren(el("p", "muted small", "Type two sentences, one per line, to split their cosine into "
      + "token pairs."));
    $("#pair-figure").hidden = true;
    delete $("#pair-matrix").dataset.values;
    return;
  }
  if (changed) {
    pair.a = 0;
    pair.b = 1;
  }
  if (!ctx.explainAvailable) {
    setState("idle");
    $("#pair-body").replaceChildren(el("p", "muted small", "Not available: this model was served without its "
      + "explain support."));
    $("#pair-figure").hidden = true;
    return;
  }
  fillSelects();
  request();
}

function request() {
  const { model, sentences } = pair.ctx;
  const body = { model, input: [sentences[pair.a], sentences[pair.b]] };
  const key = JSON.stringify(body);
  if (key === pair.requested) return;
  pair.requested = key;
  const seq = ++pair.seq;
  setState("loading");
  const cached = pair.cache.get(key);
  (cached ? Promise.resolve(cached) : explainSimilarity(body)).then((reply) => {
    pair.cache.set(key, reply);
    if (pair.cache.size > 16) pair.cache.delete(pair.cache.keys().next().value);
    if (seq !== pair.seq) return;
    pair.reply = reply;
    clearBanner("pair");
    render();
    setState("ready");
  }).catch((err) => {
    if (seq !== pair.seq) return;
    setState("error");
    showBanner(`Token-pair similarity: ${err.message}`, "pair");
  });
}

function draw() {
  const { values, rows, cols } = pair.shown;
  const vmax = Math.max(maxAbs(values.flat()), 1e-9);
  drawGrid($("#pair-matrix canvas"), { values, rowLabels: rows, colLabels: cols, vmax, layout: pair.layout,
    hover: pair.hover, rowMarginal: pair.kind === "contributions" ? pair.reply.row_sums : null });
  return vmax;
}

function render() {
  const reply = pair.reply;
  const { sentences, tokenStyle } = pair.ctx;
  const rows = reply.tokens[0].map(labeler({ tokenStyle, text: sentences[pair.a] }).label);
  const cols = reply.tokens[1].map(labeler({ tokenStyle, text: sentences[pair.b] }).label);
  const decomposable = reply.decomposable && Array.isArray(reply.contributions);
  const kindSelect = $("#pair-kind");
  kindSelect.querySelector("option[value='contributions']").disabled = !decomposable;
  if (!decomposable) pair.kind = "token_cosines";
  kindSelect.value = pair.kind;
  const values = pair.kind === "contributions" ? reply.contributions : reply.token_cosines;
  pair.shown = { values, rows, cols };

  const box = $("#pair-body");
  const summary = el("p", "pair-summary");
  summary.append(el("strong", "", `cosine ${reply.cosine.toFixed(4)}`));
  if (decomposable) summary.append(document.createTextNode(` = Σ c_ij ${reply.sum.toFixed(4)} `
    + `(${reply.pooling} pooling; ${rows.length} × ${cols.length} token pairs)`));
  else summary.append(document.createTextNode(` (${reply.pooling} pooling: not a sum over token pairs)`));
  const note = el("p", `muted small${decomposable ? "" : " notice"}`, reply.note ?? "");
  const matrix = $("#pair-matrix");
  $("#pair-figure").hidden = false;
  const width = Math.max(220, $("#pair-explain").clientWidth);
  pair.layout = layoutGrid(rows, cols, width, { maxCell: 30, marginRight: pair.kind === "contributions" ? MARGIN : 0 });
  pair.hover = null;
  const vmax = draw();
  const caption = pair.kind === "contributions"
    ? "c_ij: each pair's share of the cosine (red adds, blue takes away); bars right: row sums"
    : "cosine of each pair of contextual token vectors";
  drawDivergingLegend($("#pair-legend"), { vmax, width: Math.min(260, width - 10) });
  $("#pair-legend-caption").textContent = caption;
  box.replaceChildren(summary, note);
  matrix.dataset.kind = pair.kind;
  matrix.dataset.values = JSON.stringify(values.map((r) => r.map(round6)));
  matrix.dataset.rows = JSON.stringify(rows);
  matrix.dataset.cols = JSON.stringify(cols);
  matrix.dataset.cosine = String(round6(reply.cosine));
  matrix.dataset.decomposable = String(decomposable);
  if (decomposable) {
    matrix.dataset.sum = String(round6(reply.sum));
    matrix.dataset.rowSums = JSON.stringify(reply.row_sums.map(round6));
    matrix.dataset.columnSums = JSON.stringify(reply.column_sums.map(round6));
  } else {
    for (const k of ["sum", "rowSums", "columnSums"]) delete matrix.dataset[k];
  }
  $("#pair-explain").dataset.a = String(pair.a);
  $("#pair-explain").dataset.b = String(pair.b);
  matrix.setAttribute("aria-label", `Token-pair ${pair.kind === "contributions" ? "contributions" : "cosines"}, `
    + `S${pair.a + 1} × S${pair.b + 1}`);
}

function onMove(event) {
  if (!pair.layout || !pair.shown) return;
  const rect = event.currentTarget.getBoundingClientRect();
  const hit = hitGrid(pair.layout, event.clientX - rect.left, event.clientY - rect.top);
  const tip = $("#tooltip");
  const same = hit && pair.hover && hit.r === pair.hover.r && hit.c === pair.hover.c;
  if (!same) {
    pair.hover = hit;
    draw();
  }
  if (!hit) {
    tip.hidden = true;
    return;
  }
  const { rows, cols } = pair.shown;
  const reply = pair.reply;
  tip.replaceChildren();
  tip.append(el("span", "", `${rows[hit.r]} × ${cols[hit.c]}`));
  if (reply.contributions) tip.append(el("b", "", `c ${reply.contributions[hit.r][hit.c].toFixed(4)}`));
  tip.append(el("span", "", `cos ${reply.token_cosines[hit.r][hit.c].toFixed(3)}`));
  tip.hidden = false;
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  tip.style.left = `${Math.max(4, x)}px`;
  tip.style.top = `${event.clientY + 16}px`;
}

function onLeave() {
  $("#tooltip").hidden = true;
  if (pair.hover) {
    pair.hover = null;
    draw();
  }
}

export function initPair() {
  setState("idle");
  $("#pair-a").addEventListener("change", (e) => {
    pair.a = Number(e.target.value);
    request();
  });
  $("#pair-b").addEventListener("change", (e) => {
    pair.b = Number(e.target.value);
    request();
  });
  $("#pair-kind").addEventListener("change", (e) => {
    pair.kind = e.target.value;
    if (pair.reply) render();
  });
  const canvas = $("#pair-matrix canvas");
  canvas.addEventListener("mousemove", onMove);
  canvas.addEventListener("mouseleave", onLeave);
  let timer = null;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { if (pair.reply && document.body.dataset.pair === "ready") render(); }, 150);
  });
}
