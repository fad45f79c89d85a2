"""The word embedding trains only the rows the training data uses (on a CPU, in one process).

A text model's word embedding is half of its weights or more (MiniLM: 11.7M of 22.7M; XLM-R base: 192M of 278M),
but a training set uses a fraction of the vocabulary (the first 4,000 SST-2 rows: about 7,000 of 30,522 rows). A
row that no training batch holds never gets a gradient: its Adam moments stay zero, so AdamW's update of it is the
decoupled weight decay alone (Adam and SGD without weight decay: nothing). Here the optimizer holds a compact copy of
the used rows (``rows``: k x d weights, gradient and moments instead of n x d) and writes it into the embedding after
each step; with weight decay the whole embedding is first scaled by ``1 - lr * wd`` (one multiply, what AdamW does to
a row without gradient). Training is equal to updating the whole matrix (the same elementwise update of every row; a
gradient-accumulated sum is added row by row: equal up to float rounding). A write to the embedding from elsewhere
between steps (a weight-averaging callback swapping weights in and out) is seen and taken into the rows. An optimizer
step over k rows instead of n, and three n x d tensors fewer (gradient, two moments): 7-10% of a MiniLM step and
~100 MB here (bench/README.md).

The model's state in a checkpoint holds the whole embedding. The optimizer's holds the used rows' moments with their
token ids (``USED_ROWS``, ``NUM_ROWS``), not n x d tensors that are zero elsewhere: 70 MB less to write for MiniLM,
and no full-size copies allocated at every save (they were the fit's peak memory). sft expands them when it loads a
checkpoint for fit (:func:`expand_checkpoint`, from ``Classifier.on_load_checkpoint``), so it resumes with or without
this, on a CPU or a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

# Keys beside a compact parameter state in a saved optimizer state: the token ids of its rows (a list), the
# embedding's number of rows.
USED_ROWS, NUM_ROWS = "sft_used_rows", "sft_num_rows"


def expand_used_rows(state: dict[str, Any]) -> dict[str, Any]:
    """One parameter's saved optimizer state with the full-size moments of the whole embedding (zeros outside the
    used rows) where it was saved compact; any other state as it is."""
    if USED_ROWS not in state:
        return state
    state = dict(state)
    rows, num_rows = torch.as_tensor(state.pop(USED_ROWS), dtype=torch.long), int(state.pop(NUM_ROWS))
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.ndim == 2 and value.shape[0] == len(rows):
            state[key] = value.new_zeros((num_rows, value.shape[1])).index_copy_(0, rows, value)
    return state


def expand_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Every compact embedding state in a Lightning checkpoint's optimizer states made full-size, in place."""
    for optimizer_state in checkpoint.get("optimizer_states") or []:
        optimizer_state["state"] = {i: expand_used_rows(s) for i, s in optimizer_state.get("state", {}).items()}


