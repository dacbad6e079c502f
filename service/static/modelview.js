// The model view: every layer × head of the shown sentence as a thumbnail, from the explorer's /v1/encode
// attention payload (it already holds all of them). Click a thumbnail to show that layer and head.
//
// Data attributes:
//   #model-view          data-layers, data-heads (counts), data-tokens (T)
//   .mv-tile             data-layer, data-head (ids as in the payload); class "selected" for the shown one

import { drawThumb } from "./heatmap.js";

function maxOf(values) {
  let m = 0;
  for (const v of values) if (v > m) m = v;
  return m;
}

/** Draw `att` ({layers, heads, L, H, T, values}) into `box`; `onPick(layer, head)` on a click. */
export function renderModelView(box, { att, layer, head, onPick }) {
  box.replaceChildren();
  const { L, H, T, values } = att;
  box.dataset.layers = String(L);
  box.dataset.heads = String(H);
  box.dataset.tokens = String(T);
  const labelW = 34;
  const gap = 3;
  const size = Math.max(18, Math.min(72, Math.floor((box.clientWidth - labelW - gap * H) / H) - 4));
  const grid = document.createElement("div");
  grid.className = "mv-grid";
  grid.style.gridTemplateColumns = `${labelW}px repeat(${H}, ${size + 4}px)`;
  grid.append(document.createElement("span"));
  for (const h of att.heads) {
    const th = document.createElement("span");
    th.className = "mv-col muted small";
    th.textContent = `h${h}`;
    grid.append(th);
  }
  const size2 = T * T;
  for (let lp = 0; lp < L; lp++) {
    const name = document.createElement("span");
    name.className = "mv-row muted small";
    name.textContent = `L${att.layers[lp]}`;
    grid.append(name);
    for (let hp = 0; hp < H; hp++) {
      const offset = (lp * H + hp) * size2;
      const matrix = values.subarray(offset, offset + size2);
      const tile = document.createElement("button");
      tile.type = "button";
      const l = att.layers[lp];
      const h = att.heads[hp];
      tile.className = `mv-tile${l === layer && h === head ? " selected" : ""}`;
      tile.dataset.layer = String(l);
      tile.dataset.head = String(h);
      tile.title = `Layer ${l}, head ${h} (each tile scaled to its own max)`;
      const canvas = document.createElement("canvas");
      drawThumb(canvas, { values: matrix, n: T, vmin: 0, vmax: Math.max(maxOf(matrix), 1e-6), size });
      tile.append(canvas);
      tile.addEventListener("click", () => onPick(l, h));
      grid.append(tile);
    }
  }
  box.append(grid);
}
