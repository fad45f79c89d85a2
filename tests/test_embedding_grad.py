"""Reused embedding-gradient buffers (sft.models.embedding_grad): the same gradients and the same training as
PyTorch's dense embedding gradient, one buffer for the whole fit, and a real fit turns them on and off again."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from sft.models.embedding_grad import MIN_ELEMENTS, reuse_embedding_grad_buffers
from sft.pipeline.train import train


@pytest.fixture(scope="module")
def stock_model(tiny_bert: str) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).train()


def _batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 3000, (4, 9), generator=g)
    ids[:, 3] = ids[0, 3]  # a row repeated across the batch: its gradient rows are summed
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}


def _loss(model: nn.Module, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the same dropout masks in both models
    return model(**_batch(seed)).loss


def test_gradients_equal_the_dense_embedding_gradient_and_land_in_one_reused_buffer(stock_model) -> None:
    stock, reused = copy.deepcopy(stock_model), copy.deepcopy(stock_model)
    undo = reuse_embedding_grad_buffers(reused, min_elements=0)
    embedding = reused.bert.embeddings.word_embeddings
    assert embedding.sparse
    buffers = []
    for seed in (1, 2):
        _loss(stock, seed).backward()
        _loss(reused, seed).backward()
        assert not embedding.weight.grad.is_sparse
        buffers.append(embedding.weight.grad.data_ptr())
        for (name, a), b in zip(stock.named_parameters(), reused.parameters(), strict=True):
            assert torch.equal(a.grad, b.grad), name
        stock.zero_grad(set_to_none=True)
        reused.zero_grad(set_to_none=True)
    assert buffers[0] == buffers[1]  # the second step wrote into the first step's buffer
    _loss(reused, 3).backward()
    kept = embedding.weight.grad  # the reused buffer, held here so its memory cannot be handed out again
    assert kept.data_ptr() == buffers[0]
    reused.zero_grad(set_to_none=True)
    undo()
    assert not embedding.sparse
    _loss(reused, 4).backward()
    assert embedding.weight.grad.data_ptr() != kept.data_ptr()  # PyTorch's own dense gradient again


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_fused_adamw_training_matches_the_dense_path(stock_model, micro_batches: int) -> None:
    stock, reused = copy.deepcopy(stock_model), copy.deepcopy(stock_model)
    reuse_embedding_grad_buffers(reused, min_elements=0)
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True) for m in (stock, reused)]
    for step in range(3):
        for model, optimizer in zip((stock, reused), optimizers, strict=True):
            for micro in range(micro_batches):  # accumulation: later backward passes add into the dense buffer
                _loss(model, 10 * step + micro).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    for (name, a), b in zip(stock.named_parameters(), reused.parameters(), strict=True):
        if micro_batches == 1:
            assert torch.equal(a, b), name
        else:  # a sparse gradient is added into the buffer row by row: the same sum, up to float rounding
            torch.testing.assert_close(a, b, msg=name)
    assert not torch.equal(stock.bert.embeddings.word_embeddings.weight,
                           stock_model.bert.embeddings.word_embeddings.weight)  # the embedding did train


def test_only_embeddings_large_enough_to_be_mmapped_are_changed(stock_model) -> None:
    model = copy.deepcopy(stock_model)
    small = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    assert all(m.weight.numel() < MIN_ELEMENTS for m in small)  # the tiny BERT's: 30522 x 32
    reuse_embedding_grad_buffers(model)
    assert not any(m.sparse for m in small)


@pytest.fixture(scope="module")
def wide_bert(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """A 1-layer BERT whose word embedding (30522 x 144) is above MIN_ELEMENTS."""
    from tests.conftest import save_small_bert

    return save_small_bert(tmp_path_factory.mktemp("wide_bert"), minilm_path, hidden_size=144, num_hidden_layers=1)


class EmbeddingGradSpy(L.Callback):
    """Records, at every training batch, whether the word embedding computes sparse gradients and where its dense
    gradient lives; and the model, to look at after the fit."""

    seen: list[tuple[bool, int]] = []
    model: list[L.LightningModule] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        weight = pl_module.model.bert.embeddings.word_embeddings.weight
        EmbeddingGradSpy.seen.append((pl_module.model.bert.embeddings.word_embeddings.sparse, weight.grad.data_ptr()))
        assert not weight.grad.is_sparse

    def on_train_end(self, trainer, pl_module) -> None:
        EmbeddingGradSpy.model.append(pl_module)


def test_a_cpu_fit_reuses_one_buffer_and_restores_the_embedding_afterwards(compose_cfg, wide_bert, tmp_path) -> None:
    from tests.conftest import FAST

    EmbeddingGradSpy.seen.clear()
    EmbeddingGradSpy.model.clear()
    metrics = train(compose_cfg(f"model.name_or_path={wide_bert}", f"output_dir={tmp_path / 'run'}", *FAST,
                                "data.train_size=64", "data.batch_size=16", "export=false",
                                # the buffer is for large embeddings the optimizer holds whole (test_embedding_rows)
                                "+model.embedding_used_rows=false",
                                "++callbacks.spy._target_=tests.test_embedding_grad.EmbeddingGradSpy"))
    assert metrics["fit/global_step"] == len(EmbeddingGradSpy.seen) == 4
    assert all(sparse for sparse, _ in EmbeddingGradSpy.seen)
    assert len({ptr for _, ptr in EmbeddingGradSpy.seen}) == 1  # one buffer for every step
    (model,) = EmbeddingGradSpy.model
    assert not model.model.bert.embeddings.word_embeddings.sparse  # back to a plain embedding after fit
    assert Path(tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()



class FrozenEmbeddingSpy(L.Callback):
    """Records, at every training batch, the word embedding's (sparse, requires_grad, has a gradient)."""

    seen: list[tuple[bool, bool, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        words = pl_module.model.bert.embeddings.word_embeddings
        FrozenEmbeddingSpy.seen.append((words.sparse, words.weight.requires_grad, words.weight.grad is not None))


@pytest.mark.parametrize("freeze", ["bottom_k", "lora", "backbone"])
def test_a_fit_with_a_frozen_embedding_leaves_it_alone(compose_cfg, wide_bert, tmp_path, freeze) -> None:
    """A frozen word embedding has no gradient to keep: the fit does not hook it (torch refuses a gradient hook on a
    weight without gradient: freeze=backbone / bottom_k / lora crashed at fit start on any large model)."""
    from tests.conftest import FAST

    FrozenEmbeddingSpy.seen.clear()
    metrics = train(compose_cfg(f"model.name_or_path={wide_bert}", f"output_dir={tmp_path / 'run'}", *FAST,
                                "data.train_size=32", "data.batch_size=16", "export=false", f"freeze={freeze}",
                                *(["freeze.k=1"] if freeze == "bottom_k" else []),
                                "++callbacks.spy._target_=tests.test_embedding_grad.FrozenEmbeddingSpy"))
    assert metrics["fit/global_step"] == len(FrozenEmbeddingSpy.seen) == 2
    assert FrozenEmbeddingSpy.seen == [(False, False, False)] * 2
