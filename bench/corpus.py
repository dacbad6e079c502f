"""A fixed, seeded text corpus for benchmarks and load tests.

Benchmarks are only comparable when they send the same text: the same seed gives the same sentences in the same
order on every machine, with no download. Lengths are mixed on purpose (padding waste and token-budgeted
batching only show up when short and long inputs share a batch), and a share of the text is CJK or emoji, which
tokenizes into many more pieces per character than English does.
"""

from __future__ import annotations

import random
from typing import Literal

Profile = Literal["short", "medium", "long", "mixed"]

_WORDS = (
    "the a an of to in for on with by from about model server batch token vector query document search "
    "retrieval latency throughput encoder attention layer embedding cosine similarity index cluster answer "
    "question river mountain city music history science language system network memory request response "
    "quickly slowly carefully often never always rarely fast small large new old simple complex robust "
    "is are was were runs finds returns reads writes measures compares learns serves computes"
).split()

_CJK = (
    "向量检索", "自然言語処理", "임베딩 서버", "机器学习模型",
    "東京の天気", "서울 지하철", "注意力机制", "文章の類似度",
)
_EMOJI = ("🚀", "📈", "🧠", "👩‍💻", "🇯🇵", "😀", "🔥", "✅", "🤖", "🌍")

# Words per sentence for each profile: (low, high) drawn uniformly.
_LENGTHS: dict[str, tuple[int, int]] = {"short": (3, 10), "medium": (15, 40), "long": (80, 180)}
# Mixed: mostly short queries, some passages, a few long documents (a typical retrieval workload).
_MIXED_WEIGHTS = (("short", 0.55), ("medium", 0.30), ("long", 0.15))


def _sentence(rng: random.Random, n_words: int) -> str:
    words: list[str] = []
    for _ in range(n_words):
        roll = rng.random()
        if roll < 0.06:
            words.append(rng.choice(_CJK))
        elif roll < 0.09:
            words.append(rng.choice(_EMOJI))
        else:
            words.append(rng.choice(_WORDS))
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


def sentences(n: int, *, seed: int = 0, profile: Profile = "mixed") -> list[str]:
    """`n` deterministic sentences. `profile` picks the length distribution."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if profile != "mixed" and profile not in _LENGTHS:
        raise ValueError(f"unknown profile {profile!r}; choose short, medium, long or mixed")
    rng = random.Random(f"{seed}:{profile}")
    kinds, weights = zip(*_MIXED_WEIGHTS, strict=True)
    out: list[str] = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0] if profile == "mixed" else profile
        low, high = _LENGTHS[kind]
        out.append(_sentence(rng, rng.randint(low, high)))
    return out
