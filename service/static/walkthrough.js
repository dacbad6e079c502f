// The self-attention walk-through: one layer, one head, one query token, every step of the textbook
// explanation, drawn from POST v1/explain (docs/explain.md) computed on the served model.
//
// The selection follows the explorer (its layer, its head when one head is shown, its focused token) and the
// walk-through's own selects and token chips drive the explorer back, so the heatmap above shows the same row.
//
// What is drawn is mirrored into data attributes, so a browser test can compare it with the API:
//   body                 data-walkthrough = idle | loading | ready | error (the walk-through's own state; the
//                        explorer's stays in body data-state)
//   #walkthrough         data-state (the same), data-model, data-layer, data-head, data-token (the selection of
//                        the reply drawn; set when it is drawn), data-tokens (JSON labels), data-renders (a counter)
//   #wt-tokens .chip     data-index (explain token index); classes "special", "unknown", "selected"
//   #vocab-notice        shown when vocabulary.unknown_share > 0: data-unknown-share, data-unknown-count,
//                        data-better-model (the served model with the lowest share, when lower than this one's)
//   .strip[data-vector]  one vector as a colour strip: data-vector = token_embedding | position | segment | sum |
//                        input_output | q | weighted_sum | head_output | attention_input | attention_output |
//                        residual | attention_block_output | ffn_output | layer_output; data-values (JSON, 6
//                        decimals), data-norm
//   .strip-block[data-vector=K|V]  data-values (JSON T×d_k)
//   .bar-col[data-series]  data-series = raw_scores | scaled_scores | position_bias | visible | weights |
//                        value_norms | contributions; data-values (JSON per key, 6 decimals; visible: booleans)
//   #wt-scores           data-weight-order, data-contribution-order (JSON key indexes), data-scale (√d_k)
//   #wt-head-norms       data-values (‖output‖ of each head of the layer); .bar-row[data-head]
//   #wt-trajectory       data-values (cosine_to_input per layer), data-previous (cosine_to_previous);
//                        tr[data-layer] with data-nearest = JSON [[token index, cosine], ...]
//   #wt-rollout-rows     data-values (JSON L×T: the query token's rollout row after each layer)
//   #wt-rollout-matrix   data-values (JSON T×T: R_L)

import { explain } from "./api.js";
import { clearBanner, showBanner } from "./banner.js";
import { drawGrid, drawStrips, layoutGrid, maxAbs, norm } from "./charts.js";
import { drawMatrix, layoutMatrix } from "./heatmap.js";
import { labeler } from "./tokens.js";

const $ = (selector) => document.querySelector(selector);
const round6 = (v) => (v === null || v === undefined ? null : Math.round(v * 1e6) / 1e6);
const rounded = (values) => values.map(round6);
const ROW_H = 20; // px per key row in the score table (CSS .score-table --row-h)
const CACHE_SIZE = 32;

const wt = {
  hooks: { onSelect: () => {}, onModel: () => {}, onUnknown: () => {} },
  ctx: null, // the explorer's context: {model, text, tokens, promptChars, tokenStyle, layer, head, focus, ...}
  textIdx: [], // explain token k <-> explorer token textIdx[k] (the explorer's tokens may carry a prompt)
  layer: 0,
  head: 0,
  token: null,
  overrides: null, // a selection from the page URL, applied once to the first request
  requested: null, // the request body (JSON) in flight or last answered
  reply: null,
  seq: 0,
  renders: 0,
  cache: new Map(),
};

function setState(value) {
  document.body.dataset.walkthrough = value;
  $("#walkthrough").dataset.state = value;
}

function el(tag, className = "", text = null) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== null) node.textContent = text;
  return node;
}

const fmt = (v, digits = 3) => (v === null || v === undefined ? "—" : Math.abs(v) < 0.5 * 10 ** -digits
  ? (0).toFixed(digits) : v.toFixed(digits));

// ---------------------------------------------------------------- selection

function promptMask(tokens, promptChars) {
  return tokens.map((t) => promptChars > 0 && !t.special && t.start != null && t.start < promptChars);
}

function toExplainIndex(focus) {
  if (focus === null || focus === undefined) return null;
  const k = wt.textIdx.indexOf(focus);
  if (k >= 0) return k;
  const after = wt.textIdx.findIndex((i) => i > focus); // a prompt token: the first text token after it
  return after >= 0 ? after : null;
}

