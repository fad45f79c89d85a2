"""The word embedding trains only the rows the training data uses (sft.models.embedding_rows): the same training as
updating the whole matrix, ordinary checkpoints both ways, refused where it would not be exact, and a real fit turns
it on and off again."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from torch import nn

from sft.models.embedding_rows import NUM_ROWS, USED_ROWS, expand_checkpoint, train_used_rows
from sft.pipeline.train import train

USED = torch.arange(1000, 1400)  # the "training vocabulary" of the batches below


@pytest.fixture(scope="module")
def stock_model(tiny_bert: str) -> nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2).train()


def _batch(seed: int, low: int = 1000, high: int = 1400) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(low, high, (4, 9), generator=g)
    ids[:, 3] = ids[0, 3]  # a row repeated across the batch: its gradient rows are summed
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.tensor([0, 1, 1, 0])}


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, seed: int, micro_batches: int = 1) -> None:
    for micro in range(micro_batches):
        torch.manual_seed(seed + micro)  # the same dropout masks in both models
        model(**_batch(seed + micro)).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _words(model: nn.Module) -> torch.Tensor:
    return model.bert.embeddings.word_embeddings.weight


def _adamw(model: nn.Module, **kwargs) -> torch.optim.Optimizer:
    """Two groups like sft's build_optimizer: the matrices with weight decay, the rest without."""
    params = list(model.parameters())
    return torch.optim.AdamW([{"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
                              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}], **kwargs)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_training_equals_updating_the_whole_embedding(stock_model, fused: bool, micro_batches: int) -> None:
    whole, rows = copy.deepcopy(stock_model), copy.deepcopy(stock_model)
    opt_whole, opt_rows = _adamw(whole, lr=1e-2, fused=fused), _adamw(rows, lr=1e-2, fused=fused)
    undo = train_used_rows(rows, opt_rows, USED)
    assert undo is not None
    held = [p for g in opt_rows.param_groups for p in g["params"]]
    assert not any(p is _words(rows) for p in held)
    assert any(p.shape == (len(USED), _words(rows).shape[1]) for p in held)  # the compact rows instead
    for step in range(4):
        _step(whole, opt_whole, 10 * step, micro_batches)
        _step(rows, opt_rows, 10 * step, micro_batches)
        # The used rows are written into the embedding after every step: training reads them as they are.
        if micro_batches == 1:
            assert torch.equal(_words(whole)[USED], _words(rows)[USED])
        else:  # a sparse gradient is added row by row: the same sum up to float rounding
            torch.testing.assert_close(_words(whole)[USED], _words(rows)[USED])
    undo()
    for (name, a), b in zip(whole.named_parameters(), rows.parameters(), strict=True):
        # The unused rows got the 4 steps' decay as one product: equal up to float rounding.
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0 if micro_batches == 1 else 1e-5, msg=name)
    unused = torch.ones(_words(whole).shape[0], dtype=torch.bool)
    unused[USED] = False
    assert not torch.equal(_words(whole)[unused], _words(stock_model)[unused])  # the decay did shrink them
    # The optimizer holds the whole embedding again; its moments stay compact (nothing allocated at the end of a
    # fit) until it steps again, which expands them and goes on like the whole matrix's optimizer.
    held = [p for g in opt_rows.param_groups for p in g["params"]]
    assert any(p is _words(rows) for p in held) and not rows.bert.embeddings.word_embeddings.sparse
    assert opt_rows.state[_words(rows)]["exp_avg"].shape == (len(USED), _words(rows).shape[1])
    _step(whole, opt_whole, 50, micro_batches)
    _step(rows, opt_rows, 50, micro_batches)
    full = opt_rows.state[_words(rows)]
    assert USED_ROWS not in full
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(full[key], opt_whole.state[_words(whole)][key])
    for (name, a), b in zip(whole.named_parameters(), rows.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0 if micro_batches == 1 else 1e-5, msg=name)


