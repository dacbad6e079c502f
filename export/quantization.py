"""Per-dimension ranges of a model's sentence embeddings over the calibration corpus, for the service's
int8/uint8 embeddings (sentence_transformers.quantize_embeddings: starts = min, steps = (max - min) / 255)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from export.calibration_corpus import CALIBRATION_SENTENCES
from export.validate import make_batches
from model import Encoder

_BATCH = 32


def quantization_ranges(encoder: Encoder, tokenizer: Tokenizer, max_len: int, names: tuple[str, ...],
                        padding_side: str, pad_id: int, normalize: bool) -> dict[str, Any]:
    """{"min": [D], "max": [D], "calibration_texts": N} of the final embeddings (normalised when the model
    normalises), from our torch encoder; texts carry no prompt."""
    count = len(CALIBRATION_SENTENCES)
    sizes = tuple(min(_BATCH, count - i) for i in range(0, count, _BATCH))
    batches = make_batches(tokenizer, CALIBRATION_SENTENCES, max_len, sizes=sizes, names=names,
                           padding_side=padding_side, pad_id=pad_id)
    vectors = []
    with torch.no_grad():
        for batch in batches:
            batch.prompt_length = np.zeros(len(batch.input_ids), dtype=np.int64)
            sentence = encoder(*batch.torch()).sentence_embedding
            if normalize:
                sentence = torch.nn.functional.normalize(sentence, p=2, dim=1)
            vectors.append(sentence.numpy())
    stacked = np.concatenate(vectors)
    return {"min": [float(x) for x in stacked.min(axis=0)], "max": [float(x) for x in stacked.max(axis=0)],
            "calibration_texts": count}
