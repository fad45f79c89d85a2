"""sft's CPU training attention (sft.models.cpu_attention): the same attention as SDPA's math path (scores, mask,
softmax, dropout, values) with sft's dropout mask and a softmax vectorised at every width; transformers' own SDPA
everywhere else."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from sft.models import cpu_attention
from sft.models.classifier import TextClassifier
from sft.models.cpu_attention import IMPLEMENTATION, cpu_training_attention, softmax_last_dim
from sft.models.dropout import keep_mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_equals_torch_softmax_in_value_and_gradient_at_every_width(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    for width in (1, 2, 7, 8, 13, 15, 16, 17, 31, 32, 33, 64):
        x = (torch.randn(3, 4, 5, width) * 4).to(dtype)
        x[0, 0, 0, : width // 2] = torch.finfo(dtype).min  # a masked row (additive mask)
        ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
        y = softmax_last_dim(ours)
        assert y.dtype == dtype
        expected = torch.softmax(ref.float(), -1)
        tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 4e-3, "rtol": 1e-2}
        torch.testing.assert_close(y.float(), expected, **tol, msg=f"width {width}")
        grad = torch.randn_like(y)
        y.backward(grad)
        expected.to(dtype).backward(grad)
        torch.testing.assert_close(ours.grad.float(), ref.grad.float(), **tol, msg=f"width {width}")


def test_the_narrow_softmax_route_equals_torch_softmax_where_torch_is_vectorised_too() -> None:
    torch.manual_seed(1)
    x = torch.randn(2, 3, 4, 40, requires_grad=True)
    y = cpu_attention._NarrowSoftmax.apply(x)
    torch.testing.assert_close(y, torch.softmax(x, -1))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    (ref,) = torch.autograd.grad(torch.softmax(x, -1), x, g)
    torch.testing.assert_close(gx, ref)


class _Attention(nn.Module):
    """What transformers passes as ``module``: an attention layer with its mode and flags."""

    is_causal = False


def _qkv(batch: int = 4, heads: int = 3, length: int = 11, dim: int = 8, dtype: torch.dtype = torch.float32):
    torch.manual_seed(2)
    return [torch.randn(batch, heads, length, dim, dtype=dtype, requires_grad=True) for _ in range(3)]


def _padding_mask(batch: int, length: int) -> torch.Tensor:
    """sdpa's mask for right-padded rows: (batch, 1, query, key), True = attend."""
    lengths = torch.tensor([length, length - 3, 2, length - 1])[:batch]
    keys = torch.arange(length)[None, :] < lengths[:, None]
    return keys[:, None, None, :].expand(batch, 1, length, length)


@pytest.mark.parametrize("masked", [True, False])
def test_training_attention_is_softmax_then_sfts_dropout_mask_then_values(masked: bool) -> None:
    q, k, v = _qkv()
    mask = _padding_mask(4, 11) if masked else None
    module = _Attention().train()
    torch.manual_seed(7)
    out, weights = cpu_training_attention(module, q, k, v, mask, dropout=0.1, scaling=0.3)
    assert weights is None and out.shape == (4, 11, 3, 8)  # (batch, length, heads, dim), as sdpa's

    # The reference: eager attention (transformers' formula) with the mask sft's dropout draws from the same seed.
    scores = q @ k.transpose(2, 3) * 0.3
    if masked:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    probs = torch.softmax(scores, -1)
    torch.manual_seed(7)
    kept, scale = keep_mask(probs.shape, 0.1, probs.dtype)
    expected = (probs * kept * scale @ v).transpose(1, 2)
    torch.testing.assert_close(out, expected)
    assert 0.85 < kept.mean().item() < 0.95  # it does drop

    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (q, k, v), grad)
    ref = torch.autograd.grad(expected, (q, k, v), grad)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_training_attention_under_bf16_autocast_stays_close_to_fp32() -> None:
    q, k, v = _qkv()
    mask = _padding_mask(4, 11)
    module = _Attention().train()
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, _ = cpu_training_attention(module, q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, dropout=0.1)
    torch.manual_seed(3)
    full, _ = cpu_training_attention(module, q, k, v, mask, dropout=0.1)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), full, atol=0.05, rtol=0.05)


def test_everything_but_cpu_training_with_dropout_is_transformers_sdpa_unchanged() -> None:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv()
    mask = _padding_mask(4, 11)
    for module, dropout in ((_Attention().eval(), 0.0), (_Attention().train(), 0.0)):
        ours, _ = cpu_training_attention(module, q, k, v, mask, dropout=dropout)
        ref, _ = sdpa_attention_forward(module, q, k, v, mask, dropout=dropout)
        assert torch.equal(ours, ref)
    causal = _Attention().train()
    causal.is_causal = True  # a decoder: sdpa's own (causal) path, with its own dropout
    torch.manual_seed(4)
    ours, _ = cpu_training_attention(causal, q, k, v, None, dropout=0.1)
    torch.manual_seed(4)
    ref, _ = sdpa_attention_forward(causal, q, k, v, None, dropout=0.1)
    assert torch.equal(ours, ref)


def test_text_classifier_trains_through_it_and_exports_without_it(tiny_bert: str, tmp_path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = TextClassifier(tiny_bert, num_labels=2)
    assert model.model.config._attn_implementation == IMPLEMENTATION
    plain = TextClassifier(tiny_bert, num_labels=2, fast_cpu_attention=False)
    assert plain.model.config._attn_implementation == "sdpa"

    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102], [101, 2204, 102, 0, 0, 0]])
    mask = (ids != 0).long()
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    assert torch.equal(model.model(input_ids=ids, attention_mask=mask).logits,
                       plain.model(input_ids=ids, attention_mask=mask).logits)  # eval: sdpa itself

    model.train()
    torch.manual_seed(5)
    logits = model.model(input_ids=ids, attention_mask=mask).logits
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.model.parameters()
               if p.requires_grad and p is not model.model.get_input_embeddings().weight)

    model.model.save_pretrained(tmp_path / "export")
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert IMPLEMENTATION not in json.dumps(config)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "export")
    assert reloaded.config._attn_implementation == "sdpa"