def test_eval_and_checkpoints_see_the_whole_matrix_as_trained(stock_model) -> None:
    whole, rows = copy.deepcopy(stock_model), copy.deepcopy(stock_model)
    opt_whole, opt_rows = _adamw(whole, lr=1e-2, fused=True), _adamw(rows, lr=1e-2, fused=True)
    train_used_rows(rows, opt_rows, USED)
    for step in range(3):
        _step(whole, opt_whole, step)
        _step(rows, opt_rows, step)
    # A checkpoint mid-fit: the model state holds the decayed embedding; the optimizer state the used rows' moments
    # with their ids, which sft expands when it loads the checkpoint: then equal to the whole matrix's.
    # (Copied, as a checkpoint file would be: a state dict shares its tensors with the live model and optimizer.)
    model_state, optimizer_state = copy.deepcopy(rows.state_dict()), copy.deepcopy(opt_rows.state_dict())
    torch.testing.assert_close(model_state["bert.embeddings.word_embeddings.weight"], _words(whole), rtol=1e-6, atol=0)
    saved = [st for st in optimizer_state["state"].values() if USED_ROWS in st]
    assert len(saved) == 1 and saved[0]["exp_avg"].shape == (len(USED), _words(rows).shape[1])
    assert saved[0][USED_ROWS] == USED.tolist() and saved[0][NUM_ROWS] == _words(rows).shape[0]
    checkpoint = {"optimizer_states": [copy.deepcopy(optimizer_state)]}
    expand_checkpoint(checkpoint)
    expanded = checkpoint["optimizer_states"][0]
    assert expanded["state"].keys() == opt_whole.state_dict()["state"].keys()
    for index, state in opt_whole.state_dict()["state"].items():
        assert expanded["state"][index].keys() == state.keys()
        for key, value in state.items():
            torch.testing.assert_close(expanded["state"][index][key], value, msg=f"{index}/{key}")
    # Eval mode reads every row, ids the training data never held included.
    rows.eval(), whole.eval()
    unseen = _batch(99, low=5000, high=6000)
    with torch.no_grad():
        torch.testing.assert_close(rows(**unseen).logits, whole(**unseen).logits, rtol=1e-5, atol=1e-6)
    # That checkpoint resumes into a plain optimizer over the whole matrix (and into a used-rows one) identically.
    rows.train(), whole.train()
    plain = copy.deepcopy(stock_model)
    plain.load_state_dict(model_state)
    opt_plain = _adamw(plain, lr=1e-2, fused=True)
    opt_plain.load_state_dict(expanded)
    again = copy.deepcopy(plain)
    opt_again = _adamw(again, lr=1e-2, fused=True)
    opt_again.load_state_dict(copy.deepcopy(expanded))
    assert train_used_rows(again, opt_again, USED) is not None  # resumed moments are zero outside the rows
    # Lightning restores the optimizer after on_fit_start, where the rows are set up: the saved compact state (or
    # an expanded one) is loaded into the compact rows.
    late = copy.deepcopy(plain)
    opt_late = _adamw(late, lr=1e-2, fused=True)
    assert train_used_rows(late, opt_late, USED) is not None
    opt_late.load_state_dict(copy.deepcopy(optimizer_state))
    compact = [st for p, st in opt_late.state.items() if p.shape == (len(USED), _words(late).shape[1])]
    assert len(compact) == 1 and compact[0]["exp_avg"].shape == (len(USED), _words(late).shape[1])
    for step in range(3, 5):
        for model, optimizer in ((whole, opt_whole), (plain, opt_plain), (again, opt_again), (late, opt_late)):
            _step(model, optimizer, step)
    for model in (plain, again, late):
        model.state_dict()  # applies the pending decay
        torch.testing.assert_close(_words(model), _words(whole), rtol=1e-6, atol=0)