function toExplorerIndex(k) {
  if (wt.reply && wt.reply.tokens.length !== wt.textIdx.length) return null; // tokenized differently
  return wt.textIdx[k] ?? null;
}

/** The walk-through's selects and chips change the selection through the explorer (one source of truth). */
function select(change) {
  const next = { layer: wt.layer, head: wt.head, token: wt.token, ...change };
  const focus = next.token === null ? null : toExplorerIndex(next.token);
  const inExplorer = wt.ctx && wt.ctx.layers.includes(next.layer) && wt.ctx.heads.includes(next.head)
    && (next.token === null || focus !== null);
  if (inExplorer) {
    wt.hooks.onSelect({ layer: next.layer, head: next.head, focus });
  } else {
    Object.assign(wt, next);
    request();
  }
}

/** Called by the explorer after each render: follow its sentence, model, layer, head and focused token. */
export function followExplorer(ctx) {
  const sameInput = wt.ctx && wt.ctx.model === ctx.model && wt.ctx.text === ctx.text;
  wt.ctx = ctx;
  const mask = promptMask(ctx.tokens, ctx.promptChars);
  wt.textIdx = ctx.tokens.map((_, i) => i).filter((i) => !mask[i]);
  if (!sameInput) wt.reply = null;
  if (!ctx.explainAvailable) {
    unavailable();
    return;
  }
  wt.layer = ctx.layer;
  if (ctx.head !== "mean") wt.head = ctx.head;
  wt.token = toExplainIndex(ctx.focus);
  if (wt.overrides) {
    for (const [k, v] of Object.entries(wt.overrides)) if (v !== null) wt[k] = v;
    wt.overrides = null;
  }
  fillSelects();
  request();
}

function unavailable() {
  wt.requested = null;
  wt.seq += 1;
  setState("idle");
  const box = $("#walkthrough");
  box.replaceChildren(el("p", "muted", "This model was served without its explain graph (exported without it, or "
    + "EMBED_EXPLAIN_GRAPH=off), so the walk-through is not available."));
  $("#vocab-notice").hidden = true;
  $("#wt-tokens").replaceChildren();
}

function request() {
  const ctx = wt.ctx;
  if (!ctx || !ctx.text) return;
  const body = { input: ctx.text, model: ctx.model, layer: wt.layer, head: wt.head };
  if (wt.token !== null) body.token = wt.token;
  const key = JSON.stringify(body);
  if (key === wt.requested) return; // in flight, answered or refused already
  wt.requested = key;
  const seq = ++wt.seq;
  setState("loading");
  const cached = wt.cache.get(key);
  (cached ? Promise.resolve(cached) : explain(body)).then((reply) => {
    if (!cached) {
      wt.cache.set(key, reply);
      if (wt.cache.size > CACHE_SIZE) wt.cache.delete(wt.cache.keys().next().value);
    }
    if (seq !== wt.seq) return;
    wt.reply = reply;
    wt.layer = reply.selection.layer;
    wt.head = reply.selection.head;
    wt.token = reply.selection.token;
    clearBanner("walkthrough");
    render();
    setState("ready");
  }).catch((err) => {
    if (seq !== wt.seq) return;
    setState("error");
    showBanner(`Walk-through: ${err.message}`, "walkthrough");
  });
}

// ---------------------------------------------------------------- controls

function fillSelects() {
  const ctx = wt.ctx;
  const fill = (select, options, value) => {
    select.replaceChildren(...options.map(([v, text]) => new Option(text, String(v))));
    select.value = String(value);
  };
  const dims = wt.reply?.dims;
  const layers = dims ? Array.from({ length: dims.layers }, (_, i) => i) : ctx.layers;
  const heads = dims ? Array.from({ length: dims.heads }, (_, i) => i) : ctx.heads;
  fill($("#wt-layer"), layers.map((l) => [l, `${l}`]), wt.layer);
  fill($("#wt-head"), heads.map((h) => [h, `${h}`]), wt.head);
  const { label } = labeler({ tokenStyle: ctx.tokenStyle, text: ctx.text });
  const tokens = wt.reply ? wt.reply.tokens : wt.textIdx.map((i) => ctx.tokens[i]);
  const labelOf = wt.reply ? label : labeler({ tokenStyle: ctx.tokenStyle, text: ctx.text,
    promptChars: ctx.promptChars }).label;
  fill($("#wt-token"), tokens.map((t, i) => [i, `${i}: ${labelOf(t)}`]), wt.token ?? "");
}