def decoupled_decay(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> bool | None:
    """How ``optimizer`` treats a parameter without gradient in ``group``: True = shrinks it by ``1 - lr * wd`` per
    step (AdamW); False = leaves it unchanged; None = updates it otherwise (L2 decay, other optimizers): the unused
    rows cannot be skipped."""
    decoupled = isinstance(optimizer, torch.optim.AdamW) or (
        isinstance(optimizer, torch.optim.Adam) and group.get("decoupled_weight_decay", False))
    if decoupled:
        return bool(group.get("weight_decay", 0.0))
    if isinstance(optimizer, torch.optim.Adam | torch.optim.SGD) and not group.get("weight_decay", 0.0):
        return False
    return None


class UsedRows:
    """The optimizer's view of ``embedding``: its rows ``used`` (sorted unique token ids)."""

    def __init__(self, embedding: nn.Embedding, optimizer: torch.optim.Optimizer, group: dict[str, Any],
                 used: torch.Tensor):
        self.embedding, self.optimizer = embedding, optimizer
        self.weight = weight = embedding.weight
        self.used = used
        self.slot = torch.full((weight.shape[0],), -1, dtype=torch.long)
        self.slot[used] = torch.arange(len(used))
        self.rows = nn.Parameter(weight.detach()[used].clone())
        self.decays = decoupled_decay(optimizer, group)
        self.buffer: torch.Tensor | None = None
        self._swap(weight, self.rows)
        embedding.sparse = True  # the gradient of the rows a batch holds, gathered into ``rows.grad``
        self.seen = weight._version  # the embedding as this last wrote it (a change: written from elsewhere)
        self.handles = [
            weight.register_post_accumulate_grad_hook(self._gather_grad),
            optimizer.register_step_pre_hook(self._before_step),
            optimizer.register_step_post_hook(self._after_step),
            optimizer.register_state_dict_post_hook(self._saved_state),
            # Lightning restores a resumed run's optimizer after on_fit_start, where this was set up. (Last: see undo.)
            optimizer.register_load_state_dict_post_hook(lambda _: self._compact_state(loading=True)),
        ]
        self._compact_state()

    def __deepcopy__(self, memo: dict) -> UsedRows:
        # A deep copy of the model (an averaged model) copies the weight's hook: not this optimizer's state with it.
        return self

    def _where(self, param: torch.Tensor) -> tuple[dict[str, Any], int] | None:
        """(parameter group, position in it) of ``param`` in the optimizer, looked up each time:
        ``load_state_dict`` replaces the groups."""
        return next(((g, i) for g in self.optimizer.param_groups for i, p in enumerate(g["params"]) if p is param),
                    None)

    def _swap(self, old: torch.Tensor, new: torch.Tensor) -> None:
        group, i = self._where(old)
        group["params"][i] = new

    def group(self) -> dict[str, Any]:
        """The parameter group holding the rows."""
        return self._where(self.rows)[0]

    def _saved(self, state: dict[str, Any]) -> dict[str, Any]:
        """The rows' optimizer state in the saved format: with the token ids of its rows (a list:
        optimizer.load_state_dict casts every tensor of a state to the parameter's dtype)."""
        return {**state, USED_ROWS: self.used.tolist(), NUM_ROWS: self.weight.shape[0]}

    def _compact_state(self, loading: bool = False) -> None:
        """Full-size moments (a checkpoint's, zero outside the used rows) become the rows' own."""
        if not self._active():
            return
        state = self.optimizer.state.pop(self.weight, None) or self.optimizer.state.pop(self.rows, None)
        if not state:
            return
        state = expand_used_rows(state)  # saved compact, maybe over another training vocabulary
        moments = [v for v in state.values() if _full(v, self.weight)]
        if moments and not _only_on(moments, self.used):
            # Moments outside these rows (an optimizer resumed from a fit on other data): the whole matrix trains.
            log.info("The resumed optimizer has moments outside the training data's vocabulary: the whole word "
                     "embedding trains.")
            self.undo(keep_last_hook=loading)  # (a hook cannot be removed while the optimizer runs its kind)
            self.optimizer.state[self.weight] = state
            return
        self.optimizer.state[self.rows] = {k: v[self.used].clone() if _full(v, self.weight) else v
                                           for k, v in state.items()}

    def _gather_grad(self, weight: torch.Tensor) -> None:
        grad, weight.grad = weight.grad, None
        if grad is None:
            return
        ids = grad._indices()[0]  # uncoalesced (repeated ids): index_add_ sums them, as the dense gradient does
        slots = self.slot[ids]
        if len(slots) and int(slots.min()) < 0:
            raise RuntimeError(
                "A training batch holds token ids that the training split does not (e.g. id "
                f"{int(ids[slots < 0][0])}): the word embedding trains only the rows the training data "
                "uses. Turn this off with +model.embedding_used_rows=false if batches are built outside the data module.")
        if self.rows.grad is None:  # the first micro-batch of a step (zero_grad sets it to None)
            if self.buffer is None:
                self.buffer = torch.zeros_like(self.rows)
            self.rows.grad = self.buffer.zero_()
        self.rows.grad.index_add_(0, slots, grad._values().to(self.rows.dtype))

    def _before_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.weight._version != self.seen:  # written from elsewhere since this last wrote it: that is the weight
            with torch.no_grad():
                self.rows.copy_(self.weight[self.used])
            self.seen = self.weight._version

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        if self.rows.grad is None:  # the optimizer skipped the parameter, as it would have the whole embedding
            return
        with torch.no_grad():
            if self.decays:  # AdamW's decay of every row; the used rows are then overwritten with their update
                group = self.group()
                self.weight.mul_(1.0 - float(group["lr"]) * float(group["weight_decay"]))
            self.weight.index_copy_(0, self.used, self.rows)
        self.seen = self.weight._version

    def _index(self) -> int:
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        return next(i for i, p in enumerate(params) if p is self.rows)

    def _saved_state(self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]) -> None:
        index = self._index()
        if state_dict["state"].get(index):
            state_dict["state"][index] = self._saved(state_dict["state"][index])

    def _active(self) -> bool:
        return self._where(self.rows) is not None

    def undo(self, keep_last_hook: bool = False) -> None:
        """The optimizer holds the whole embedding again. Its moments stay compact, in the saved format, until the
        optimizer steps again: after a fit it is usually dropped (sft frees it), so the end of a fit allocates no
        full-size moments (they would be its peak memory)."""
        if not self._active():  # undone already
            return
        for handle in self.handles[:-1] if keep_last_hook else self.handles:
            handle.remove()
        self.embedding.sparse = False
        self._swap(self.rows, self.weight)
        state = self.optimizer.state.pop(self.rows, None)
        if state:
            self.optimizer.state[self.weight] = self._saved(state)
            self.optimizer.register_step_pre_hook(_expand_before_step(self.weight))
        self.rows.grad = self.buffer = None