def test_sgd_without_weight_decay_leaves_the_unused_rows_exactly(stock_model) -> None:
    model = copy.deepcopy(stock_model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    undo = train_used_rows(model, optimizer, USED)
    assert undo is not None
    for step in range(2):
        _step(model, optimizer, step)
    undo()
    unused = torch.ones(_words(model).shape[0], dtype=torch.bool)
    unused[USED] = False
    assert torch.equal(_words(model)[unused], _words(stock_model)[unused])
    assert not torch.equal(_words(model)[USED], _words(stock_model)[USED])


@pytest.mark.parametrize("optimizer", ["adam_l2", "sgd_decay", "rmsprop"])
def test_refused_where_the_unused_rows_would_change_otherwise(stock_model, optimizer: str) -> None:
    model = copy.deepcopy(stock_model)
    params = model.parameters()
    built = {"adam_l2": lambda: torch.optim.Adam(params, lr=1e-3, weight_decay=0.01),  # L2: a gradient on every row
             "sgd_decay": lambda: torch.optim.SGD(params, lr=1e-3, weight_decay=0.01),
             "rmsprop": lambda: torch.optim.RMSprop(params, lr=1e-3)}[optimizer]()
    assert train_used_rows(model, built, USED) is None
    assert not model.bert.embeddings.word_embeddings.sparse


def test_refused_for_a_frozen_embedding_or_moments_outside_the_rows(stock_model) -> None:
    frozen = copy.deepcopy(stock_model)
    _words(frozen).requires_grad_(False)
    assert train_used_rows(frozen, _adamw(frozen, lr=1e-3), USED) is None
    # An optimizer resumed from a fit over other data (moments on rows outside these): the whole matrix trains.
    other = copy.deepcopy(stock_model)
    optimizer = _adamw(other, lr=1e-3)
    torch.manual_seed(0)
    other(**_batch(0, low=2000, high=2100)).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    assert train_used_rows(other, optimizer, USED) is None
    # The same optimizer state loaded after the rows were set up (Lightning's order): the whole matrix trains again.
    late = copy.deepcopy(stock_model)
    late.load_state_dict(other.state_dict())
    opt_late = _adamw(late, lr=1e-3)
    assert train_used_rows(late, opt_late, USED) is not None
    opt_late.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    assert any(p is _words(late) for g in opt_late.param_groups for p in g["params"])
    assert opt_late.state[_words(late)]["exp_avg"].shape == _words(late).shape
    assert not late.bert.embeddings.word_embeddings.sparse
    for model, opt in ((other, optimizer), (late, opt_late)):
        _step(model, opt, 5)
    assert torch.equal(_words(late), _words(other))


def test_a_batch_outside_the_training_vocabulary_is_a_clear_error(stock_model) -> None:
    model = copy.deepcopy(stock_model)
    optimizer = _adamw(model, lr=1e-3)
    train_used_rows(model, optimizer, USED)
    with pytest.raises(RuntimeError, match=r"token ids that the training split does not .*embedding_used_rows=false"):
        model(**_batch(0, low=2000, high=2100)).loss.backward()


class UsedRowsSpy(L.Callback):
    """Records, at every optimizer step, whether the optimizer holds the whole word embedding and whether it holds
    the compact used rows, with their gradient; and the model, to look at after the fit."""

    seen: list[tuple[bool, bool]] = []
    model: list[L.LightningModule] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        words = pl_module.model.bert.embeddings.word_embeddings
        assert words.weight.grad is None  # its gradient went to the compact rows
        compact = (len(trainer.datamodule.train_token_ids()), words.weight.shape[1])
        held = [p for g in optimizer.param_groups for p in g["params"]]
        UsedRowsSpy.seen.append((any(p is words.weight for p in held),
                                 any(p.shape == compact and p.grad is not None for p in held)))

    def on_train_end(self, trainer, pl_module) -> None:
        UsedRowsSpy.model.append(pl_module)


def test_a_cpu_fit_trains_the_used_rows_and_equals_a_fit_over_the_whole_embedding(compose_cfg, tmp_path) -> None:
    from tests.conftest import FAST

    UsedRowsSpy.seen.clear()
    UsedRowsSpy.model.clear()
    common = [*FAST, "data.train_size=64", "data.batch_size=16", "export=false", "report=none", "trainer.max_epochs=2"]
    rows = train(compose_cfg(f"output_dir={tmp_path / 'rows'}", *common,
                             "++callbacks.spy._target_=tests.test_embedding_rows.UsedRowsSpy"))
    (model,) = UsedRowsSpy.model
    used = model.trainer.datamodule.train_token_ids()
    assert len(UsedRowsSpy.seen) == rows["fit/global_step"] == 8
    assert set(UsedRowsSpy.seen) == {(False, True)}  # the compact rows at every step, not the whole matrix
    words = model.model.bert.embeddings.word_embeddings
    assert not words.sparse and len(used) < words.weight.shape[0] / 4
    whole = train(compose_cfg(f"output_dir={tmp_path / 'whole'}", *common, "+model.embedding_used_rows=false"))
    for key in ("val/loss", "test/loss", "test/acc"):
        assert rows[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6), key
    saved = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
             for run in ("rows", "whole")]
    key = "model.bert.embeddings.word_embeddings.weight"
    torch.testing.assert_close(saved[0]["state_dict"][key], saved[1]["state_dict"][key], rtol=1e-5, atol=1e-7)
    # The checkpoint holds the used rows' moments (smaller file); expanded as sft loads it, they are the whole fit's.
    (compact,) = [s for s in saved[0]["optimizer_states"][0]["state"].values() if USED_ROWS in s]
    assert compact["exp_avg"].shape[0] == len(used)
    sizes = [(tmp_path / run / "checkpoints" / "last.ckpt").stat().st_size for run in ("rows", "whole")]
    assert sizes[0] < sizes[1]
    expand_checkpoint(saved[0])
    for index, state in saved[1]["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            torch.testing.assert_close(saved[0]["optimizer_states"][0]["state"][index][name], value, rtol=1e-4,
                                       atol=1e-7, msg=f"{index}/{name}")


