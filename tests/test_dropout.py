"""sft's CPU dropout (sft.models.dropout) is the same dropout as nn.Dropout: its rate, its scale, its gradient, its
reproducibility from the global seed; and the models sft builds use it without changing what they save."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sft.models.dropout import CpuFastDropout, keep_mask, use_fast_cpu_dropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_in_both_halves_of_each_draw(p: float) -> None:
    torch.manual_seed(0)
    n = 2_000_000
    kept, scale = keep_mask(torch.Size([n]), p, torch.float32)
    p_rounded = round(p * 32768) / 32768
    assert abs(p_rounded - p) < 1 / 65536
    assert scale == pytest.approx(1 / (1 - p_rounded), rel=1e-12)
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    # Each int32 draw feeds two elements (its low and high 16 bits): both must keep at the same rate.
    sigma = (p * (1 - p) / (n / 2)) ** 0.5
    for half in (kept[0::2], kept[1::2]):
        assert abs(half.mean().item() - (1 - p_rounded)) < 5 * sigma
    # Neighbours are independent: P(both kept) = (1-p)^2.
    both = (kept[0::2] * kept[1::2]).mean().item()
    assert abs(both - (1 - p_rounded) ** 2) < 5 * sigma


def test_expected_output_equals_input_and_kept_values_are_scaled_exactly_in_bf16() -> None:
    torch.manual_seed(1)
    drop = CpuFastDropout(0.1).train()
    x = torch.randn(4096, 256)
    out = drop(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.9) < 0.005
    torch.testing.assert_close(out[kept], x[kept] / (1 - round(0.1 * 32768) / 32768))
    assert abs(drop(torch.ones(2_000_000)).mean().item() - 1.0) < 0.003

    xb = torch.randn(4096, 256).bfloat16()
    outb = drop(xb)
    assert outb.dtype == torch.bfloat16
    keptb = outb != 0
    _, scale = keep_mask(torch.Size([1]), 0.1, torch.float32)
    # One rounding of x * (1/0.9) per element, not x times a bf16-rounded scale (1.109375) as in nn.Dropout.
    assert torch.equal(outb[keptb], (xb[keptb].float() * scale).bfloat16())


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(2)
    drop = CpuFastDropout(0.3).train()
    x = torch.randn(64, 33, requires_grad=True)  # an odd element count: the last draw feeds one element only
    out = drop(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    scale = 1 / (1 - round(0.3 * 32768) / 32768)
    torch.testing.assert_close(x.grad, torch.where(out != 0, grad_out * scale, torch.zeros(())))
    assert 0 < (out == 0).float().mean().item() < 0.6


def test_masks_follow_the_global_generator_so_seeds_and_saved_rng_states_reproduce_them() -> None:
    drop = CpuFastDropout(0.5).train()
    x = torch.ones(1000)
    torch.manual_seed(7)
    first = drop(x)
    state = torch.get_rng_state()
    second = drop(x)
    torch.set_rng_state(state)
    assert torch.equal(drop(x), second)
    assert not torch.equal(first, second)
    torch.manual_seed(7)
    assert torch.equal(drop(x), first)


def test_eval_mode_zero_rate_and_inplace_behave_as_nn_dropout() -> None:
    x = torch.randn(10, 10)
    assert torch.equal(CpuFastDropout(0.5).eval()(x), x)
    assert torch.equal(CpuFastDropout(0.0).train()(x), x)
    assert torch.equal(CpuFastDropout(1.0).train()(x), torch.zeros_like(x))
    torch.manual_seed(3)
    expected = nn.Dropout(0.5, inplace=True).train()(x.clone())
    torch.manual_seed(3)
    assert torch.equal(CpuFastDropout(0.5, inplace=True).train()(x.clone()), expected)


def test_models_swap_every_dropout_and_save_the_same_weights(tiny_bert: str, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    from sft.models.classifier import TextClassifier

    stock = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    n_dropout = sum(type(m) is nn.Dropout for m in stock.modules())
    assert n_dropout > 0
    keys = set(stock.state_dict())
    assert use_fast_cpu_dropout(stock) == n_dropout
    assert not any(type(m) is nn.Dropout for m in stock.modules())
    assert set(stock.state_dict()) == keys
    stock.save_pretrained(tmp_path / "saved")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, stock.eval()(input_ids=ids).logits)

    model = TextClassifier(tiny_bert, num_labels=2)
    assert sum(isinstance(m, CpuFastDropout) for m in model.modules()) == n_dropout
    plain = TextClassifier(tiny_bert, num_labels=2, fast_cpu_dropout=False)
    assert sum(type(m) is nn.Dropout for m in plain.modules()) == n_dropout
    assert not any(isinstance(m, CpuFastDropout) for m in plain.modules())
