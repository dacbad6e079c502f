// Attention explorer: wires the page to POST v1/encode and draws what comes back.
//
// One request fetches every layer and head of the shown sentence (base64 float32), so switching layer/head is
// instant; a second, attention-free request embeds all sentences for the similarity matrix.
//
// What is drawn is mirrored into data attributes, so a browser test can compare it with the API:
//   body            data-state = idle | loading | ready | error; data-renders = completed renders (a counter)
//   #heatmap        data-sentence (line index), data-layer (layer id), data-head (head id or "mean"),
//                   data-tokens (JSON labels), data-values (JSON T×T, rounded to 6 decimals), data-vmax,
//                   data-grid (JSON {left, top, cell}: CSS px of the cell grid inside its canvas)
//   #tokens .chip   data-index; class "special" for special tokens, "selected" for the focused one
//   #heads-grid     .head-tile[data-head] (head id or "mean"), class "selected"
//   #token-focus    data-token (query index); tr[data-layer] with data-keys = JSON [[key index, weight], ...]
//                   (top 3 by mean over heads, [CLS]/[SEP] left out unless #hide-special is unchecked)
//   #similarity     data-labels (JSON sentences), data-values (JSON N×N cosine, 6 decimals); td[data-value]
//   #tokens .chip   class "unknown" for a token the model's vocabulary does not know (learnt from v1/explain)
//   #model          the served model every request names (GET v1/models; only `embed` models are selectable);
//                   body data-model = that name
//   #examples       button[data-example] fill the input with an example and run it
// The walk-through (walkthrough.js), the model view (modelview.js) and the token-pair similarity (pair.js)
// document their own attributes.
//
// The page URL may carry ?text=...(lines separated by a newline)&model=...&layer=...&head=...&token=... (the
// last three select the first walk-through, by the explain graph's token index).

import { ApiError, decodeAttention, encode, getInfo, getModels } from "./api.js";
import { clearBanner, showBanner } from "./banner.js";
import { colour, css, inkOn } from "./colormap.js";
import { drawLegend, drawMatrix, drawThumb, hitTest, layoutMatrix } from "./heatmap.js";
import { renderModelView } from "./modelview.js";
import { followSentences, initPair } from "./pair.js";
import { labeler } from "./tokens.js";
import { followExplorer, initWalkthrough } from "./walkthrough.js";

const $ = (selector) => document.querySelector(selector);
const TOP_K = 3;
const PRONOUNS = new Set(["it", "its", "he", "him", "his", "she", "her", "they", "them", "their",
  "他", "她", "它", "他们", "她们"]);
const EXAMPLES = {
  love: "I love ai\nXiaoming likes her because Xiaohua helped him, not Xiaoli.",
  pronoun: "Xiaoming likes her because Xiaohua helped him, not Xiaoli.\nI love ai",
  "pronoun-zh": "小明喜欢她，因为小花帮助了他，而不是小丽。\nXiaoming likes her because Xiaohua helped him, not Xiaoli.",
  similar: "I love ai\nI really like artificial intelligence.\nThe stock market fell sharply on Monday.",
  cat: "The cat sat on the mat because it was tired.\nA kitten was sleeping on the rug.\n"
    + "Stock markets fell sharply on Monday.",
};

const state = {
  model: null, // the served model every request names (null until /info answers: the server's default)
  info: null, // /info of that model
  unknownIds: new Set(), // token ids the model's vocabulary does not know (from v1/explain)
  sentences: [],
  sentence: 0,
  tokens: [],
  att: null, // {layers, heads, L, H, T, values}
  layer: null, // a layer id from att.layers
  head: "mean", // a head id from att.heads, or "mean"
  focus: null, // query token index
  hover: null,
  layout: null,
  similarity: null, // {labels, values: number[][]}
  cache: new Map(), // sentence text -> {tokens, att}
  seq: 0,
  tokenStyle: "wordpiece", // how the model's vocabulary spells word starts (/info token_style)
  promptChars: 0, // characters of the default prompt the server prepends (token offsets count them)
  busy: false, // a request is in flight: a redraw (resize, click) must not declare the page ready
  renders: 0,
};

