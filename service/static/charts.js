// Small pictures for the walk-through: vectors as colour strips, per-key bar columns, and labelled rectangular
// heatmaps (token × token of two sentences, layer × token of a rollout).
//
// Vectors and signed quantities use a diverging blue-white-red scale (ColorBrewer RdBu, 9 classes, interpolated),
// symmetric around 0; probabilities use the explorer's viridis.

import { lut } from "./colormap.js";
import { FONT, drawCellGrid, setupCanvas, shorten } from "./heatmap.js";

// RdBu reversed: -1 blue, 0 near-white, +1 red.
const RDBU = [
  [33, 102, 172], [67, 147, 195], [146, 197, 222], [209, 229, 240], [247, 247, 247],
  [253, 219, 199], [244, 165, 130], [214, 96, 77], [178, 24, 43],
];

/** RGB for t in [-1, 1] (clamped) on the diverging scale. */
export function diverging(t) {
  const x = (Math.min(1, Math.max(-1, Number.isFinite(t) ? t : 0)) + 1) / 2 * (RDBU.length - 1);
  const i = Math.min(RDBU.length - 2, Math.floor(x));
  const f = x - i;
  return RDBU[i].map((a, c) => Math.round(a + f * (RDBU[i + 1][c] - a)));
}

export const maxAbs = (values) => {
  let m = 0;
  for (const v of values) if (Number.isFinite(v) && Math.abs(v) > m) m = Math.abs(v);
  return m;
};

export const norm = (values) => Math.sqrt(values.reduce((s, v) => s + v * v, 0));

function hatch(ctx, x, y, w, h) { // a masked key: grey with diagonal lines
  ctx.save();
  ctx.beginPath();
  ctx.rect(x, y, w, h);
  ctx.clip();
  ctx.fillStyle = "#e5e7eb";
  ctx.fillRect(x, y, w, h);
  ctx.strokeStyle = "#9ca3af";
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let d = -h; d < w; d += 5) {
    ctx.moveTo(x + d, y + h);
    ctx.lineTo(x + d + h, y);
  }
  ctx.stroke();
  ctx.restore();
}

function rowsImage(rows, cols, vmax) {
  const image = new ImageData(cols, rows.length);
  const span = vmax > 0 ? vmax : 1;
  rows.forEach((row, r) => {
    for (let c = 0; c < cols; c++) {
      const rgb = diverging((row[c] ?? 0) / span);
      const k = 4 * (r * cols + c);
      image.data[k] = rgb[0];
      image.data[k + 1] = rgb[1];
      image.data[k + 2] = rgb[2];
      image.data[k + 3] = 255;
    }
  });
  const off = new OffscreenCanvas(cols, Math.max(1, rows.length));
  off.getContext("2d").putImageData(image, 0, 0);
  return off;
}

/**
 * Vectors as stacked colour strips, one row each (a single vector is one row): each component one column,
 * blue < 0 < red, scaled to ±vmax. `masked[r]` hatches row r (a key the query may not see).
 */
export function drawStrips(canvas, rows, { vmax, width, rowHeight = 14, gap = 2, masked = [] }) {
  const cols = rows.reduce((m, r) => Math.max(m, r.length), 1);
  const height = rows.length * rowHeight + Math.max(0, rows.length - 1) * gap;
  const ctx = setupCanvas(canvas, width, Math.max(1, height));
  ctx.imageSmoothingEnabled = false;
  rows.forEach((row, r) => {
    const y = r * (rowHeight + gap);
    ctx.drawImage(rowsImage([row], cols, vmax), 0, y, width, rowHeight);
    if (masked[r]) {
      ctx.globalAlpha = 0.8;
      hatch(ctx, 0, y, width, rowHeight);
      ctx.globalAlpha = 1;
    }
  });
}

/**
 * Where a labelled rows × cols heatmap sits inside `width` CSS px: row labels on the left, column labels rotated
 * above, square cells; `marginRight` px kept free for marginal bars.
 */
export function layoutGrid(rowLabels, colLabels, width, { minCell = 6, maxCell = 34, marginRight = 0,
  rotate = true, minRowHeight = 0 } = {}) {
  const ctx = new OffscreenCanvas(1, 1).getContext("2d");
  ctx.font = FONT;
  const w = (labels) => Math.max(0, ...labels.map((l) => ctx.measureText(shorten(l)).width));
  const left = Math.ceil(w(rowLabels)) + 10;
  const colW = w(colLabels);
  const top = rotate ? Math.ceil(colW * Math.sin(Math.PI * 55 / 180)) + 14 : 20;
  const rows = rowLabels.length;
  const cols = colLabels.length;
  const overhang = rotate ? Math.ceil(colW * Math.cos(Math.PI * 55 / 180)) : 0;
  let cell = Math.floor((width - left - marginRight - Math.max(0, overhang - marginRight) - 4) / Math.max(1, cols));
  cell = Math.max(minCell, Math.min(maxCell, cell));
  const gridW = cols * cell;
  const cellH = Math.max(cell, minRowHeight); // rows may be taller than columns are wide (few rows, many columns)
  return {
    rows, cols, left, top, cell, cellH, marginRight, rotate,
    width: Math.max(left + gridW + marginRight, left + gridW + overhang) + 4,
    height: top + rows * cellH + 6,
  };
}

/**
 * A labelled rows × cols heatmap. `scale`: "diverging" (±vmax) or "viridis" (0..vmax). `rowMarginal`: one value
 * per row drawn as small bars right of the grid (row sums). `highlightRow` / `highlightCol`: outlined.
 */
