// Canvas drawing of labelled matrices (attention maps, small multiples) and of a colour legend.
//
// The matrix is painted into a T×T offscreen image and scaled up with smoothing off: one putImageData per draw
// whatever T is, so hover redraws stay cheap at the 256-token limit.

import { lut, css } from "./colormap.js";

// CJK fonts named so that Chinese/Japanese token labels draw where such a font is installed (canvas text does
// not fall back through the page's CSS stack).
export const FONT_FAMILY = "system-ui, -apple-system, 'Segoe UI', Roboto, 'Noto Sans', 'Noto Sans CJK SC', " +
  "'Noto Sans SC', 'Source Han Sans SC', 'PingFang SC', 'Hiragino Sans GB', 'Microsoft YaHei', sans-serif";
export const FONT = `12px ${FONT_FAMILY}`;
const LABEL_ANGLE = (-55 * Math.PI) / 180;
const MAX_LABEL_CHARS = 16;

export function setupCanvas(canvas, cssWidth, cssHeight) {
  const dpr = window.devicePixelRatio || 1;
  canvas.style.width = `${cssWidth}px`;
  canvas.style.height = `${cssHeight}px`;
  canvas.width = Math.round(cssWidth * dpr);
  canvas.height = Math.round(cssHeight * dpr);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

export function shorten(label) {
  return label.length > MAX_LABEL_CHARS ? `${label.slice(0, MAX_LABEL_CHARS - 1)}…` : label;
}

function matrixImage(values, n, vmin, vmax, colormap) {
  const table = lut(colormap);
  const image = new ImageData(n, n);
  const span = vmax > vmin ? vmax - vmin : 1;
  for (let i = 0; i < n * n; i++) {
    const t = Math.min(1, Math.max(0, (values[i] - vmin) / span));
    const k = Math.round(t * 255) * 3;
    image.data[4 * i] = table[k];
    image.data[4 * i + 1] = table[k + 1];
    image.data[4 * i + 2] = table[k + 2];
    image.data[4 * i + 3] = 255;
  }
  const off = new OffscreenCanvas(n, n);
  off.getContext("2d").putImageData(image, 0, 0);
  return off;
}

/**
 * Layout of a labelled heatmap that fits `width` CSS pixels: where the grid starts and how big a cell is.
 * Computed separately from drawing so hit-testing and drawing agree.
 */
/** Hairline gaps between cells (cols × rows, each cell × cellH CSS px): they read as a grid without hiding values. */
export function drawCellGrid(ctx, { left, top, cols, rows, cell, cellH, alpha }) {
  ctx.strokeStyle = `rgba(255,255,255,${alpha})`;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 1; i < cols; i++) {
    ctx.moveTo(left + i * cell + 0.5, top);
    ctx.lineTo(left + i * cell + 0.5, top + rows * cellH);
  }
  for (let i = 1; i < rows; i++) {
    ctx.moveTo(left, top + i * cellH + 0.5);
    ctx.lineTo(left + cols * cell, top + i * cellH + 0.5);
  }
  ctx.stroke();
}

export function layoutMatrix(n, labels, width, { minCell = 4, maxCell = 40 } = {}) {
  const ctx = new OffscreenCanvas(1, 1).getContext("2d");
  ctx.font = FONT;
  const widths = labels.map((l) => ctx.measureText(shorten(l)).width);
  const textW = widths.length ? Math.max(...widths) : 0;
  const left = Math.max(Math.ceil(textW) + 12, 64); // row labels, and room for the axis names above them
  const top = Math.ceil(textW * Math.sin(-LABEL_ANGLE)) + 28;
  // Only the last few rotated column labels reach past the grid's right edge: reserve just that much.
  const cos = Math.cos(LABEL_ANGLE);
  const overhang = (cell) => Math.ceil(Math.max(0, ...widths.map((w, i) => w * cos - (n - i - 0.5) * cell))) + 6;
  let cell = Math.max(minCell, Math.min(maxCell, Math.floor((width - left) / n)));
  while (cell > minCell && left + n * cell + overhang(cell) > width) cell -= 1;
  const right = overhang(cell);
  return { n, left, top, right, cell, width: left + n * cell + right, height: top + n * cell + 8 };
}

