"""A tag per word (CoNLL-2003 NER): one logit per tag per token; the loss on each word's first sub-token (the
others and special tokens carry -100); entity-level precision / recall / F1 with ``seqeval`` (micro and per entity
type) and word accuracy. Tags are IOB2 (``B-X`` begins an entity of type X, ``I-X`` continues it)."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from sft.tasks.base import Task
from sft.tasks.imbalance import LossWeights, softmax_loss

IGNORE = -100  # the label of sub-tokens after a word's first, and of special tokens


class TokenTagging(Task):
    kind = "token"
    problem_type = None  # transformers' token-classification models have no problem_type
    metric_names = ("f1", "token_acc", "precision", "recall")
    default_metric = "val/f1"

    @property
    def entity_types(self) -> list[str]:
        return sorted({name[2:] for name in self.label_names if name[:2] in ("B-", "I-")})

    def targets(self, values: list[Any]) -> torch.Tensor:
        raise TypeError("token targets are aligned to sub-tokens by the data module (word_ids), not here")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: LossWeights | None = None) -> torch.Tensor:
        return softmax_loss(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), weights, ignore_index=IGNORE)

    def weight(self, targets: torch.Tensor) -> int:
        """Labelled words: the loss is a per-word mean, so the epoch's is weighted by words, not sentences."""
        return int((targets != IGNORE).sum())

    def metrics(self, stage: str) -> Metric:
        return EntityScores(self.label_names, stage, per_type=stage != "train")

    def metric_keys(self, stage: str = "val") -> list[str]:
        per_type = [f"f1_{t}" for t in self.entity_types] if stage != "train" else []
        return [f"{stage}/{name}" for name in (*self.metric_names, *per_type, "loss")]

    def not_applicable(self, section: str) -> str | None:
        reasons = {
            "calibration": "calibration here is of one class per input; a tagger predicts one tag per word "
                           "(entity-level scores are in the performance section).",
            "faithfulness": "the deletion test removes words to lower one predicted class per input; a tagger has "
                            "a prediction per word.",
            "robustness": "the perturbations are scored by one label per input; for a tagger they would move the "
                          "words the tags belong to.",
            "representation": "the representation map shows one point per input with its class; a tagger's "
                              "classes are per word.",
        }
        return reasons.get(section)


def word_tags(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per sentence: (predicted tag ids, true tag ids) at the positions that carry a label (first sub-tokens)."""
    keep = labels != IGNORE
    preds = logits.argmax(-1)
    return [preds[i][keep[i]] for i in range(len(labels))], [labels[i][keep[i]] for i in range(len(labels))]


class EntityScores(Metric):
    """Keeps each sentence's word-level tags (gathered over DDP ranks, so entity scores are over all sentences)
    and scores them with seqeval at the end."""

    full_state_update = False

    def __init__(self, label_names: list[str], stage: str, per_type: bool = True):
        super().__init__()
        self.label_names, self.stage, self.per_type = list(label_names), stage, per_type
        self.add_state("preds", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")
        self.add_state("lengths", default=[], dist_reduce_fx="cat")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        preds, target = word_tags(logits.detach(), labels)
        self.preds.append(torch.cat(preds) if preds else torch.empty(0, dtype=torch.long, device=labels.device))
        self.target.append(torch.cat(target) if target else torch.empty(0, dtype=torch.long, device=labels.device))
        self.lengths.append(torch.tensor([len(t) for t in target], dtype=torch.long, device=labels.device))

    def sentences(self) -> tuple[list[list[str]], list[list[str]]]:
        """(true tag sequences, predicted tag sequences), one per sentence."""
        preds, target, lengths = (dim_zero_cat(x).cpu().tolist() for x in (self.preds, self.target, self.lengths))
        true, pred, start = [], [], 0
        for n in lengths:
            true.append([self.label_names[i] for i in target[start : start + n]])
            pred.append([self.label_names[i] for i in preds[start : start + n]])
            start += n
        return true, pred

    def compute(self) -> dict[str, torch.Tensor]:
        true, pred = self.sentences()
        values = entity_scores(true, pred, per_type=self.per_type)
        return {f"{self.stage}/{name}": torch.tensor(value, dtype=torch.float32) for name, value in values.items()}


def entity_scores(true: list[list[str]], pred: list[list[str]], per_type: bool = True) -> dict[str, float]:
    """seqeval's entity-level micro precision / recall / F1 (``precision``...), word accuracy (``token_acc``) and,
    with ``per_type``, each entity type's F1 (``f1_PER``...)."""
    from seqeval.metrics import accuracy_score, classification_report

    words = sum(len(s) for s in true)
    if not words:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "token_acc": 0.0}
    with warnings.catch_warnings():  # seqeval warns about types with no predicted / true entity (scored 0)
        warnings.simplefilter("ignore")
        report = classification_report(true, pred, output_dict=True, zero_division=0)
    micro = report.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    values = {"precision": micro["precision"], "recall": micro["recall"], "f1": micro["f1-score"],
              "token_acc": accuracy_score(true, pred)}
    if per_type:
        values.update({f"f1_{name}": scores["f1-score"] for name, scores in report.items() if " avg" not in name})
    return {k: float(v) for k, v in values.items()}


def entity_spans(tags: list[str]) -> list[tuple[str, int, int]]:
    """``(type, first word, last word + 1)`` of each entity in a tag sequence; an ``I-X`` that does not continue
    an entity of type X starts one (as seqeval and conlleval read it)."""
    spans: list[tuple[str, int, int]] = []
    current: list[Any] | None = None
    for i, tag in enumerate([*tags, "O"]):
        prefix, kind = (tag[:1], tag[2:]) if tag != "O" else ("O", "")
        if current is not None and (prefix != "I" or kind != current[0]):
            spans.append((current[0], current[1], i))
            current = None
        if prefix in ("B", "I") and current is None:
            current = [kind, i]
    return spans