export function drawGrid(canvas, { values, rowLabels, colLabels, vmax, scale = "diverging", layout,
  highlightRow = null, highlightCol = null, hover = null, rowMarginal = null }) {
  const { rows, cols, left, top, cell, cellH } = layout;
  const ctx = setupCanvas(canvas, layout.width, layout.height);
  ctx.clearRect(0, 0, layout.width, layout.height);
  ctx.imageSmoothingEnabled = false;
  if (scale === "viridis") {
    const table = lut("viridis");
    const image = new ImageData(cols, rows);
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const t = Math.min(1, Math.max(0, (values[r][c] ?? 0) / (vmax || 1)));
        const k = Math.round(t * 255) * 3;
        const p = 4 * (r * cols + c);
        image.data[p] = table[k];
        image.data[p + 1] = table[k + 1];
        image.data[p + 2] = table[k + 2];
        image.data[p + 3] = 255;
      }
    }
    const off = new OffscreenCanvas(cols, rows);
    off.getContext("2d").putImageData(image, 0, 0);
    ctx.drawImage(off, left, top, cols * cell, rows * cellH);
  } else {
    ctx.drawImage(rowsImage(values, cols, vmax), left, top, cols * cell, rows * cellH);
  }
  if (cell >= 10) drawCellGrid(ctx, { left, top, cols, rows, cell, cellH, alpha: 0.45 });
  ctx.font = FONT;
  ctx.textBaseline = "middle";
  const rowStep = cellH >= 11 ? 1 : Math.ceil(11 / cellH);
  const colStep = cell >= 11 ? 1 : Math.ceil(11 / cell);
  for (let r = 0; r < rows; r += rowStep) {
    ctx.fillStyle = r === highlightRow || hover?.r === r ? "#111827" : "#374151";
    ctx.font = r === highlightRow || hover?.r === r ? `600 ${FONT}` : FONT;
    ctx.textAlign = "right";
    ctx.fillText(shorten(rowLabels[r] ?? ""), left - 6, top + (r + 0.5) * cellH);
  }
  for (let c = 0; c < cols; c += colStep) {
    ctx.fillStyle = c === highlightCol || hover?.c === c ? "#111827" : "#374151";
    ctx.font = c === highlightCol || hover?.c === c ? `600 ${FONT}` : FONT;
    ctx.save();
    ctx.translate(left + (c + 0.5) * cell, top - 6);
    if (layout.rotate) {
      ctx.rotate((-55 * Math.PI) / 180);
      ctx.textAlign = "left";
    } else {
      ctx.textAlign = "center";
    }
    ctx.fillText(shorten(colLabels[c] ?? ""), 0, 0);
    ctx.restore();
  }
  if (highlightRow !== null && highlightRow < rows) {
    ctx.strokeStyle = "#f97316";
    ctx.lineWidth = 2;
    ctx.strokeRect(left - 1, top + highlightRow * cellH - 1, cols * cell + 2, cellH + 2);
  }
  if (highlightCol !== null && highlightCol < cols) {
    ctx.strokeStyle = "#f97316";
    ctx.lineWidth = 2;
    ctx.strokeRect(left + highlightCol * cell - 1, top - 1, cell + 2, rows * cellH + 2);
  }
  if (hover && hover.c !== null) {
    ctx.strokeStyle = "#111827";
    ctx.lineWidth = 1.5;
    ctx.strokeRect(left + hover.c * cell, top + hover.r * cellH, cell, cellH);
  }
  if (rowMarginal && layout.marginRight > 0) {
    const m = Math.max(maxAbs(rowMarginal), 1e-9);
    const x0 = left + cols * cell + 6;
    const span = layout.marginRight - 10;
    const zero = x0 + span / 2;
    ctx.strokeStyle = "#9ca3af";
    ctx.beginPath();
    ctx.moveTo(zero + 0.5, top);
    ctx.lineTo(zero + 0.5, top + rows * cellH);
    ctx.stroke();
    rowMarginal.forEach((v, r) => {
      const w = (v / m) * (span / 2);
      ctx.fillStyle = v >= 0 ? "#d6604d" : "#4393c3";
      ctx.fillRect(Math.min(zero, zero + w), top + r * cellH + cellH * 0.2, Math.abs(w), Math.max(1, cellH * 0.6));
    });
  }
}

/** Cell under (x, y) CSS px of a layoutGrid: {r, c}, or null. */
export function hitGrid(layout, x, y) {
  const r = Math.floor((y - layout.top) / layout.cellH);
  const c = Math.floor((x - layout.left) / layout.cell);
  if (r < 0 || r >= layout.rows || c < 0 || c >= layout.cols) return null;
  return { r, c };
}

/** A horizontal colour bar for the diverging scale, -vmax .. +vmax. */
export function drawDivergingLegend(canvas, { vmax, width, label = "" }) {
  const height = 30;
  const pad = 10;
  const ctx = setupCanvas(canvas, width, height);
  const barW = width - 2 * pad;
  for (let x = 0; x < barW; x++) {
    const rgb = diverging((x / Math.max(1, barW - 1)) * 2 - 1);
    ctx.fillStyle = `rgb(${rgb[0]} ${rgb[1]} ${rgb[2]})`;
    ctx.fillRect(pad + x, 2, 1.5, 10);
  }
  ctx.font = FONT;
  ctx.fillStyle = "#374151";
  ctx.textBaseline = "top";
  const digits = vmax < 0.1 ? 3 : 2;
  ctx.textAlign = "left";
  ctx.fillText((-vmax).toFixed(digits), pad - 2, 15);
  ctx.textAlign = "center";
  ctx.fillText(label || "0", pad + barW / 2, 15);
  ctx.textAlign = "right";
  ctx.fillText(vmax.toFixed(digits), pad + barW + 2, 15);
}
