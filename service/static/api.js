// The calls the explorer makes (GET info, GET v1/models, POST v1/encode, POST v1/explain,
// POST v1/similarity/explain) and the decoding of attention payloads.
//
// Relative URLs resolved against the page's directory, so the explorer also works behind a path prefix.

const BASE = new URL(window.location.pathname.replace(/static\/(index\.html)?$/, ""), window.location.origin);

/** An API failure with the service's own message (docs/contract.md: {"error": {message, type, param, code}}). */
export class ApiError extends Error {
  constructor(message, { status = 0, code = null, type = null, param = null } = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.type = type;
    this.param = param;
  }
}

async function call(path, init) {
  let response;
  try {
    response = await fetch(new URL(path, BASE), init);
  } catch (err) {
    throw new ApiError(`Could not reach the server (${err.message}).`);
  }
  const text = await response.text();
  let body = null;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    body = null;
  }
  if (!response.ok) {
    const e = body && body.error ? body.error : {};
    const message = e.message || `The server answered ${response.status} ${response.statusText}.`;
    throw new ApiError(message, { status: response.status, code: e.code, type: e.type, param: e.param });
  }
  if (body === null) throw new ApiError("The server sent a reply that is not JSON.", { status: response.status });
  return body;
}

/** TEI's Info of the default model, or of `model` (GET info?model=NAME). */
export function getInfo(model = null) {
  const path = model ? `info?model=${encodeURIComponent(model)}` : "info";
  return call(path, { headers: { Accept: "application/json" } });
}

/** The served models: [{id, task, ...}]. */
export async function getModels() {
  const reply = await call("v1/models", { headers: { Accept: "application/json" } });
  return Array.isArray(reply.data) ? reply.data : [];
}

function post(path, payload, signal) {
  return call(path, {
    method: "POST",
    headers: { "Content-Type": "application/json", Accept: "application/json" },
    body: JSON.stringify(payload),
    signal,
  });
}

export function encode(payload, signal) {
  return post("v1/encode", payload, signal);
}

/** POST v1/explain (docs/explain.md): one input, one layer/head/query token. */
export function explain(payload, signal) {
  return post("v1/explain", payload, signal);
}

/** POST v1/similarity/explain: the cosine of two inputs split into token-pair contributions. */
export function explainSimilarity(payload, signal) {
  return post("v1/similarity/explain", payload, signal);
}

function halfToFloat(h) {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

/** Base64 little-endian float32/float16 -> Float32Array. DataView reads little-endian whatever the host is. */
export function decodeBase64(b64, dtype = "float32") {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const view = new DataView(bytes.buffer);
  if (dtype === "float16") {
    const out = new Float32Array(bytes.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = halfToFloat(view.getUint16(2 * i, true));
    return out;
  }
  const out = new Float32Array(bytes.length / 4);
  for (let i = 0; i < out.length; i++) out[i] = view.getFloat32(4 * i, true);
  return out;
}

/**
 * A response's `attention` object -> {layers, heads, L, H, T, values: Float32Array of (L, H, T, T)}.
 * Accepts both formats, so a server that ignores `format` still renders.
 */
export function decodeAttention(att) {
  // (L, H, T, T); an aggregated reply may leave out the head axis: (L, T, T) reads as H = 1.
  const [L, H, T, T2] = att.shape.length === 3 ? [att.shape[0], 1, att.shape[1], att.shape[2]] : att.shape;
  if (T !== T2) throw new ApiError(`Attention shape ${JSON.stringify(att.shape)} is not (L, H, T, T).`);
  const values = typeof att.data === "string"
    ? decodeBase64(att.data, att.dtype || "float32")
    : Float32Array.from(att.data.flat(att.shape.length - 1));
  if (values.length !== L * H * T * T) {
    throw new ApiError(`Attention payload has ${values.length} values; shape ${JSON.stringify(att.shape)} needs ${L * H * T * T}.`);
  }
  const heads = Array.isArray(att.heads) ? att.heads : ["mean"];
  return { layers: att.layers, heads, L, H, T, values };
}
