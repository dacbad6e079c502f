"""A small fixed set of inputs for export-time validation, unlike the export's dummy batch in every shape."""

from __future__ import annotations

SENTENCES: tuple[str, ...] = (
    "Hi",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors; similar meanings land close together.",
    "小花说她明天会来北京。",
    "東京は日本の首都です。",
    "안녕하세요, 만나서 반갑습니다!",
    "Emoji test 🚀🔥👩‍👩‍👧‍👦 done.",
    "!!!???... ,,, ;;; --- ((()))",
    "URL https://example.com/a?b=c&d=e and email someone@example.org",
    "Numbers 3.14159, 2.71828 and 1,000,000.",
    "A long one: " + " ".join(f"word{i}" for i in range(120)),
    "Mixed scripts: English, Ελληνικά, русский, العربية, हिन्दी.",
    "She said the results were significant, but the reviewers disagreed strongly.",
    "[CLS] literal special tokens [SEP] should be plain text [MASK]",
    "    leading and trailing whitespace    ",
    "x " * 300,
)