def test_a_schedule_resumed_with_the_rows_set_up_first_decays_every_row_at_its_lr(stock_model) -> None:
    """Lightning sets the rows up (on_fit_start) and then loads the optimizer and scheduler states, which replaces
    the optimizer's parameter groups: the decay of the unused rows must follow the new groups' learning rate."""
    def schedule(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))

    whole, first = copy.deepcopy(stock_model), copy.deepcopy(stock_model)
    opt_whole, opt_first = _adamw(whole, lr=1e-1), _adamw(first, lr=1e-1)
    sched_whole, sched_first = schedule(opt_whole), schedule(opt_first)
    train_used_rows(first, opt_first, USED)
    for step in range(2):
        for model, optimizer, scheduler in ((whole, opt_whole, sched_whole), (first, opt_first, sched_first)):
            _step(model, optimizer, step)
            scheduler.step()
    saved = copy.deepcopy({"model": first.state_dict(), "optimizer": opt_first.state_dict(),
                           "scheduler": sched_first.state_dict()})
    resumed = copy.deepcopy(stock_model)
    resumed.load_state_dict(saved["model"])
    opt_resumed = _adamw(resumed, lr=1e-1)
    sched_resumed = schedule(opt_resumed)
    train_used_rows(resumed, opt_resumed, USED)  # on_fit_start, then the restore
    opt_resumed.load_state_dict(saved["optimizer"])
    sched_resumed.load_state_dict(saved["scheduler"])
    for step in range(2, 5):
        for model, optimizer, scheduler in ((whole, opt_whole, sched_whole), (resumed, opt_resumed, sched_resumed)):
            _step(model, optimizer, step)
            scheduler.step()
    torch.testing.assert_close(_words(resumed), _words(whole), rtol=1e-6, atol=0)


def test_a_write_to_the_embedding_between_steps_is_kept(stock_model) -> None:
    """A weight-averaging callback swaps other weights in for validation and back, or copies its average in: the
    embedding as written is what the next step updates, as it is for the whole matrix."""
    whole, rows = copy.deepcopy(stock_model), copy.deepcopy(stock_model)
    opt_whole, opt_rows = _adamw(whole, lr=1e-2), _adamw(rows, lr=1e-2)
    undo = train_used_rows(rows, opt_rows, USED)
    for step in range(2):
        _step(whole, opt_whole, step)
        _step(rows, opt_rows, step)
    for model in (whole, rows):
        with torch.no_grad():
            _words(model)[USED[:5]] = 0.5  # used rows
            _words(model)[[7, 20000]] = -0.5  # rows no batch holds
    for step in range(2, 4):
        _step(whole, opt_whole, step)
        _step(rows, opt_rows, step)
    undo()
    torch.testing.assert_close(_words(rows), _words(whole), rtol=1e-6, atol=0)
    with torch.no_grad():
        _words(rows).fill_(7.0)  # after the fit (an average copied in at train end): nothing undoes it
    undo()
    assert bool((_words(rows) == 7.0).all())


def test_refused_for_a_shared_embedding_or_max_norm(stock_model) -> None:
    from transformers import T5Config, T5ForSequenceClassification

    t5 = T5ForSequenceClassification(T5Config(vocab_size=2000, d_model=16, d_ff=32, num_layers=1, num_heads=2,
                                              d_kv=8, num_labels=2))
    assert t5.get_input_embeddings().weight is t5.transformer.encoder.embed_tokens.weight  # shared with the encoder
    assert train_used_rows(t5, torch.optim.AdamW(t5.parameters()), USED) is None
    renormed = copy.deepcopy(stock_model)
    renormed.bert.embeddings.word_embeddings.max_norm = 1.0  # rewritten in place by every forward
    assert train_used_rows(renormed, _adamw(renormed, lr=1e-3), USED) is None
