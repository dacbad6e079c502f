// Perceptually uniform sequential colour maps, computed (no lookup table to vendor).
//
// Polynomial fits of matplotlib's viridis and magma by Matt Zucker (shadertoy "WlfXRN", CC0):
// within ~1/255 of the originals over [0, 1], which is below what a screen can show.

const VIRIDIS = [
  [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
  [0.1050930431085774, 1.404613529898575, 1.384590162594685],
  [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
  [-4.634230498983486, -5.799100973351585, -19.33244095627987],
  [6.228269936347081, 14.17993336680509, 56.69055260068105],
  [4.776384997670288, -13.74514537774601, -65.35303263337234],
  [-5.435455855934631, 4.645852612178535, 26.3124352495832],
];

const MAGMA = [
  [-0.002136485053939582, -0.000749655052795221, -0.005386127855323933],
  [0.2516605407371642, 0.6775232436837668, 2.494026599312351],
  [8.353717279216625, -3.577719514958484, 0.3144679030132573],
  [-27.66873308576866, 14.26473078096533, -13.64921318813922],
  [52.17613981234068, -27.94360607168351, 12.94416944238394],
  [-50.76852536473588, 29.04658282127291, 4.23415299384598],
  [18.65570506591883, -11.48977351997711, -5.601961508734096],
];

const MAPS = { viridis: VIRIDIS, magma: MAGMA };
const LUT_SIZE = 256;
const luts = new Map();

function evaluate(coeffs, t) {
  const rgb = [0, 0, 0];
  for (let c = 0; c < 3; c++) {
    let v = 0;
    for (let i = coeffs.length - 1; i >= 0; i--) v = v * t + coeffs[i][c]; // Horner
    rgb[c] = Math.round(255 * Math.min(1, Math.max(0, v)));
  }
  return rgb;
}

/** 256 RGB triples for `name`, built once: drawing a 256×256 matrix then costs one lookup per cell. */
export function lut(name = "viridis") {
  if (!luts.has(name)) {
    const coeffs = MAPS[name] ?? VIRIDIS;
    const table = new Uint8ClampedArray(LUT_SIZE * 3);
    for (let i = 0; i < LUT_SIZE; i++) table.set(evaluate(coeffs, i / (LUT_SIZE - 1)), i * 3);
    luts.set(name, table);
  }
  return luts.get(name);
}

/** RGB of `t` in [0, 1] (clamped). */
export function colour(t, name = "viridis") {
  const table = lut(name);
  const i = Math.round(Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (LUT_SIZE - 1)) * 3;
  return [table[i], table[i + 1], table[i + 2]];
}

export function css(rgb) {
  return `rgb(${rgb[0]} ${rgb[1]} ${rgb[2]})`;
}

/** Dark or light text, whichever reads on `rgb` (relative luminance, WCAG weights). */
export function inkOn(rgb) {
  const lin = rgb.map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  const y = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  return y > 0.28 ? "#111827" : "#ffffff";
}
