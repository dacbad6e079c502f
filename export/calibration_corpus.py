"""Texts whose embeddings set the per-dimension ranges the service quantizes with (Cohere-style int8/uint8).

sentence_transformers.quantize_embeddings(calibration_embeddings=...) takes each dimension's min and max over a
corpus; a corpus of varied topics, lengths, scripts and registers keeps rare-but-real values inside the range.
The validation sentences come first, then templated sentences built in a fixed order: same list every run.
"""

from __future__ import annotations

import itertools

from export.validation_corpus import SENTENCES

_SUBJECTS = ("The committee", "My neighbour", "A small startup", "The central bank", "Our team", "The patient",
             "A retired teacher", "The new algorithm", "This recipe", "The city council", "Every student",
             "The satellite")
_VERBS = ("announced", "questioned", "rejected", "improved", "described", "postponed", "celebrated",
          "measured", "translated", "simplified", "investigated", "funded")
_OBJECTS = ("the quarterly budget", "a faster route to the airport", "the results of the clinical trial",
            "an open-source database", "the rules of the tournament", "a cheaper solar panel",
            "the history of the old bridge", "the winter schedule", "a vegetarian lasagne",
            "the error in the report", "the migration of birds", "a new privacy policy")
_ENDINGS = (".", " yesterday.", " after a long debate.", " without telling anyone.", "?", " — again!",
            " in under ten minutes.", " for the third time this year.")
_QUESTIONS = ("How do I reset my password?", "What is the boiling point of water at altitude?",
              "Which vaccine schedule is recommended for infants?", "Why does my code throw a KeyError?",
              "Where can I buy train tickets to Lyon?", "When was the printing press invented?",
              "Is it safe to eat raw cookie dough?", "How many moons does Jupiter have?",
              "What does HTTP status 429 mean?", "Can I deduct home office expenses?")
_OTHER = (
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "SELECT id, email FROM customers WHERE created_at > now() - interval '7 days';",
    "Der Zug nach Berlin hat heute leider zwanzig Minuten Verspätung.",
    "La réunion est reportée à jeudi prochain, à quinze heures.",
    "El museo abre de martes a domingo, de diez a seis.",
    "Il modello linguistico risponde in italiano e in inglese.",
    "Я читаю книгу о истории науки.",
    "我们明天早上八点在图书馆见面。",
    "今日はとても暑いので、水をたくさん飲んでください。",
    "내일 회의는 오전 열 시에 시작합니다.",
    "مرحبا بكم في موقعنا الجديد.",
    "यह किताब बहुत दिलचस्प है।",
    "Price: $19.99 (was $24.99) — free shipping over $50.",
    "lol ok see u tmrw 😂👍",
    "ERROR 2024-05-01T12:00:00Z worker-3 timeout after 30000 ms",
    "BREAKING: storm warning issued for the coastal region until midnight",
    "Terms and conditions apply. Offer valid while stocks last.",
    "1. Preheat the oven. 2. Mix flour and eggs. 3. Bake for 25 minutes.",
    "The mitochondria is the powerhouse of the cell.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
)
_CALIBRATION_SIZE = 320


def _templated() -> list[str]:
    """Subject-verb-object sentences: every 43rd of all combinations (43 is coprime with each list's length),
    so consecutive ones differ in every slot."""
    combos = list(itertools.product(_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS))[::43][:_CALIBRATION_SIZE]
    sentences = [f"{s} {v} {o}{e}" for s, v, o, e in combos]
    # Longer texts: several templated sentences joined, as passages are.
    passages = [" ".join(sentences[i:i + 4]) for i in range(0, 80, 4)]
    return sentences + passages


CALIBRATION_SENTENCES: tuple[str, ...] = tuple(
    dict.fromkeys([*SENTENCES, *_QUESTIONS, *_OTHER, *_templated()]))
