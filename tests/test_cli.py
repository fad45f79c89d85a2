"""The command line as a user runs it: subprocesses, other working directories, an installed copy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, python

pytestmark = pytest.mark.subprocess  # every test here starts `python -m sft...` (or `python -c`) children


def test_help_lists_groups_without_importing_torch(tmp_path):
    probe = ("import sys, runpy; sys.argv = ['sft.run', '--help'];\n"
             "try:\n    runpy.run_module('sft.run', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "heavy = [m for m in ('torch', 'lightning', 'transformers', 'torchmetrics') if m in sys.modules]\n"
             "print('HEAVY=' + ','.join(heavy))")
    out = python(["-c", probe], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "model: bert, distilbert, efficientnet_b0, efficientnet_lite0, minilm, resnet18" in out.stdout
    assert "HEAVY=\n" in out.stdout or out.stdout.rstrip().endswith("HEAVY="), out.stdout[-500:]


def test_cfg_job_shows_overrides_from_another_directory(tmp_path):
    out = python(["-m", "sft.run", "--cfg", "job", "model=bert", "data=sst2", "optimizer.lr=3e-5",
                  "trainer.max_epochs=3", "seed=1"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "name_or_path: bert-base-uncased" in out.stdout and "lr: 3.0e-05" in out.stdout
    assert "seed: 1" in out.stdout and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("override, choice", [("model=bertt", "minilm"), ("data=sst3", "sst2"),
                                              ("optimizer=adamx", "adamw"), ("scheduler=cosin", "cosine")])
def test_unknown_option_names_the_group_and_choices(tmp_path, override, choice):
    out = python(["-m", "sft.run", override], cwd=tmp_path)
    group, option = override.split("=")
    assert out.returncode != 0
    assert f"{group}/{option}" in out.stderr and "Available options" in out.stderr and choice in out.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("overrides, message", [
    ("optimizer.lr=-1e-5", "optimizer.lr=-1e-05 must be a positive number"),
    ("optimizer.lr=0", "optimizer.lr=0 must be a positive number"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0 must be an integer >= 1"),
    ("data=text_file", "data.train"),
    ("data=text_file data.train=/no/such/train.csv", "data.train: file '/no/such/train.csv' does not exist"),
    ("data=sst2 data.path=/no/such/glue", "data.path='/no/such/glue' is not a folder"),
    ("model.name_or_path=./no/such/model", "no such folder"),
    ("freeze.strategy=top3", "freeze.strategy='top3'"),
    ("resume=true", "no checkpoint to resume from"),
    # Hub paths, offline (HF_HUB_OFFLINE=1 from conftest): the error says what to do instead.
    ("data=sst2", "Set data.path to a local GLUE sst2 folder"),
    ("model=bert", "could not load it from a local folder or the HF hub"),
])
def test_bad_input_is_one_clear_line_not_a_traceback(tmp_path, overrides, message):
    out = python(["-m", "sft.run", *overrides.split(), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_run_and_predict_from_another_directory(tiny_bert, tmp_path):
    """A full run started outside the repo writes its run folder there; predict reads from stdin."""
    run_dir = tmp_path / "runs" / "one"
    out = python(["-m", "sft.run", f"model.name_or_path={tiny_bert}", f"hydra.run.dir={run_dir}",
                  "trainer.max_epochs=1", "data.train_size=64", "callbacks.progress_bar=null",
                  "++trainer.enable_progress_bar=false"], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["fit/epochs"] == 1 and saved["fit/global_step"] == 2  # 64 training rows, batches of 32
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()

    texts = "what a great film\nawful, just awful\nthe best meal of my life\n"
    pred = python(["-m", "sft.predict", str(run_dir), "--format", "jsonl"], cwd=tmp_path, stdin=texts)
    assert pred.returncode == 0, pred.stderr[-2000:]
    rows = [json.loads(line) for line in pred.stdout.splitlines()]
    assert [r["text"] for r in rows] == texts.splitlines()
    for r in rows:
        assert r["label"] in ("negative", "positive")
        assert r["prob_negative"] + r["prob_positive"] == pytest.approx(1.0, abs=1e-5)

    ev = python(["-m", "sft.eval", str(run_dir)], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    metrics = json.loads(ev.stdout)
    assert metrics["test/acc"] == pytest.approx(saved["test/acc"], abs=1e-6)
    assert metrics["test/samples"] == 120


@pytest.mark.slow
def test_installed_copy_finds_its_configs_and_sample(tmp_path):
    """`pip install .` ships conf/ and the sample inside the package; run it from an unrelated folder."""
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q",
                              "--target", str(target), str(REPO)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    assert (target / "sft" / "conf" / "config.yaml").is_file()
    assert (target / "sft" / "data" / "sample" / "train.jsonl").is_file()
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    probe = ("import sft.run, sft.data.sources as s; print(sft.run.CONFIG_DIR); "
             "print(len(s.PackagedSample().load().train))")
    out = python(["-c", probe], cwd=workdir, env={"PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    config_dir, n_train = out.stdout.split()
    assert Path(config_dir).is_relative_to(target) and n_train == "480"
    cfg = python(["-m", "sft.run", "--cfg", "job", "experiment=quickstart"], cwd=workdir,
                 env={"PYTHONPATH": str(target)})
    assert cfg.returncode == 0 and "_target_: sft.data.text.sample" in cfg.stdout, cfg.stderr