/** Apply a selection from the page URL (?layer=&head=&token=) to the first walk-through request. */
export function initWalkthrough(hooks, overrides = null) {
  Object.assign(wt.hooks, hooks);
  wt.overrides = overrides;
  setState("idle");
  $("#wt-layer").addEventListener("change", (e) => select({ layer: Number(e.target.value) }));
  $("#wt-head").addEventListener("change", (e) => select({ head: Number(e.target.value) }));
  $("#wt-token").addEventListener("change", (e) => select({ token: Number(e.target.value) }));
  let timer = null;
  window.addEventListener("resize", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { if (wt.reply && document.body.dataset.walkthrough === "ready") render(); }, 150);
  });
}

// ---------------------------------------------------------------- pictures

function card(id, step, title, caption) {
  const article = el("article", "step");
  article.id = id;
  const h = el("h3");
  h.append(el("span", "step-no", String(step)), document.createTextNode(title));
  article.append(h);
  if (caption) article.append(el("p", "muted small caption", caption));
  return article;
}

function stripWidth(container) {
  return Math.max(120, Math.floor(container.clientWidth) - 200);
}

/** One vector as a labelled colour strip with its norm; `vmax` defaults to its own max |value|. */
function stripRow(name, key, values, width, { vmax = null, title = "" } = {}) {
  const row = el("div", "strip-row strip");
  row.dataset.vector = key;
  row.dataset.values = JSON.stringify(rounded(values));
  const n = norm(values);
  row.dataset.norm = String(round6(n));
  const nameEl = el("span", "strip-name", name);
  if (title) nameEl.title = title;
  const canvas = el("canvas");
  const scale = vmax ?? Math.max(maxAbs(values), 1e-9);
  drawStrips(canvas, [values], { vmax: scale, width, rowHeight: 14 });
  canvas.title = `${values.length} components, colour scale ±${scale.toFixed(3)}`;
  row.append(nameEl, canvas, el("span", "strip-norm", `‖·‖ ${n.toFixed(3)}`));
  return row;
}

function noteRow(name, text) {
  const row = el("div", "strip-row note-row");
  row.append(el("span", "strip-name", name), el("span", "muted small", text));
  return row;
}

function renderTokens(reply, labels) {
  const box = $("#wt-tokens");
  box.replaceChildren();
  reply.tokens.forEach((tok, i) => {
    const chip = el("button", `chip${tok.special ? " special" : ""}${tok.unknown ? " unknown" : ""}`
      + `${i === reply.selection.token ? " selected" : ""}`, labels[i]);
    chip.type = "button";
    chip.dataset.index = String(i);
    chip.title = `#${i} · id ${tok.id}${tok.unknown ? " · unknown to this model's vocabulary" : ""}`;
    chip.addEventListener("click", () => select({ token: i }));
    box.append(chip);
  });
}

function renderVocabulary(reply) {
  const notice = $("#vocab-notice");
  const v = reply.vocabulary;
  notice.replaceChildren();
  if (!v || !(v.unknown_share > 0)) {
    notice.hidden = true;
    for (const k of ["unknownShare", "unknownCount", "betterModel"]) delete notice.dataset[k];
    return;
  }
  notice.dataset.unknownShare = String(round6(v.unknown_share));
  notice.dataset.unknownCount = String(v.unknown_count);
  const pct = (s) => `${(100 * s).toFixed(s > 0 && s < 0.01 ? 1 : 0)}%`;
  const unk = v.unknown_token ? ` (read as ${v.unknown_token})` : "";
  notice.append(el("strong", "", `${pct(v.unknown_share)} of this sentence's tokens are unknown to ${reply.model}`),
    document.createTextNode(`: ${v.unknown_count} token${v.unknown_count === 1 ? "" : "s"}${unk}, all with the same `
      + "vector, so the model cannot tell those characters apart. "));
  const others = (v.models ?? []).filter((m) => m.model !== reply.model)
    .sort((a, b) => a.unknown_share - b.unknown_share);
  const better = others.find((m) => m.unknown_share < v.unknown_share);
  if (better) {
    notice.dataset.betterModel = better.model;
    notice.append(document.createTextNode(`${better.model} covers it better (${pct(better.unknown_share)} unknown). `));
    const button = el("button", "link-button", `Switch to ${better.model}`);
    button.type = "button";
    button.addEventListener("click", () => wt.hooks.onModel(better.model));
    notice.append(button);
  } else {
    delete notice.dataset.betterModel;
    notice.append(document.createTextNode(others.length ? "No other served model covers it better."
      : "No other model is served here."));
  }
  notice.hidden = false;
}

