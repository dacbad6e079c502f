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

import { ApiError, decodeAttention, encode, getInfo } from "./api.js";
import { colour, css, inkOn } from "./colormap.js";
import { drawLegend, drawMatrix, drawThumb, hitTest, layoutMatrix } from "./heatmap.js";

const $ = (selector) => document.querySelector(selector);
const TOP_K = 3;
const PRONOUNS = new Set(["it", "its", "he", "him", "his", "she", "her", "they", "them", "their",
  "他", "她", "它", "他们", "她们"]);

const state = {
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

function showBanner(message) {
  $("#banner-text").textContent = message;
  $("#banner").hidden = false;
}

function hideBanner() {
  $("#banner").hidden = true;
  $("#banner-text").textContent = "";
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

// GPT-2's byte-level alphabet: each byte is spelled as one printable character (space = "Ġ", newline = "Ċ").
const BYTE_OF_CHAR = (() => {
  const printable = [];
  for (let b = 33; b <= 126; b++) printable.push(b);
  for (let b = 161; b <= 172; b++) printable.push(b);
  for (let b = 174; b <= 255; b++) printable.push(b);
  const map = new Map(printable.map((b) => [String.fromCharCode(b), b]));
  let extra = 0;
  for (let b = 0; b < 256; b++) if (!printable.includes(b)) map.set(String.fromCharCode(256 + extra++), b);
  return map;
})();
const UTF8 = new TextDecoder("utf-8", { fatal: true });

// A byte-level token as the text it stands for; a piece of a multi-byte character (half an emoji) stays spelled.
function decodeByteLevel(text) {
  const bytes = [];
  for (const ch of text) {
    const b = BYTE_OF_CHAR.get(ch);
    if (b === undefined) return text;
    bytes.push(b);
  }
  try {
    return UTF8.decode(new Uint8Array(bytes));
  } catch {
    return text;
  }
}

// Where a token begins a word: SentencePiece marks it with "▁", byte-level BPE with a leading space (Ġ);
// WordPiece marks the opposite, continuations with "##".
function isWordStart(tok) {
  const text = tok.text ?? "";
  if (tok.special) return false;
  if (state.tokenStyle === "metaspace") return text.startsWith("\u2581");
  if (state.tokenStyle === "byte_level") return text.startsWith("\u0120");
  return false;
}

// The characters a token covers in the current sentence (offsets count code points of prompt + text).
function sourceSpan(tok) {
  if (tok.start == null || tok.end == null || tok.end <= tok.start) return null;
  const chars = Array.from(state.sentences[state.sentence] ?? "");
  const start = tok.start - state.promptChars;
  const end = tok.end - state.promptChars;
  return start >= 0 && end <= chars.length ? chars.slice(start, end).join("") : null;
}

function tokenLabel(tok) {
  let text = tok.text ?? "";
  if (!tok.special && state.tokenStyle === "metaspace") text = text.replaceAll("\u2581", " ");
  if (!tok.special && state.tokenStyle === "byte_level") {
    const decoded = decodeByteLevel(text);
    // A piece of a multi-byte character (a CJK character or emoji split over tokens) is shown as the whole
    // character it belongs to.
    text = decoded !== text || /^[\x21-\x7e\u0120]*$/.test(text) ? decoded : sourceSpan(tok) ?? text;
  }
  text = text.trim();
  return text || `#${tok.id}`;
}

// ---------------------------------------------------------------- views

function renderTokens() {
  const box = $("#tokens");
  box.replaceChildren();
  state.tokens.forEach((tok, i) => {
    const chip = document.createElement("button");
    chip.type = "button";
    chip.className = `chip${tok.special ? " special" : ""}${isWordStart(tok) ? " word-start" : ""}` +
      `${i === state.focus ? " selected" : ""}`;
    chip.textContent = tokenLabel(tok);
    chip.dataset.index = String(i);
    chip.title = `#${i} · id ${tok.id}${tok.special ? " · special" : ` · chars ${tok.start}–${tok.end}`}`;
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

/** Redraw every view from `state`; the one place that declares the page ready. */
function render() {
  if (!state.att) return;
  renderTokens();
  renderHeatmap();
  renderHeads();
  renderFocus();
  renderSimilarity();
  state.renders += 1;
  document.body.dataset.renders = String(state.renders);
  if (!state.busy) setState("ready");
}

// ---------------------------------------------------------------- interaction

function setFocus(index) {
  state.focus = index;
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
      ? encode({ input: lines, normalize: true }).then((reply) => {
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

async function loadInfo() {
  try {
    const info = await getInfo();
    const name = info.model_id;  // the served name (/info always has it; docs/api.md)
    // The fields the server defines for /info (service/api/routes.py describe_model), read as they are.
    const { num_layers: layers, num_heads: heads, embedding_dim: dim } = info;
    const parts = [name];
    if (layers && heads) parts.push(`${layers} layers × ${heads} heads`);
    if (dim) parts.push(`dim ${dim}`);
    state.tokenStyle = info.token_style ?? "wordpiece";
    const defaultPrompt = info.default_prompt_name ? info.prompts?.[info.default_prompt_name] : null;
    state.promptChars = defaultPrompt ? Array.from(defaultPrompt).length : 0;
    const pattern = info.attention_pattern ?? {};
    if (pattern.causal) parts.push("causal: each token sees only itself and earlier tokens (upper triangle is 0)");
    if (pattern.local_layers?.length) {
      parts.push(`local window ±${Math.floor(pattern.local_window / 2)} tokens on layers ` +
        `${pattern.local_layers.join(", ")} (0 outside it); the other layers are global`);
    }
    if (pattern.num_kv_heads && heads && pattern.num_kv_heads < heads) {
      parts.push(`${pattern.num_kv_heads} key/value heads shared by ${heads} query heads`);
    }
    $("#model-info").textContent = parts.join(" · ");
  } catch (err) {
    $("#model-info").textContent = "model info unavailable";
    showBanner(`Could not read server info: ${err.message}`);
  }
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
  const canvas = $("#heatmap canvas");
  canvas.addEventListener("mousemove", onHeatmapMove);
  canvas.addEventListener("mouseleave", onHeatmapLeave);
  canvas.addEventListener("click", onHeatmapClick);
  window.addEventListener("resize", debounce(render, 120));
  // The example runs once /info is in: token labels depend on the model's tokenizer style.
  loadInfo().finally(() => {
    if ($("#input").value.trim()) run(); // a later run supersedes it (state.seq)
  });
}

init();