def _expand_before_step(weight: torch.Tensor) -> Callable[..., None]:
    def expand(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        state = optimizer.state.get(weight)
        if state and USED_ROWS in state:
            optimizer.state[weight] = expand_used_rows(state)

    return expand


def _full(value: Any, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape


def _only_on(moments: list[torch.Tensor], used: torch.Tensor) -> bool:
    """Whether full-size ``moments`` are zero outside the rows ``used``."""
    outside = torch.ones(moments[0].shape[0], dtype=torch.bool)
    outside[used] = False
    return not any(bool(m[outside].any()) for m in moments)


def train_used_rows(model: nn.Module, optimizer: torch.optim.Optimizer,
                    used_ids: torch.Tensor) -> Callable[[], None] | None:
    """Let ``optimizer`` update only the rows ``used_ids`` of ``model``'s input embedding (the token ids of the
    training data, padding included); returns the undo, or None where this would not be exact or not apply: a frozen
    embedding, one shared with other modules (T5's encoder and decoder), ``max_norm`` (renormalised in the forward),
    L2 weight decay, another optimizer, moments outside those rows."""
    try:
        embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    except NotImplementedError:
        return None
    if (type(embedding) is not nn.Embedding or embedding.sparse or embedding.max_norm is not None
            or not embedding.weight.requires_grad):
        return None
    weight = embedding.weight
    if sum(p is weight for _, p in model.named_parameters(remove_duplicate=False)) > 1:  # tied: others read it too
        return None
    group = next((g for g in optimizer.param_groups if any(p is weight for p in g["params"])), None)
    if group is None or decoupled_decay(optimizer, group) is None:
        return None
    used = torch.unique(used_ids).long()
    if len(used) == 0 or int(used[0]) < 0 or int(used[-1]) >= weight.shape[0]:
        return None
    moments = [v for v in (optimizer.state.get(weight) or {}).values() if _full(v, weight)]
    if moments and not _only_on(moments, used):
        log.info("The optimizer has moments outside the training data's vocabulary: the whole word embedding trains.")
        return None
    return UsedRows(embedding, optimizer, group, used).undo
