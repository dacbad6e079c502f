"""A deterministic, deliberately awkward corpus for parity checks (tests/ and bench/mpnet_parity.py): unlike the
export's validation sentences."""

from __future__ import annotations

import random

_WORDS = ("model embedding vector search query document token attention layer head server latency batch "
          "river mountain coffee violin theorem galaxy harbour lantern pepper orbit quartz meadow").split()
_CJK = ("小花今天去了北京的公园", "我们在讨论注意力机制", "東京の天気は晴れです", "機械学習は面白い",
        "한국어 문장도 포함합니다", "深度学习模型需要大量数据")
_EMOJI = ("🚀", "🔥", "👩‍👩‍👧‍👦", "🇯🇵", "😀", "🧠", "✨", "👍🏽")
_PUNCT = ("!!!", "?!", "...", ";", "—", "(", ")", "«", "»", "\"", "'", ",", ":", "#", "@", "&")


def parity_sentences(n: int = 520, seed: int = 1234) -> list[str]:
    """Short, long, punctuation, CJK, emoji, mixed scripts, and text well past 256 tokens."""
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            s = rng.choice(_WORDS)
        elif kind == 1:
            s = " ".join(rng.choices(_WORDS, k=rng.randint(5, 25))).capitalize() + "."
        elif kind == 2:
            s = " ".join(rng.choice(_WORDS) + rng.choice(_PUNCT) for _ in range(rng.randint(3, 15)))
        elif kind == 3:
            s = rng.choice(_CJK) + rng.choice(("。", "！", "？")) + rng.choice(_CJK)
        elif kind == 4:
            s = " ".join(rng.choice(_WORDS) + rng.choice(_EMOJI) for _ in range(rng.randint(2, 10)))
        elif kind == 5:
            s = " ".join(rng.choices(_WORDS, k=rng.randint(300, 420)))  # past max_seq_length (256)
        elif kind == 6:
            s = f"Item {rng.randint(0, 10**6)} costs ${rng.random() * 100:.2f} — see https://x.example/{i}?q={i}"
        else:
            s = " ".join(rng.choice(_WORDS + list(_CJK)) for _ in range(rng.randint(10, 60)))
        out.append(s)
    return out
