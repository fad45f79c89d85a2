"""Task types: what a model's outputs mean. One module per type owns its loss, its metrics, how targets become
tensors and how outputs become predictions; everything else (data modules, the LightningModule, ``sft.eval``,
``sft.predict``, the export, the report) asks the run's :class:`~sft.tasks.base.Task`.

| type | outputs | loss | metrics |
|---|---|---|---|
| ``single_label`` | one logit per class | cross-entropy | acc, P/R/F1 (macro, or the positive class's), MCC |
| ``regression`` | one number | MSE | Pearson, Spearman, MSE |
| ``multi_label`` | one logit per label | binary cross-entropy | micro / macro F1, subset accuracy, mAP |
| ``token`` | one logit per tag per token | cross-entropy on each word's first sub-token | entity P/R/F1, token accuracy |

Sentence pairs are an input shape, not a task type: a pair task is single-label (MRPC) or regression (STS-B).
Imbalanced data (class weights, ``pos_weight``, focal loss, the balanced sampler's draw weights):
:mod:`sft.tasks.imbalance`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sft.tasks.base import Task

# The names, torch-free: the data readers check a task type without importing torch.
TASK_TYPES = ("single_label", "regression", "multi_label", "token")


def __getattr__(name: str) -> Any:
    if name == "Task":
        from sft.tasks.base import Task

        return Task
    raise AttributeError(name)


def task_class(kind: str) -> type[Task]:
    from sft.errors import ConfigError

    if kind == "single_label":
        from sft.tasks.single_label import SingleLabel as cls
    elif kind == "regression":
        from sft.tasks.regression import Regression as cls
    elif kind == "multi_label":
        from sft.tasks.multi_label import MultiLabel as cls
    elif kind == "token":
        from sft.tasks.token import TokenTagging as cls
    else:
        raise ConfigError(f"Unknown task type {kind!r}: choose one of {', '.join(TASK_TYPES)}.")
    return cls


def make_task(kind: str, label_names: list[str], **settings: Any) -> Task:
    """The task of ``kind`` over ``label_names`` (``positive_label``, ``threshold``, ``pair`` as the type takes)."""
    return task_class(kind)(list(label_names), **settings)


def task_from_dict(spec: dict[str, Any] | None, label_names: list[str] | None = None) -> Task:
    """A task from :meth:`Task.to_dict` (a checkpoint's or an export's); without one (runs and exports made
    before task types), single-label over ``label_names``."""
    spec = dict(spec or {"type": "single_label"})
    kind = spec.pop("type")
    names = spec.pop("label_names", None) or label_names or []
    return make_task(kind, names, **spec)


__all__ = ["TASK_TYPES", "Task", "make_task", "task_class", "task_from_dict"]