// ---------------------------------------------------------------- state of the page (for people and for tests)

function setState(value) {
  document.body.dataset.state = value;
}

function hideBanner() {
  clearBanner(); // a new run starts from a clean page: every view's message goes
}

const round6 = (v) => Math.round(v * 1e6) / 1e6;

// ---------------------------------------------------------------- attention arithmetic

function layerPos() {
  return state.att.layers.indexOf(state.layer);
}

/** The T×T matrix of (layer, head), or the mean over heads; a view, not a copy, for a single head. */
function headMatrix(lp, head) {
  const { H, T, values } = state.att;
  const size = T * T;
  if (head !== "mean") {
    const hp = state.att.heads.indexOf(head);
    return values.subarray((lp * H + hp) * size, (lp * H + hp + 1) * size);
  }
  const mean = new Float32Array(size);
  for (let h = 0; h < H; h++) {
    const offset = (lp * H + h) * size;
    for (let i = 0; i < size; i++) mean[i] += values[offset + i];
  }
  for (let i = 0; i < size; i++) mean[i] /= H;
  return mean;
}

function maxOf(values) {
  let m = 0;
  for (const v of values) if (v > m) m = v;
  return m;
}

// Token labels for the shown sentence (tokens.js), rebuilt when the sentence or the model's token style changes.
let labelCache = { key: null, fns: null };
function labelFns() {
  const text = state.sentences[state.sentence] ?? "";
  const key = `${state.tokenStyle}\u0000${state.promptChars}\u0000${text}`;
  if (labelCache.key !== key) {
    labelCache = { key, fns: labeler({ tokenStyle: state.tokenStyle, text, promptChars: state.promptChars }) };
  }
  return labelCache.fns;
}

const tokenLabel = (tok) => labelFns().label(tok);
const isWordStart = (tok) => labelFns().wordStart(tok);

// ---------------------------------------------------------------- views

function renderTokens() {
  const box = $("#tokens");
  box.replaceChildren();
  state.tokens.forEach((tok, i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    const unknown = !tok.special && state.unknownIds.has(tok.id);
    chip.className = `chip${tok.special ? " special" : ""}${isWordStart(tok) ? " word-start" : ""}` +
      `${unknown ? " unknown" : ""}${i === state.focus ? " selected" : ""}`;
    chip.textContent = tokenLabel(tok);
    chip.dataset.index = String(i);
    chip.title = `#${i} · id ${tok.id}${tok.special ? " · special" : ` · chars ${tok.start}–${tok.end}`}` +
      `${unknown ? " · unknown to this model's vocabulary" : ""}`;
    chip.addEventListener("click", () => setFocus(i));
    box.append(chip);
  });
}

function drawHeatmap() {
  const box = $("#heatmap");
  const values = headMatrix(layerPos(), state.head);
  const labels = state.tokens.map(tokenLabel);
  const vmax = $("#scale").value === "unit" ? 1 : Math.max(maxOf(values), 1e-6);
  const width = Math.max(240, box.parentElement.clientWidth);
  state.layout = layoutMatrix(state.att.T, labels, width);
  drawMatrix(box.querySelector("canvas"), {
    values, labels, special: state.tokens.map((t) => t.special), vmin: 0, vmax, layout: state.layout,
    focusRow: state.focus, hover: state.hover,
  });
  return { values, labels, vmax };
}

