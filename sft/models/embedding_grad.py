"""One gradient buffer per large embedding, kept for the whole fit, on a CPU.

A text model's word-embedding gradient is as large as its vocabulary (30522 x 384 fp32 = 47 MB for MiniLM, 94 MB
for BERT-base), although a batch touches a few hundred rows. PyTorch builds it afresh at every backward pass
(``zeros`` + ``index_add_``), and glibc serves a block that large with a fresh ``mmap``: every step page-faults
47 MB in again (12-15 ms of zero fill instead of ~1 ms, 8% of a MiniLM step; bench/README.md).

Here the embedding computes a sparse gradient (its rows only) and a hook scatters it into a dense buffer that
lives as long as the fit: the same values (the same ``index_add_``; with gradient accumulation, later micro-batches
are added row by row, equal up to float rounding), no fresh memory per step, and the optimizer sees an ordinary
dense gradient (fused AdamW, clipping and weight decay unchanged). Only on a CPU, in one
process: DDP reduces sparse gradients its own way.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# Embeddings below this many elements are left alone: their gradient fits in glibc's reused heap blocks.
MIN_ELEMENTS = 1 << 22  # 16 MB of fp32


class _DenseGradBuffer:
    """A post-accumulate-grad hook: a sparse gradient becomes a dense one, written into one reused buffer."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def __call__(self, param: torch.Tensor) -> None:
        grad = param.grad
        if grad is None or not grad.is_sparse:  # already dense: a later micro-batch accumulated into the buffer
            return
        if self.buffer is None or self.buffer.shape != param.shape or self.buffer.dtype != grad.dtype:
            self.buffer = torch.zeros(param.shape, dtype=grad.dtype, device=param.device)
        else:
            self.buffer.zero_()
        self.buffer.index_add_(0, grad._indices()[0], grad._values())
        param.grad = self.buffer


def reuse_embedding_grad_buffers(model: nn.Module, min_elements: int = MIN_ELEMENTS) -> Callable[[], None]:
    """Give every ``nn.Embedding`` of at least ``min_elements`` weights in ``model`` a reused dense gradient buffer;
    returns the function that undoes it (dense gradients built per step again, buffers freed)."""
    undo: list[Callable[[], None]] = []
    for module in model.modules():
        if type(module) is not nn.Embedding or module.sparse or module.weight.numel() < min_elements:
            continue
        if not module.weight.requires_grad:  # frozen (freeze=backbone / bottom_k / lora): no gradient to keep
            continue
        handle = module.weight.register_post_accumulate_grad_hook(_DenseGradBuffer())
        module.sparse = True

        def restore(module: nn.Embedding = module, handle: torch.utils.hooks.RemovableHandle = handle) -> None:
            handle.remove()
            module.sparse = False

        undo.append(restore)

    def undo_all() -> None:
        for restore in undo:
            restore()

    return undo_all