function renderInput(reply, width) {
  const iv = reply.input_vector;
  const c = card("wt-input", 1, "The input vector x",
    "What layer 0 reads for this token: its row of the embedding table, plus where it sits, plus its segment, "
    + "then normalised. Blue < 0 < red; the first four share one colour scale.");
  const parts = [iv.token_embedding, iv.position, iv.segment, iv.sum].filter(Boolean);
  const shared = Math.max(...parts.map(maxAbs), 1e-9);
  c.append(stripRow("token embedding", "token_embedding", iv.token_embedding, width, { vmax: shared }));
  if (iv.position) c.append(stripRow("+ position", "position", iv.position, width, { vmax: shared }));
  else c.append(noteRow("+ position", "no position vector is added here (see below)"));
  if (iv.segment) c.append(stripRow("+ segment", "segment", iv.segment, width, { vmax: shared }));
  else c.append(noteRow("+ segment", "this model has no segment (token-type) embedding"));
  c.append(stripRow("= sum", "sum", iv.sum, width, { vmax: shared }));
  c.append(stripRow("→ after norm", "input_output", iv.output, width,
    { title: "after the embedding norm: what layer 0 reads (equal to the sum without a norm)" }));
  if (iv.position_note) c.append(el("p", "position-note small", `Position: ${iv.position_note}.`));
  return c;
}

function renderQuery(reply, width, labels) {
  const h = reply.head;
  const pattern = reply.attention_pattern ?? {};
  const sel = reply.selection;
  const kv = pattern.num_kv_heads && pattern.num_kv_heads < reply.dims.heads
    ? ` This model has ${pattern.num_kv_heads} key/value heads for ${reply.dims.heads} query heads: K and V `
      + "come from the key head this query head shares." : "";
  const rotary = pattern.position === "rotary" ? " q and k are rotated by their positions (rotary)." : "";
  const c = card("wt-query", 2, `Query of “${labels[sel.token]}”`,
    `q = x W_Q for head ${sel.head} of layer ${sel.layer} (d_k = ${reply.dims.d_k}); every token's key k_j and `
    + `value v_j are in the table below.${rotary}${kv}`);
  c.append(stripRow("q", "q", h.q, width));
  return c;
}

function barColumn(series, title, values, { masked = [], digits = 3, signed = null, top = null,
  tooltip = null } = {}) {
  const col = el("div", "bar-col");
  col.dataset.series = series;
  col.dataset.values = JSON.stringify(rounded(values));
  col.append(el("div", "col-head", title));
  const finite = values.filter((v) => v !== null && Number.isFinite(v));
  const m = Math.max(maxAbs(finite), 1e-12);
  const hasNeg = signed ?? finite.some((v) => v < 0);
  const vmin = hasNeg ? -m : 0;
  const span = m - vmin;
  values.forEach((v, j) => {
    const cell = el("div", `bar-cell${masked[j] ? " masked" : ""}${j === top ? " top" : ""}`);
    if (v !== null && Number.isFinite(v)) {
      const zero = -vmin / span;
      const x = (v - vmin) / span;
      const fill = el("span", `bar-fill${v < 0 ? " neg" : ""}`);
      fill.style.left = `${(Math.min(zero, x) * 100).toFixed(2)}%`;
      fill.style.width = `${(Math.abs(x - zero) * 100).toFixed(2)}%`;
      cell.append(fill, el("span", "bar-num", fmt(v, digits)));
    } else {
      cell.append(el("span", "bar-num", "masked"));
    }
    if (tooltip) cell.title = tooltip(j, v);
    col.append(cell);
  });
  return col;
}

