// Token labels: a token as the text it stands for, whatever the model's vocabulary style.
//
// WordPiece marks continuations with "##" (shown as they are); SentencePiece marks word starts with "▁" and
// byte-level BPE with "Ġ" (both dropped from the label and shown as a gap instead); a byte-level piece of a
// multi-byte character (a CJK character or an emoji split over tokens) is shown as the characters it covers.

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

/**
 * Label functions for the tokens of `text` as the model spells them.
 * `promptChars`: characters of a prompt the server put before the text (token offsets count them).
 */
export function labeler({ tokenStyle = "wordpiece", text = "", promptChars = 0 } = {}) {
  const chars = Array.from(text);

  // The characters a token covers in `text` (offsets count code points of prompt + text).
  const sourceSpan = (tok) => {
    if (tok.start == null || tok.end == null || tok.end <= tok.start) return null;
    const start = tok.start - promptChars;
    const end = tok.end - promptChars;
    return start >= 0 && end <= chars.length ? chars.slice(start, end).join("") : null;
  };

  const label = (tok) => {
    let out = tok.text ?? "";
    if (!tok.special && tokenStyle === "metaspace") out = out.replaceAll("\u2581", " ");
    if (!tok.special && tokenStyle === "byte_level") {
      const decoded = decodeByteLevel(out);
      out = decoded !== out || /^[\x21-\x7e\u0120]*$/.test(out) ? decoded : sourceSpan(tok) ?? out;
    }
    out = out.trim();
    return out || `#${tok.id}`;
  };

  // Where a token begins a word: SentencePiece marks it with "▁", byte-level BPE with a leading space (Ġ);
  // WordPiece marks the opposite, continuations with "##".
  const wordStart = (tok) => {
    const t = tok.text ?? "";
    if (tok.special) return false;
    if (tokenStyle === "metaspace") return t.startsWith("\u2581");
    if (tokenStyle === "byte_level") return t.startsWith("\u0120");
    return false;
  };

  return { label, wordStart };
}
