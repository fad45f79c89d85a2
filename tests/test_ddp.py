"""trainer=ddp on CPU: 2 gloo processes give the single-process results, one folder per job, also in a multirun."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from sft.pipeline.train import train
from tests.conftest import FAST
from tests.helpers import python

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without distributed")


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, minilm_path) -> str:
    """A tiny BERT without dropout: a step then depends only on the batch, not on each rank's dropout masks,
    so DDP over 2 processes must reproduce the single-process run."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert_no_dropout")
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


COMMON = ["trainer.max_epochs=3", "data.train_size=96", "data.batch_size=16", "optimizer.lr=3e-3",
          "trainer.precision=32", "report=none", "export=false"]


FREEZE_OPTIONS = {"none": [], "gradual": ["freeze.milestones=[1,2,3]"],
                  "lora": ["freeze.lora_dropout=0.0"]}  # no dropout: see no_dropout_bert


@pytest.mark.ddp
@pytest.mark.parametrize("freeze", list(FREEZE_OPTIONS))
def test_ddp_two_processes_match_the_single_process_run(compose_cfg, no_dropout_bert, tmp_path, freeze):
    def run(name: str, *extra: str) -> dict[str, float]:
        cfg = compose_cfg(f"model.name_or_path={no_dropout_bert}", f"output_dir={tmp_path / name}", *FAST, *COMMON,
                          f"freeze={freeze}", *FREEZE_OPTIONS[freeze], *extra)
        return train(cfg)

    single = run("single", "torch_threads=1")
    ddp = run("ddp", "trainer=ddp")
    # Same optimizer steps (data.batch_size is the global batch), same data, same updates.
    assert ddp["fit/global_step"] == single["fit/global_step"] == 3 * 6
    assert ddp["fit/epochs"] == single["fit/epochs"] == 3
    for key in ("val/loss", "test/loss"):  # every example evaluated once, losses averaged over the ranks
        assert ddp[key] == pytest.approx(single[key], abs=2e-4), key
    for key in ("val/acc", "test/acc", "test/f1"):
        assert ddp[key] == pytest.approx(single[key], abs=1 / 120 + 1e-6), key
    assert abs(ddp["val/loss"] - run("other_seed", "seed=7")["val/loss"]) > 10 * abs(ddp["val/loss"] - single["val/loss"])

    run_dir = tmp_path / "ddp"
    with (run_dir / "logs" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(bool(r.get("train/loss_epoch")) for r in rows) == 3  # the training curve survives validate / test
    assert sum(bool(r.get("test/acc")) for r in rows) == 1  # the best checkpoint tested once
    assert json.loads((run_dir / "run.json").read_text())["starts"][0]["accelerator"] == "CPUAccelerator"


@pytest.mark.ddp
@pytest.mark.subprocess
@pytest.mark.multirun
def test_ddp_inside_a_multirun_makes_one_folder_per_job(no_dropout_bert, tmp_path):
    sweep = tmp_path / "sweep"
    out = python(["-m", "sft.run", "-m", "trainer=ddp", "seed=1,2", f"model.name_or_path={no_dropout_bert}",
                  f"hydra.sweep.dir={sweep}", *FAST, "trainer.max_epochs=1", "data.train_size=64",
                  "torch_threads=null"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]  # no folder per rank
    assert not (tmp_path / "outputs").exists()  # and no second sweep started by a re-executed command line
    with (sweep / "summary.csv").open(newline="") as f:
        summary = {r["job"]: r for r in csv.DictReader(f)}
    for job, seed in (("0", 1), ("1", 2)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        # data.batch_size is the global batch: 64 rows in batches of 32, split over the 2 ranks, are 2 steps.
        assert metrics["fit/epochs"] == 1 and metrics["fit/global_step"] == 2
        assert summary[job]["status"] == "ok" and summary[job]["seed"] == str(seed)
        assert float(summary[job]["test/acc"]) == pytest.approx(metrics["test/acc"], abs=1e-9)  # the summary reads it
        assert f"seed: {seed}" in (sweep / job / "config.yaml").read_text()
    assert "terminate called" not in out.stderr  # gloo's exit abort (process group released in teardown)
    assert out.stderr.count("2 processes (DDPStrategy)") + out.stdout.count("2 processes (DDPStrategy)") == 2
    assert Path(sweep / "0" / "checkpoints" / "last.ckpt").is_file()


def test_each_rank_trains_on_its_slice_of_the_same_global_batches():
    from sft.data.batching import TrainBatchSampler

    lengths = [(i * 7) % 23 + 1 for i in range(50)]
    single = TrainBatchSampler(lengths, batch_size=8, seed=3)
    ranks = [TrainBatchSampler(lengths, batch_size=8, seed=3, rank=r, world_size=2) for r in range(2)]
    for sampler in (single, *ranks):
        sampler.set_epoch(1)
    whole, parts = list(single), [list(s) for s in ranks]
    assert len(parts[0]) == len(parts[1]) == len(whole) == len(single)  # every rank steps together
    for batch, a, b in zip(whole, *parts, strict=True):
        assert sorted(a + b) == sorted(batch) and not set(a) & set(b)
    ranks[0].resume_at(1, 2)  # a resumed rank skips the same global batches
    ranks[0].set_epoch(1)
    assert list(ranks[0]) == parts[0][2:]
    lone = list(TrainBatchSampler([1, 1, 1], batch_size=2, seed=0, group_by_length=False, rank=1, world_size=2))
    assert all(lone)  # a 1-example last batch still gives the second rank an example (no empty step)


def test_eval_batches_cover_the_split_once_outside_ddp():
    from sft.data.batching import eval_batches

    batches = eval_batches(10, 4)
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # no process group: the split in order


@pytest.mark.parametrize(("n", "batch_size", "world"), [(65, 32, 2), (120, 16, 2), (7, 3, 2), (1000, 64, 8)])
def test_eval_batches_give_every_rank_the_same_number_of_batches_and_each_example_once(n, batch_size, world):
    from sft.data.batching import eval_batches

    shares = [eval_batches(n, batch_size, rank, world) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1  # ranks step together (a forward can be a collective)
    assert all(0 < len(batch) <= batch_size for share in shares for batch in share)
    assert sorted(i for share in shares for batch in share for i in batch) == list(range(n))  # no repeats


def test_a_global_batch_smaller_than_the_world_is_refused(compose_cfg, no_dropout_bert, tmp_path):
    from sft.errors import ConfigError

    cfg = compose_cfg(f"model.name_or_path={no_dropout_bert}", f"output_dir={tmp_path / 'run'}", *FAST, *COMMON,
                      "trainer=ddp", "data.batch_size=1")
    with pytest.raises(ConfigError, match=r"data.batch_size=1 is the global batch, split across 2 processes"):
        train(cfg)


@pytest.mark.ddp
@pytest.mark.parametrize("data, key", [("conll2003", "test/f1"), ("goemotions", "test/macro_f1")])
def test_ddp_scores_entities_and_label_sets_over_every_ranks_examples(compose_cfg, no_dropout_bert, tmp_path, data,
                                                                       key):
    """Entity-level F1 and tuned-threshold macro F1 are not averages of per-rank scores: under DDP they equal the
    single-process evaluation of the same model on the whole test split."""
    from sft.eval import evaluate
    from tests.taskdata import write_conll, write_goemotions

    folder = (write_conll if data == "conll2003" else write_goemotions)(tmp_path / "data")
    cfg = compose_cfg(f"model.name_or_path={no_dropout_bert}", f"output_dir={tmp_path / 'run'}", *FAST,
                      "trainer=ddp", f"data={data}", f"data.path={folder}", "trainer.max_epochs=2",
                      "data.batch_size=8", "optimizer.lr=3e-3", "trainer.precision=32", "report=none")
    ddp = train(cfg)
    single = evaluate(tmp_path / "run", "test")
    assert ddp[key] == pytest.approx(single[key], abs=1e-6)
    assert ddp[key.replace("test/", "val/")] == pytest.approx(evaluate(tmp_path / "run", "val")[key.replace(
        "test/", "val/")], abs=1e-6)