function renderScores(reply, labels) {
  const h = reply.head;
  const q = reply.selection.token;
  const masked = h.visible.map((v) => !v);
  const pattern = reply.attention_pattern ?? {};
  const maskWhy = pattern.causal ? "causal: a token sees only itself and earlier tokens"
    : pattern.layer_is_local ? `local window of ${pattern.local_window} tokens on this layer`
      : "every token is visible (bidirectional)";
  const topW = h.weight_order[0];
  const topC = h.contribution_order[0];
  const differ = topW !== topC ? ` Here the largest weight (on “${labels[topW]}”) is not the largest `
    + `contribution (from “${labels[topC]}”): a small α on a long value vector can move the output more.` : "";
  const c = card("wt-scores-card", 3, "Scores → mask → softmax → contributions",
    `One row per key token j. q·k_j, divided by √d_k = ${h.scale.toFixed(3)}; masked keys (${maskWhy}) get −∞; `
    + "softmax turns the row into weights α_j that sum to 1 (equal to the heatmap's row); ‖v_j W_O‖ is how long "
    + `token j's value is after the output projection, and α_j‖v_j W_O‖ how much it moves the output.${differ}`);
  const table = el("div", "score-table");
  table.id = "wt-scores";
  table.style.setProperty("--row-h", `${ROW_H}px`);
  table.dataset.weightOrder = JSON.stringify(h.weight_order);
  table.dataset.contributionOrder = JSON.stringify(h.contribution_order);
  table.dataset.scale = String(round6(h.scale));

  const labelCol = el("div", "label-col");
  labelCol.append(el("div", "col-head", "key j"));
  reply.tokens.forEach((tok, j) => {
    const cell = el("div", `label-cell${tok.special ? " special" : ""}${tok.unknown ? " unknown" : ""}`
      + `${j === q ? " query" : ""}${masked[j] ? " masked" : ""}`, labels[j]);
    cell.title = `#${j} ${labels[j]}${j === q ? " (the query token itself)" : ""}`;
    labelCol.append(cell);
  });
  table.append(labelCol);

  for (const [key, title, rows] of [["K", "k_j", h.K], ["V", "v_j", h.V]]) {
    const block = el("div", "strip-col strip-block");
    block.dataset.vector = key;
    block.dataset.values = JSON.stringify(rows.map(rounded));
    block.append(el("div", "col-head", title));
    const canvas = el("canvas");
    drawStrips(canvas, rows, { vmax: Math.max(...rows.map(maxAbs), 1e-9), width: 96, rowHeight: ROW_H - 6,
      gap: 6, masked });
    block.append(canvas);
    table.append(block);
  }
  const tip = (name) => (j, v) => `${name} for key #${j} ${labels[j]}: ${v === null ? "masked" : v.toFixed(6)}`;
  table.append(barColumn("raw_scores", "q·k_j", h.raw_scores, { masked, digits: 2, tooltip: tip("q·k") }));
  table.append(barColumn("scaled_scores", "÷ √d_k", h.scaled_scores, { masked, digits: 3, tooltip: tip("q·k/√d_k") }));
  if (h.position_bias) {
    table.append(barColumn("position_bias", "+ bias", h.position_bias, { masked, digits: 3,
      tooltip: tip("relative position bias") }));
  }
  const maskCol = el("div", "mask-col bar-col");
  maskCol.dataset.series = "visible";
  maskCol.dataset.values = JSON.stringify(h.visible);
  maskCol.append(el("div", "col-head", "mask"));
  h.visible.forEach((v) => maskCol.append(el("div", `mask-cell${v ? "" : " masked"}`, v ? "✓" : "−∞")));
  table.append(maskCol);
  table.append(barColumn("weights", "softmax α_j", h.weights, { masked, digits: 3, signed: false, top: topW,
    tooltip: tip("weight α") }));
  table.append(barColumn("value_norms", "‖v_j W_O‖", h.value_norms, { masked, digits: 2, signed: false,
    tooltip: tip("‖v W_O‖") }));
  table.append(barColumn("contributions", "α_j‖v_j W_O‖", h.contributions, { masked, digits: 3, signed: false,
    top: topC, tooltip: tip("contribution") }));
  const scroll = el("div", "score-scroll");
  scroll.append(table);
  c.append(scroll);
  return c;
}

function renderSum(reply, width) {
  const h = reply.head;
  const total = h.contributions.reduce((s, v) => s + v, 0);
  const c = card("wt-sum", 4, "Weighted sum of the values",
    `Σ_j α_j v_j (d_k = ${reply.dims.d_k}), then this head's slice of W_O maps it back to d_model = `
    + `${reply.dims.d_model}: the head's output for the token. Its length ${norm(h.output).toFixed(3)} is at most `
    + `the sum of the contributions, ${total.toFixed(3)}.`);
  c.append(stripRow("Σ α_j v_j", "weighted_sum", h.weighted_sum, width));
  c.append(stripRow("· W_O^h", "head_output", h.output, width));
  return c;
}

