"""Examples -> token ids, the one way every path tokenizes (training data, ``sft.predict``, the report): one text,
a sentence pair (``tokenizer(a, b)``, with ``token_type_ids`` where the model takes them), or pre-split words
whose tags go on each word's first sub-token (-100 on the rest and on special tokens)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sft.errors import DataError

IGNORE = -100  # sft.tasks.token.IGNORE: a label the loss and the metrics skip


def is_pair(inputs: Sequence[Any]) -> bool:
    return bool(inputs) and isinstance(inputs[0], tuple | list) and len(inputs[0]) == 2 and all(
        isinstance(x, str) for x in inputs[0])


def encode(tokenizer: Any, inputs: Sequence[Any], max_length: int, words: bool = False) -> Any:
    """``tokenizer`` over texts, (a, b) pairs, or word lists (``words``), truncated to ``max_length``."""
    if words:
        return tokenizer([list(w) for w in inputs], is_split_into_words=True, truncation=True, max_length=max_length)
    if is_pair(inputs):
        return tokenizer([a for a, _ in inputs], [b for _, b in inputs], truncation=True, max_length=max_length)
    return tokenizer(list(inputs), truncation=True, max_length=max_length)


def has_segment_ids(tokenizer: Any) -> bool:
    """The model behind ``tokenizer`` takes segment ids (BERT yes, RoBERTa / DistilBERT no)."""
    return "token_type_ids" in getattr(tokenizer, "model_input_names", ())


def takes_token_types(tokenizer: Any, inputs: Sequence[Any]) -> bool:
    """Segment ids matter for pairs, and only for models that have them."""
    return is_pair(inputs) and has_segment_ids(tokenizer)


def word_labels(encoding: Any, tags: Sequence[Sequence[str]], tag2id: dict[str, int], origin: str = "data"
                ) -> list[list[int]]:
    """Each sequence's label ids: a word's tag on its first sub-token, -100 elsewhere."""
    rows = []
    for i, row_tags in enumerate(tags):
        try:
            word_ids = encoding.word_ids(i)
        except (ValueError, AttributeError):
            raise DataError(
                f"{origin}: the tokenizer cannot map sub-tokens back to words (word_ids() is missing: a slow, "
                "Python tokenizer). Token classification needs a fast tokenizer: use a model folder with a "
                "tokenizer.json (AutoTokenizer(..., use_fast=True))."
            ) from None
        labels, previous = [], None
        for word in word_ids:
            labels.append(IGNORE if word is None or word == previous else tag2id[row_tags[word]])
            previous = word
        rows.append(labels)
    return rows


def unlabelled_examples(tokenizer: Any, inputs: Sequence[Any], max_length: int) -> list[dict[str, Any]]:
    """Texts or pairs as the examples the collator pads (``input_ids``, segment ids for pairs where the model takes
    them, a placeholder label): what ``sft.predict`` and the report feed a model."""
    import torch

    encoded = encode(tokenizer, inputs, max_length)
    segments = encoded["token_type_ids"] if takes_token_types(tokenizer, inputs) else None
    return [{"input_ids": torch.tensor(ids), "labels": torch.tensor(0),
             **({"token_type_ids": torch.tensor(segments[i])} if segments else {})}
            for i, ids in enumerate(encoded["input_ids"])]
