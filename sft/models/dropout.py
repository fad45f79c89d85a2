"""Dropout whose random mask is cheap to draw on a CPU.

On a CPU, ``nn.Dropout`` draws its mask with ``bernoulli_``: one Mersenne-Twister number and a compare per element,
serially, ~5 ns an element. For MiniLM that is 10% of a training step (bench/README.md). :class:`CpuFastDropout`
draws one 31-bit integer for every *two* elements from the same generator (so ``seed_everything`` and the RNG state
in checkpoints cover it, as before) and compares 15-bit slices of it to a threshold: the same dropout, about twice
as fast forward and backward. The drop rate is ``p`` rounded to a multiple of 1/32768 (0.1 becomes 0.1000061), and
kept values are scaled by the inverse of that rounded keep rate, so the expected output still equals the input.
Elsewhere (a GPU, eval mode, ``p`` of 0 or 1, ``inplace``) it is ``nn.Dropout`` itself.
"""

from __future__ import annotations

import torch
from torch import nn

_LEVELS = 1 << 15  # the mask compares 15-bit uniform integers


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """Which elements a dropout of rate ``p`` keeps, as 1 / 0 of ``dtype`` in ``shape``, and the scale of the kept
    values (the inverse of the keep rate, ``p`` rounded to a multiple of 1/32768)."""
    n = shape.numel()
    dropped = round(p * _LEVELS)
    # random_() on int32 draws uniformly from [0, 2**31): both 16-bit halves carry 15 uniform low bits.
    halves = torch.empty((n + 1) // 2, dtype=torch.int32).random_().view(torch.int16)[:n]
    # 1 where the 15-bit number is >= dropped, else 0: integer arithmetic, because bool tensors take the slow
    # (unvectorised) paths in comparisons, casts and products (3x the time of the whole mask here).
    kept = (halves & (_LEVELS - 1)).sub_(dropped - 1).clamp_(0, 1)
    return kept.view(shape).to(dtype), _LEVELS / (_LEVELS - dropped)


class _MaskedScale(torch.autograd.Function):
    """``x * kept * scale`` with ``scale`` applied in fp32 and rounded once per element (torch's own dropout scales
    a mask of x's dtype: under bf16 autocast its kept values are multiplied by 1.109375 instead of 1/0.9)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, kept: torch.Tensor,
                scale: float) -> torch.Tensor:
        ctx.save_for_backward(kept)
        ctx.scale = scale
        return torch.mul(x, kept).mul_(scale)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (kept,) = ctx.saved_tensors
        return torch.mul(grad, kept).mul_(ctx.scale), None, None


class CpuFastDropout(nn.Dropout):
    """``nn.Dropout`` with a cheaper mask on CPU (see the module docstring); a drop-in replacement."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or not 0 < round(self.p * _LEVELS) < _LEVELS:
            return super().forward(x)
        kept, scale = keep_mask(x.shape, self.p, x.dtype)
        return _MaskedScale.apply(x, kept, scale)


def use_fast_cpu_dropout(model: nn.Module) -> int:
    """Replace every ``nn.Dropout`` inside ``model`` by a :class:`CpuFastDropout` of the same ``p``; returns how many.
    Dropout holds no weights, so state dicts, checkpoints and ``save_pretrained`` exports are unchanged."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                setattr(module, name, CpuFastDropout(child.p, child.inplace))
                replaced += 1
    return replaced