function renderLayer(reply, width) {
  const L = reply.layer;
  const sel = reply.selection;
  const c = card("wt-layer-card", 5, `Layer ${sel.layer}: from x to the token's new vector`,
    L.norm_first
      ? "Pre-norm: h = x + Attention(LN(x)), output = h + FFN(LN(h)). Every head's output adds to the residual."
      : "Post-norm (BERT): h = LN(x + Attention(x)), output = LN(h + FFN(h)). Every head's output adds to the "
        + "residual; each strip has its own colour scale.");
  const norms = el("div", "head-norms");
  norms.id = "wt-head-norms";
  norms.dataset.values = JSON.stringify(rounded(L.head_output_norms));
  norms.append(el("div", "col-head", "‖head output‖ for this token, every head of the layer"));
  const m = Math.max(...L.head_output_norms, 1e-12);
  const bars = el("div", "head-bars");
  L.head_output_norms.forEach((v, hIdx) => {
    const row = el("button", `bar-row${hIdx === sel.head ? " selected" : ""}`);
    row.type = "button";
    row.dataset.head = String(hIdx);
    row.title = `head ${hIdx}: ‖output‖ = ${v.toFixed(4)}; click to walk through this head`;
    const track = el("span", "bar-track");
    const fill = el("span", "bar-fill");
    fill.style.height = `${((v / m) * 100).toFixed(2)}%`;
    track.append(fill);
    row.append(el("span", "bar-num", v.toFixed(2)), track, el("span", "bar-label", `h${hIdx}`));
    row.addEventListener("click", () => select({ head: hIdx }));
    bars.append(row);
  });
  norms.append(bars);
  c.append(norms);
  const steps = L.norm_first
    ? [["LN(x)", "attention_input", L.attention_input, "what Q, K and V are projected from"],
      ["attention", "attention_output", L.attention_output, "all heads concatenated, W_O and its bias"],
      ["h = x + attn", "residual", L.residual, "the residual stream after attention"],
      ["FFN(LN(h))", "ffn_output", L.ffn_output, "the feed-forward's output"],
      ["h + FFN", "layer_output", L.output, "the layer's output: the token's new vector"]]
    : [["x", "attention_input", L.attention_input, "the layer's input: what Q, K and V are projected from"],
      ["attention", "attention_output", L.attention_output, "all heads concatenated, W_O and its bias"],
      ["x + attn", "residual", L.residual, "the residual: input plus attention"],
      ["LN → h", "attention_block_output", L.attention_block_output, "after the attention norm"],
      ["FFN(h)", "ffn_output", L.ffn_output, "the feed-forward's output"],
      ["LN(h + FFN)", "layer_output", L.output, "the layer's output: the token's new vector"]];
  for (const [name, key, values, title] of steps) c.append(stripRow(name, key, values, width, { title }));
  return c;
}

function renderTrajectory(reply, labels) {
  const traj = reply.trajectory;
  const c = card("wt-trajectory-card", 6, "The token's path through the layers",
    "Cosine of the token's vector after each layer with its input vector x and with the previous layer's, and "
    + "the other tokens it is now closest to.");
  const table = el("table", "trajectory");
  table.id = "wt-trajectory";
  table.dataset.values = JSON.stringify(traj.map((t) => round6(t.cosine_to_input)));
  table.dataset.previous = JSON.stringify(traj.map((t) => round6(t.cosine_to_previous)));
  const head = el("tr");
  for (const name of ["", "cos to x", "cos to prev.", "nearest tokens"]) head.append(el("th", "", name));
  table.append(head);
  for (const t of traj) {
    const tr = el("tr", t.layer === reply.selection.layer ? "current" : "");
    tr.dataset.layer = String(t.layer);
    tr.dataset.nearest = JSON.stringify(t.nearest.map((n) => [n.token, round6(n.cosine)]));
    const th = el("th", "", `L${t.layer}`);
    th.title = `walk through layer ${t.layer}`;
    th.addEventListener("click", () => select({ layer: t.layer }));
    const cos = el("td", "cos-cell");
    const bar = el("span", "cos-bar");
    bar.style.setProperty("--w", `${(Math.max(0, t.cosine_to_input) * 100).toFixed(1)}%`);
    cos.append(bar, el("span", "bar-num", t.cosine_to_input.toFixed(3)));
    const prev = el("td", "num", t.cosine_to_previous.toFixed(3));
    const near = el("td", "nearest");
    for (const n of t.nearest) {
      const chip = el("button", "chip mini", `${labels[n.token]} ${n.cosine.toFixed(2)}`);
      chip.type = "button";
      chip.title = `token #${n.token}: cosine ${n.cosine.toFixed(4)}; click to walk through it`;
      chip.addEventListener("click", () => select({ token: n.token }));
      near.append(chip);
    }
    tr.append(th, cos, prev, near);
    table.append(tr);
  }
  c.append(table);
  return c;
}