/** Draw a labelled n×n heatmap; `focusRow` gets an outline, `hover` a cell outline and its row/column tint. */
export function drawMatrix(canvas, { values, labels, special = [], vmin, vmax, layout, colormap = "viridis",
  focusRow = null, hover = null }) {
  const { n, left, top, cell } = layout;
  const ctx = setupCanvas(canvas, layout.width, layout.height);
  ctx.clearRect(0, 0, layout.width, layout.height);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(matrixImage(values, n, vmin, vmax, colormap), left, top, n * cell, n * cell);

  if (cell >= 10) drawCellGrid(ctx, { left, top, cols: n, rows: n, cell, cellH: cell, alpha: 0.35 });

  ctx.font = FONT;
  ctx.textBaseline = "middle";
  const step = cell >= 11 ? 1 : Math.ceil(11 / cell); // thin out labels that would overlap
  for (let i = 0; i < n; i += step) {
    const label = shorten(labels[i] ?? "");
    const emphasised = (hover && (hover.r === i || hover.c === i)) || focusRow === i;
    ctx.fillStyle = special[i] ? "#9ca3af" : emphasised ? "#111827" : "#374151";
    ctx.font = emphasised ? `600 ${FONT}` : FONT;
    ctx.textAlign = "right";
    ctx.fillText(label, left - 6, top + (i + 0.5) * cell);
    ctx.save();
    ctx.translate(left + (i + 0.5) * cell, top - 6);
    ctx.rotate(LABEL_ANGLE);
    ctx.textAlign = "left";
    ctx.fillText(label, 0, 0);
    ctx.restore();
  }

  // Axis names sit in the empty corner above the row labels: rows are queries, columns are keys.
  ctx.fillStyle = "#6b7280";
  ctx.font = `italic ${FONT}`;
  ctx.textAlign = "right";
  ctx.fillText("key →", left - 8, top - 26);
  ctx.fillText("query ↓", left - 8, top - 10);

  if (focusRow !== null && focusRow < n) {
    ctx.strokeStyle = "#f97316";
    ctx.lineWidth = 2;
    ctx.strokeRect(left - 1, top + focusRow * cell - 1, n * cell + 2, cell + 2);
  }
  if (hover && hover.c !== null) {
    ctx.strokeStyle = "#ffffff";
    ctx.lineWidth = 2;
    ctx.strokeRect(left + hover.c * cell + 1, top + hover.r * cell + 1, cell - 2, cell - 2);
    ctx.strokeStyle = "#111827";
    ctx.lineWidth = 1;
    ctx.strokeRect(left + hover.c * cell - 0.5, top + hover.r * cell - 0.5, cell + 1, cell + 1);
  }
}

/** Cell under (x, y) in CSS pixels: {r, c}; a row label gives {r, c: null}; elsewhere null. */
export function hitTest(layout, x, y) {
  const { n, left, top, cell } = layout;
  const r = Math.floor((y - top) / cell);
  if (r < 0 || r >= n) return null;
  if (x < left && x > 0) return { r, c: null };
  const c = Math.floor((x - left) / cell);
  return c >= 0 && c < n ? { r, c } : null;
}

/** A bare square heatmap (small multiples): no labels, `size` CSS pixels. */
export function drawThumb(canvas, { values, n, vmin, vmax, size, colormap = "viridis" }) {
  const ctx = setupCanvas(canvas, size, size);
  ctx.imageSmoothingEnabled = false;
  ctx.drawImage(matrixImage(values, n, vmin, vmax, colormap), 0, 0, size, size);
}

/** A horizontal colour bar from vmin to vmax with ticks, `width` CSS pixels wide. */
export function drawLegend(canvas, { vmin, vmax, width, colormap = "viridis" }) {
  const height = 40;
  const barH = 12;
  const pad = 14;
  const ctx = setupCanvas(canvas, width, height);
  const table = lut(colormap);
  const barW = width - 2 * pad;
  for (let x = 0; x < barW; x++) {
    const k = Math.round((x / Math.max(1, barW - 1)) * 255) * 3;
    ctx.fillStyle = css([table[k], table[k + 1], table[k + 2]]);
    ctx.fillRect(pad + x, 2, 1.5, barH);
  }
  ctx.font = FONT;
  ctx.fillStyle = "#374151";
  ctx.textBaseline = "top";
  const ticks = 5;
  for (let i = 0; i < ticks; i++) {
    const f = i / (ticks - 1);
    const x = pad + f * barW;
    ctx.fillRect(Math.round(x), 2 + barH, 1, 4);
    ctx.textAlign = i === 0 ? "left" : i === ticks - 1 ? "right" : "center";
    const v = vmin + f * (vmax - vmin);
    ctx.fillText(v.toFixed(vmax - vmin < 0.1 ? 3 : 2), i === 0 ? x - 2 : i === ticks - 1 ? x + 2 : x, barH + 8);
  }
}