function renderHeatmap() {
  const { values, labels, vmax } = drawHeatmap();
  const box = $("#heatmap");
  const T = state.att.T;
  const rows = [];
  for (let r = 0; r < T; r++) rows.push(Array.from(values.subarray(r * T, (r + 1) * T), round6));
  box.dataset.sentence = String(state.sentence);
  box.dataset.layer = String(state.layer);
  box.dataset.head = String(state.head);
  box.dataset.tokens = JSON.stringify(labels);
  box.dataset.values = JSON.stringify(rows);
  box.dataset.vmax = String(round6(vmax));
  const { left, top, cell } = state.layout; // CSS px inside the canvas: lets a test point at a cell
  box.dataset.grid = JSON.stringify({ left, top, cell });
  const headName = state.head === "mean" ? "mean over heads" : `head ${state.head}`;
  box.setAttribute("aria-label", `Attention, layer ${state.layer}, ${headName}, ${T} tokens`);
  const legendWidth = Math.min(360, Math.max(200, box.parentElement.clientWidth - 8));
  drawLegend($("#legend"), { vmin: 0, vmax, width: legendWidth });
  $("#legend-caption").textContent = `attention weight · layer ${state.layer} · ${headName}`;
}

function renderHeads() {
  const grid = $("#heads-grid");
  grid.replaceChildren();
  const lp = layerPos();
  const T = state.att.T;
  const columns = getComputedStyle(grid).gridTemplateColumns.split(" ").length || 4;
  const gap = parseFloat(getComputedStyle(grid).columnGap) || 0;
  const size = Math.max(48, Math.floor((grid.clientWidth - gap * (columns - 1)) / columns) - 2);
  for (const head of ["mean", ...state.att.heads]) {
    const values = headMatrix(lp, head);
    const tile = document.createElement("button");
    tile.type = "button";
    tile.className = `head-tile${head === state.head ? " selected" : ""}${head === "mean" ? " mean" : ""}`;
    tile.dataset.head = String(head);
    tile.title = head === "mean" ? `Layer ${state.layer}: mean over heads` : `Layer ${state.layer}, head ${head}`;
    const canvas = document.createElement("canvas");
    drawThumb(canvas, { values, n: T, vmin: 0, vmax: Math.max(maxOf(values), 1e-6), size });
    const caption = document.createElement("span");
    caption.textContent = head === "mean" ? "mean" : `head ${head}`;
    tile.append(canvas, caption);
    tile.addEventListener("click", () => {
      state.head = head;
      $("#head").value = String(head);
      render();
    });
    grid.append(tile);
  }
  $("#heads-title").textContent = `All heads · layer ${state.layer}`;
}

function renderFocus() {
  const box = $("#token-focus");
  box.replaceChildren();
  const q = state.focus;
  if (q === null) {
    $("#focus-token").textContent = "—";
    delete box.dataset.token;
    return;
  }
  $("#focus-token").textContent = tokenLabel(state.tokens[q]);
  box.dataset.token = String(q);
  const hideSpecial = $("#hide-special").checked;
  const { L, T } = state.att;
  const table = document.createElement("table");
  table.className = "focus-table";
  const tops = [];
  for (let lp = 0; lp < L; lp++) {
    const mean = headMatrix(lp, "mean");
    const row = Array.from(mean.subarray(q * T, (q + 1) * T), (v, k) => [k, v]);
    tops.push(row
      .filter(([k]) => !(hideSpecial && state.tokens[k].special))
      .sort((a, b) => b[1] - a[1])
      .slice(0, TOP_K));
  }
  // Bars are relative to the largest weight in the table: absolute weights of a few % would not show.
  const scale = Math.max(1e-6, ...tops.flat().map(([, v]) => v));
  for (let lp = 0; lp < L; lp++) {
    const top = tops[lp];
    const tr = document.createElement("tr");
    tr.dataset.layer = String(state.att.layers[lp]);
    tr.dataset.keys = JSON.stringify(top.map(([k, v]) => [k, round6(v)]));
    if (state.att.layers[lp] === state.layer) tr.className = "current";
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = `L${state.att.layers[lp]}`;
    th.title = `Show layer ${state.att.layers[lp]}`;
    th.addEventListener("click", () => {
      state.layer = state.att.layers[lp];
      $("#layer").value = String(state.layer);
      render();
    });
    const td = document.createElement("td");
    for (const [k, v] of top) {
      const bar = document.createElement("button");
      bar.type = "button";
      bar.className = `bar${k === q ? " self" : ""}`;
      bar.style.setProperty("--w", `${Math.round((v / scale) * 100)}%`);
      bar.title = `${tokenLabel(state.tokens[q])} → ${tokenLabel(state.tokens[k])}: ${v.toFixed(4)} (token #${k})`;
      const name = document.createElement("span");
      name.className = "tok";
      name.textContent = tokenLabel(state.tokens[k]);
      const val = document.createElement("span");
      val.className = "val";
      val.textContent = v.toFixed(2);
      bar.append(name, val);
      bar.addEventListener("click", () => setFocus(k));
      td.append(bar);
    }
    tr.append(th, td);
    table.append(tr);
  }
  box.append(table);
}

