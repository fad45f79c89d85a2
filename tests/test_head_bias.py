"""The output layer's starting bias (``model.head_bias``): the training targets' distribution under ``prior`` (the
default), the library's initialisation under ``library``; set once at the start of training, never over a trained
or resumed head."""

from __future__ import annotations

from functools import partial

import lightning as L
import numpy as np
import pytest
import torch

from sft.data.text import conll2003, glue, goemotions
from sft.errors import ConfigError
from sft.models.classifier import TextClassifier
from sft.tasks import make_task
from tests.taskdata import write_conll, write_goemotions, write_stsb


def test_prior_of_each_task_type_is_the_training_distribution():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 3, size=50)
    bias = make_task("single_label", ["a", "b", "c"]).head_bias(torch.tensor(classes))
    expected = (np.bincount(classes, minlength=3) + 1) / (50 + 3)
    assert np.allclose(torch.softmax(bias, 0).numpy(), expected, atol=1e-6)

    tags = torch.tensor([[0, 2, -100, 2], [2, 2, 1, -100]])  # -100: sub-tokens and padding carry no label
    bias = make_task("token", ["B-PER", "I-PER", "O"]).head_bias(tags)
    assert np.allclose(torch.softmax(bias, 0).numpy(), np.array([2, 2, 5]) / 9, atol=1e-6)

    sets = (rng.random((40, 4)) < [0.5, 0.1, 0.0, 0.9]).astype(np.float32)
    bias = make_task("multi_label", list("wxyz")).head_bias(torch.tensor(sets))
    assert np.allclose(torch.sigmoid(bias).numpy(), (sets.sum(0) + 1) / (40 + 2), atol=1e-6)
    assert torch.isfinite(bias).all()  # a label no training row has: rare, not -inf

    scores = rng.uniform(0, 5, size=30)
    bias = make_task("regression", ["score"]).head_bias(torch.tensor(scores, dtype=torch.float32))
    assert bias.shape == (1,) and abs(float(bias) - scores.mean()) < 1e-5


def fit(model: TextClassifier, datamodule, **trainer: object) -> L.Trainer:
    settings = {"max_epochs": 1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                "enable_model_summary": False, **trainer}
    run = L.Trainer(**settings)
    run.fit(model, datamodule=datamodule)
    return run


def datamodule_of(kind: str, tmp_path, tokenizer: str):
    loader = {"tokenizer": tokenizer, "max_length": 32, "batch_size": 8, "cache_dir": tmp_path / "cache"}
    if kind == "regression":
        return glue("stsb", str(write_stsb(tmp_path / "stsb")), val_size=8, **loader)
    if kind == "token":
        return conll2003(str(write_conll(tmp_path / "conll")), val_size=8, **loader)
    return goemotions(str(write_goemotions(tmp_path / "goemotions")), val_size=8, **loader)


@pytest.mark.parametrize("kind", ["regression", "token", "multi_label"])
def test_training_starts_from_the_prior_of_the_train_split(kind, tiny_bert, tmp_path):
    dm = datamodule_of(kind, tmp_path, tiny_bert)
    dm.prepare_data()
    model = TextClassifier(tiny_bert, task=dm.task, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    assert torch.count_nonzero(model.output_layer.bias) == 0  # transformers initialises it to zero
    fit(model, dm, max_steps=0)  # setup only: the bias as training would start from it
    train_targets = dm.datasets["train"].labels
    assert torch.allclose(model.output_layer.bias, dm.task.head_bias(train_targets))
    if kind == "regression":  # the untrained model predicts the training mean
        assert abs(float(model.output_layer.bias.detach()) - float(train_targets.mean())) < 1e-5
    assert model.output_layer is model.model.classifier


def test_library_keeps_the_initialisation_and_a_second_fit_keeps_the_trained_bias(tiny_bert, tmp_path):
    dm = datamodule_of("regression", tmp_path, tiny_bert)
    library = TextClassifier(tiny_bert, task=dm.task, head_bias="library", optimizer=partial(torch.optim.AdamW))
    fit(library, dm, max_steps=0)
    assert torch.count_nonzero(library.output_layer.bias) == 0

    model = TextClassifier(tiny_bert, task=dm.task, optimizer=partial(torch.optim.AdamW, lr=1e-2))
    fit(model, dm, max_epochs=2)
    trained = model.output_layer.bias.detach().clone()
    assert not torch.allclose(trained, dm.task.head_bias(dm.datasets["train"].labels))  # it learnt
    fit(model, dm, max_steps=0)  # e.g. training continued in a new Trainer: the head is not reset
    assert torch.equal(model.output_layer.bias, trained)


def test_unknown_head_bias_names_the_setting_and_the_choices(tiny_bert):
    with pytest.raises(ConfigError) as error:
        TextClassifier(tiny_bert, head_bias="zeros")
    message = str(error.value)
    assert "model.head_bias='zeros'" in message and "'prior'" in message and "'library'" in message


def test_head_bias_from_the_command_line_reaches_the_model(compose_cfg, tiny_bert, tmp_path):
    from sft.pipeline import build

    def model_of(*overrides: str):
        cfg = compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={tmp_path / 'run'}", *overrides)
        dm = build.build_datamodule(cfg.data, **build.data_inputs(cfg.model), seed=cfg.seed)
        dm.prepare_data()
        return build.build_model(cfg, dm)

    assert model_of().head_bias == "prior"  # the default
    assert model_of("+model.head_bias=library").head_bias == "library"
    with pytest.raises(ConfigError, match=r"model\.head_bias='zero'"):
        model_of("+model.head_bias=zero")