function renderRollout(reply, labels, width) {
  const ro = reply.rollout;
  const q = reply.selection.token;
  const T = labels.length;
  const c = card("wt-rollout-card", 7, "Attention rollout",
    `How much of each input token flows into “${labels[q]}” through all layers (Abnar & Zuidema 2020): `
    + `Â = ${ro.residual_weight}·mean_h(A) + ${1 - ro.residual_weight}·I, multiplied layer by layer. `
    + "Top: the token's row after each layer; bottom: every token's row after the last layer.");
  const rows = el("div", "rollout-rows");
  rows.id = "wt-rollout-rows";
  rows.dataset.values = JSON.stringify(ro.rows.map(rounded));
  const rowLabels = ro.rows.map((_, l) => `after L${l}`);
  const layout = layoutGrid(rowLabels, labels, Math.min(width, 40 * T + 200), { maxCell: 28, minRowHeight: 16 });
  const canvas = el("canvas");
  drawGrid(canvas, { values: ro.rows, rowLabels, colLabels: labels, vmax: Math.max(...ro.rows.map(maxAbs), 1e-9),
    scale: "viridis", layout, highlightCol: q });
  rows.append(canvas);
  const matrix = el("div", "rollout-matrix");
  matrix.id = "wt-rollout-matrix";
  matrix.dataset.values = JSON.stringify(ro.matrix.map(rounded));
  const mCanvas = el("canvas");
  const mLayout = layoutMatrix(T, labels, Math.min(width, 22 * T + 200), { maxCell: 22 });
  const flat = Float32Array.from(ro.matrix.flat());
  drawMatrix(mCanvas, { values: flat, labels, special: reply.tokens.map((t) => t.special), vmin: 0,
    vmax: Math.max(...flat, 1e-9), layout: mLayout, focusRow: q });
  matrix.append(mCanvas);
  c.append(rows, matrix);
  return c;
}

function render() {
  const reply = wt.reply;
  const ctx = wt.ctx;
  const { label } = labeler({ tokenStyle: ctx.tokenStyle, text: ctx.text });
  const labels = reply.tokens.map(label);
  const box = $("#walkthrough");
  const sel = reply.selection;
  renderTokens(reply, labels);
  renderVocabulary(reply);
  fillSelects();
  const width = Math.max(200, box.clientWidth);
  const two = width >= 900;
  const cardWidth = two ? Math.floor((width - 12) / 2) : width;
  const sw = stripWidth({ clientWidth: cardWidth - 28 });
  const pattern = reply.attention_pattern ?? {};
  const summary = el("p", "wt-summary");
  summary.append(el("strong", "", `“${labels[sel.token]}”`),
    document.createTextNode(` (token ${sel.token} of ${reply.dims.tokens}) · layer ${sel.layer} · head ${sel.head} · `
      + `${reply.model} (${reply.family}), d_model ${reply.dims.d_model}, d_k ${reply.dims.d_k}`
      + `${pattern.causal ? " · causal" : ""}${pattern.layer_is_local ? " · local window on this layer" : ""}`));
  const grid = el("div", `steps${two ? " two" : ""}`);
  grid.append(renderInput(reply, sw), renderQuery(reply, sw, labels), renderScores(reply, labels),
    renderSum(reply, sw), renderLayer(reply, sw), renderTrajectory(reply, labels),
    renderRollout(reply, labels, cardWidth - 28));
  box.replaceChildren(summary, grid);
  box.dataset.model = reply.model;
  box.dataset.layer = String(sel.layer);
  box.dataset.head = String(sel.head);
  box.dataset.token = String(sel.token);
  box.dataset.tokens = JSON.stringify(labels);
  wt.renders += 1;
  box.dataset.renders = String(wt.renders);
  wt.hooks.onUnknown(new Set(reply.tokens.filter((t) => t.unknown).map((t) => t.id)));
}