function renderSimilarity() {
  const box = $("#similarity");
  box.replaceChildren();
  const sim = state.similarity;
  if (!sim) {
    delete box.dataset.values;
    const p = document.createElement("p");
    p.className = "muted small";
    p.textContent = "Type two or more sentences, one per line, to compare their embeddings.";
    box.append(p);
    return;
  }
  const n = sim.values.length;
  let vmin = 0;
  for (const row of sim.values) for (const v of row) vmin = Math.min(vmin, v);
  const table = document.createElement("table");
  table.className = "sim-table";
  const head = document.createElement("tr");
  head.append(document.createElement("th"));
  for (let j = 0; j < n; j++) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = `S${j + 1}`;
    th.title = sim.labels[j];
    head.append(th);
  }
  table.append(head);
  sim.values.forEach((row, i) => {
    const tr = document.createElement("tr");
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = `S${i + 1}`;
    th.title = sim.labels[i];
    tr.append(th);
    row.forEach((v, j) => {
      const td = document.createElement("td");
      const rgb = colour((v - vmin) / (1 - vmin));
      td.style.background = css(rgb);
      td.style.color = inkOn(rgb);
      td.textContent = (Math.abs(v) < 0.005 ? 0 : v).toFixed(2); // no "-0.00"
      td.dataset.value = String(round6(v));
      td.title = `S${i + 1} · S${j + 1}: ${v.toFixed(4)}`;
      tr.append(td);
    });
    table.append(tr);
  });
  const key = document.createElement("ol");
  key.className = "sim-key";
  for (const label of sim.labels) {
    const li = document.createElement("li");
    li.textContent = label;
    li.title = label;
    key.append(li);
  }
  box.append(table, key);
  box.dataset.labels = JSON.stringify(sim.labels);
  box.dataset.values = JSON.stringify(sim.values.map((row) => row.map(round6)));
}

function syncControls() {
  const fill = (select, options, value) => {
    select.replaceChildren(...options.map(([v, text]) => new Option(text, String(v))));
    select.value = String(value);
  };
  fill($("#layer"), state.att.layers.map((l) => [l, `${l}`]), state.layer);
  fill($("#head"), [["mean", "mean (all)"], ...state.att.heads.map((h) => [h, `${h}`])], state.head);
  const many = state.sentences.length > 1;
  $("#sentence-field").hidden = !many;
  fill($("#sentence"), state.sentences.map((s, i) => [i, `S${i + 1}: ${s}`]), state.sentence);
}

function renderModel() {
  renderModelView($("#model-view"), {
    att: state.att, layer: state.layer, head: state.head, onPick: (layer, head) => select({ layer, head }),
  });
}

/** What the walk-through needs of the explorer: the shown sentence, its tokens and the selection. */
function explorerContext() {
  return {
    model: state.model,
    explainAvailable: state.info?.explain_available !== false,
    text: state.sentences[state.sentence] ?? "",
    tokens: state.tokens,
    promptChars: state.promptChars,
    tokenStyle: state.tokenStyle,
    layers: state.att.layers,
    heads: state.att.heads,
    layer: state.layer,
    head: state.head,
    focus: state.focus,
  };
}

/** Redraw every view from `state`; the one place that declares the page ready. */
function render() {
  if (!state.att) return;
  renderTokens();
  renderHeatmap();
  renderHeads();
  renderFocus();
  renderSimilarity();
  renderModel();
  state.renders += 1;
  document.body.dataset.renders = String(state.renders);
  if (!state.busy) {
    setState("ready");
    followExplorer(explorerContext());
  }
}

// ---------------------------------------------------------------- interaction

function setFocus(index) {
  state.focus = index;
  render();
}

/** A selection from the walk-through or the model view: layer, head and/or focused token. */
function select({ layer, head, focus }) {
  if (layer !== undefined && state.att.layers.includes(layer)) state.layer = layer;
  if (head !== undefined && (head === "mean" || state.att.heads.includes(head))) state.head = head;
  if (focus !== undefined && focus !== null && focus < state.tokens.length) state.focus = focus;
  $("#layer").value = String(state.layer);
  $("#head").value = String(state.head);
  render();
}

function defaultFocus(tokens) {
  const pronoun = tokens.findIndex((t) => !t.special && PRONOUNS.has(tokenLabel(t).toLowerCase()));
  if (pronoun >= 0) return pronoun;
  const first = tokens.findIndex((t) => !t.special);
  return first >= 0 ? first : 0;
}

async function fetchAttention(text) {
  if (state.cache.has(text)) return state.cache.get(text);
  const reply = await encode({
    ...modelField(),
    input: [text],
    normalize: true,
    attention: { layers: "all", heads: "all", aggregate: "none", format: "base64", dtype: "float32" },
  });
  const item = reply.data[0];
  if (!item.attention) throw new ApiError("The server returned no attention for this model.");
  const entry = { tokens: item.tokens, att: decodeAttention(item.attention), embedding: item.embedding };
  state.cache.set(text, entry);
  return entry;
}

function cosineMatrix(embeddings) {
  const norms = embeddings.map((e) => Math.sqrt(e.reduce((s, x) => s + x * x, 0)) || 1);
  return embeddings.map((a, i) => embeddings.map((b, j) => {
    let dot = 0;
    for (let k = 0; k < a.length; k++) dot += a[k] * b[k];
    return dot / (norms[i] * norms[j]);
  }));
}

async function showSentence(index, seq) {
  const entry = await fetchAttention(state.sentences[index]);
  if (seq !== state.seq) return false; // a newer run superseded this one
  const sameTokens = state.tokens.length === entry.tokens.length
    && state.tokens.every((t, i) => t.id === entry.tokens[i].id);
  state.sentence = index;
  state.tokens = entry.tokens;
  state.att = entry.att;
  if (!state.att.layers.includes(state.layer)) state.layer = state.att.layers[0];
  if (state.head !== "mean" && !state.att.heads.includes(state.head)) state.head = "mean";
  if (!sameTokens || state.focus === null || state.focus >= entry.tokens.length) {
    state.focus = defaultFocus(entry.tokens);
  }
  state.hover = null;
  return true;
}

function failed(err) {
  state.busy = false;
  setState("error");
  const message = err instanceof ApiError || err instanceof Error ? err.message : String(err);
  const hint = err.code === "attention_budget_exceeded" ? " Try a shorter sentence." : "";
  showBanner(`${message}${hint}`);
}

async function run() {
  const lines = $("#input").value.split("\n").map((s) => s.trim()).filter(Boolean);
  if (!lines.length) {
    setState("error");
    showBanner("Type a sentence first (one per line).");
    return;
  }
  const seq = ++state.seq;
  state.busy = true;
  setState("loading");
  hideBanner();
  const started = performance.now();
  const changed = lines.join("\n") !== state.sentences.join("\n");
  state.sentences = lines;
  if (changed) state.sentence = 0;
  try {
    const similarity = lines.length > 1
      ? encode({ ...modelField(), input: lines, normalize: true }).then((reply) => {
        const data = [...reply.data].sort((a, b) => a.index - b.index);
        return { labels: lines, values: cosineMatrix(data.map((d) => d.embedding)) };
      })
      : Promise.resolve(null);
    const [shown, sim] = await Promise.all([showSentence(state.sentence, seq), similarity]);
    if (!shown || seq !== state.seq) return;
    state.busy = false;
    state.similarity = sim;
    syncControls();
    render();
    followSentences({ model: state.model, sentences: lines, tokenStyle: state.tokenStyle,
      explainAvailable: state.info?.explain_available !== false });
    const ms = Math.round(performance.now() - started);
    $("#run-info").textContent = `${state.att.T} tokens · ${lines.length} sentence${lines.length > 1 ? "s" : ""} · ${ms} ms`;
  } catch (err) {
    if (seq === state.seq) failed(err);
  }
}

async function changeSentence(index) {
  const seq = ++state.seq;
  state.busy = true;
  setState("loading");
  hideBanner();
  try {
    if (await showSentence(index, seq)) {
      state.busy = false;
      syncControls();
      render();
    }
  } catch (err) {
    if (seq === state.seq) failed(err);
  }
}

function onHeatmapMove(event) {
  if (!state.layout) return;
  const rect = event.currentTarget.getBoundingClientRect();
  const hit = hitTest(state.layout, event.clientX - rect.left, event.clientY - rect.top);
  const tip = $("#tooltip");
  const same = hit && state.hover && hit.r === state.hover.r && hit.c === state.hover.c;
  if (!same) {
    state.hover = hit;
    drawHeatmap();
  }
  if (!hit) {
    tip.hidden = true;
    return;
  }
  const q = tokenLabel(state.tokens[hit.r]);
  if (hit.c === null) {
    tip.textContent = `${q} — click to see what it attends to`;
  } else {
    const T = state.att.T;
    const v = headMatrix(layerPos(), state.head)[hit.r * T + hit.c];
    tip.replaceChildren();
    const pair = document.createElement("span");
    pair.textContent = `${q} → ${tokenLabel(state.tokens[hit.c])}`;
    const val = document.createElement("b");
    val.textContent = v.toFixed(4);
    tip.append(pair, val);
  }
  tip.hidden = false;
  const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
  tip.style.left = `${Math.max(4, x)}px`;
  tip.style.top = `${event.clientY + 16}px`;
}

function onHeatmapLeave() {
  $("#tooltip").hidden = true;
  if (state.hover) {
    state.hover = null;
    drawHeatmap();
  }
}

function onHeatmapClick(event) {
  if (!state.layout) return;
  const rect = event.currentTarget.getBoundingClientRect();
  const hit = hitTest(state.layout, event.clientX - rect.left, event.clientY - rect.top);
  if (hit) setFocus(hit.r);
}

function modelField() {
  return state.model ? { model: state.model } : {};
}

function describeInfo(info) {
  const name = info.model_id;  // the served name (/info always has it; docs/api.md)
  // The fields the server defines for /info (service/api/routes.py describe_model), read as they are.
  const { num_layers: layers, num_heads: heads, embedding_dim: dim } = info;
  const parts = [name];
  if (layers && heads) parts.push(`${layers} layers × ${heads} heads`);
  if (dim) parts.push(`dim ${dim}`);
  const pattern = info.attention_pattern ?? {};
  if (pattern.causal) parts.push("causal: each token sees only itself and earlier tokens (upper triangle is 0)");
  if (pattern.local_layers?.length) {
    parts.push(`local window ±${Math.floor(pattern.local_window / 2)} tokens on layers ` +
      `${pattern.local_layers.join(", ")} (0 outside it); the other layers are global`);
  }
  if (pattern.num_kv_heads && heads && pattern.num_kv_heads < heads) {
    parts.push(`${pattern.num_kv_heads} key/value heads shared by ${heads} query heads`);
  }
  return parts.join(" · ");
}

/** GET info (of `model`, or of the default model) and the model list; fills the model selector. */
async function loadInfo(model = null) {
  try {
    const [info, models] = await Promise.all([getInfo(model), getModels().catch(() => [])]);
    state.info = info;
    state.model = info.model_id;
    document.body.dataset.model = state.model;
    state.tokenStyle = info.token_style ?? "wordpiece";
    const defaultPrompt = info.default_prompt_name ? info.prompts?.[info.default_prompt_name] : null;
    state.promptChars = defaultPrompt ? Array.from(defaultPrompt).length : 0;
    $("#model-info").textContent = describeInfo(info);
    const select = $("#model");
    select.replaceChildren(...models.map((m) => {
      const task = m.task ?? "embed";
      const option = new Option(task === "embed" ? m.id : `${m.id} (${task})`, m.id);
      option.disabled = task !== "embed"; // only embedding models have attention to explain
      return option;
    }));
    select.value = state.model;
    $("#model-field").hidden = models.length < 2;
  } catch (err) {
    $("#model-info").textContent = "model info unavailable";
    showBanner(`Could not read server info: ${err.message}`);
  }
}

async function changeModel(name) {
  if (name === state.model) return;
  state.cache.clear();
  state.unknownIds = new Set();
  state.sentences = []; // the next run re-tokenizes
  await loadInfo(name);
  if ($("#input").value.trim()) run();
}

function urlParams() {
  const params = new URLSearchParams(window.location.search);
  const int = (name) => (params.has(name) && /^-?\d+$/.test(params.get(name)) ? Number(params.get(name)) : null);
  return { text: params.get("text"), model: params.get("model"),
    selection: { layer: int("layer"), head: int("head"), token: int("token") } };
}

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function init() {
  $("#run").addEventListener("click", run);
  $("#input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      run();
    }
  });
  $("#layer").addEventListener("change", (e) => {
    state.layer = Number(e.target.value);
    render();
  });
  $("#head").addEventListener("change", (e) => {
    state.head = e.target.value === "mean" ? "mean" : Number(e.target.value);
    render();
  });
  $("#scale").addEventListener("change", render);
  $("#hide-special").addEventListener("change", render);
  $("#sentence").addEventListener("change", (e) => changeSentence(Number(e.target.value)));
  $("#banner-close").addEventListener("click", hideBanner);
  $("#model").addEventListener("change", (e) => changeModel(e.target.value));
  for (const button of document.querySelectorAll("#examples [data-example]")) {
    button.addEventListener("click", () => {
      $("#input").value = EXAMPLES[button.dataset.example];
      run();
    });
  }
  const url = urlParams();
  if (url.text) $("#input").value = url.text;
  const selection = Object.values(url.selection).some((v) => v !== null) ? url.selection : null;
  initWalkthrough({
    onSelect: select,
    onModel: (name) => {
      $("#model").value = name;
      changeModel(name);
    },
    onUnknown: (ids) => {
      state.unknownIds = ids;
      renderTokens();
    },
  }, selection);
  initPair();
  const canvas = $("#heatmap canvas");
  canvas.addEventListener("mousemove", onHeatmapMove);
  canvas.addEventListener("mouseleave", onHeatmapLeave);
  canvas.addEventListener("click", onHeatmapClick);
  window.addEventListener("resize", debounce(render, 120));
  // The example runs once /info is in: token labels depend on the model's tokenizer style.
  loadInfo(url.model).finally(() => {
    if ($("#input").value.trim()) run(); // a later run supersedes it (state.seq)
  });
}

init();
