"""Hyperparameter search (hparams_search presets, Optuna) and the checks every sweep passes before its first job."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import FAST
from tests.helpers import child_env, python
from tests.taskdata import write_glue

optuna = pytest.importorskip("optuna", reason="the sweep extra is not installed: pip install -e '.[sweep]'")


def _search_args(tiny_bert: str, sweep: Path) -> list[str]:
    # A grid over three learning rates, so the 3 trials are known: 1e12 makes the loss NaN (a failed trial).
    # n_trials=5 > the grid: the search stops at 3, also when resumed.
    return ["-m", "sft.run", "hparams_search=optuna_tpe", "hydra/sweeper/sampler=grid", "hydra.sweeper.params=null",
            "optimizer.lr=choice(1e-3,1e12,3e-3)", "hydra.sweeper.n_trials=5", f"model.name_or_path={tiny_bert}",
            f"hydra.sweep.dir={sweep}", *FAST, "trainer.max_epochs=20", "data.train_size=96",
            "callbacks.last_checkpoint.every_n_train_steps=1", "callbacks.early_stopping=null"]


def _study(sweep: Path):
    return optuna.load_study(study_name="sft", storage=f"sqlite:///{sweep}/optuna.db")


def _interrupted_job(sweep: Path) -> Path | None:
    """A job folder that has a checkpoint but no results yet: a trial in the middle of training. Not the NaN
    trial, which also ends without results: killing the sweep then can land while the sweeper writes the next
    trial's settings, a different interruption from the one tested here."""
    from omegaconf import OmegaConf

    for job in sweep.glob("[0-9]*"):
        if not (job / "checkpoints" / "last.ckpt").is_file() or (job / "metrics.json").is_file():
            continue
        try:
            diverging = OmegaConf.load(job / "config.yaml").optimizer.lr > 1  # the lr=1e12 grid point
        except Exception:  # config.yaml being written
            continue
        if not diverging:
            return job
    return None


@pytest.mark.subprocess
@pytest.mark.multirun
def test_optuna_search_interrupted_and_resumed_ends_with_its_trials_and_the_failed_one(tiny_bert, tmp_path):
    sweep = tmp_path / "search"
    args = _search_args(tiny_bert, sweep)
    env = child_env()
    with (tmp_path / "first.log").open("w") as log:
        proc = subprocess.Popen([sys.executable, *args], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 300
        interrupted = None
        while proc.poll() is None and time.monotonic() < deadline and interrupted is None:
            interrupted = _interrupted_job(sweep) if sweep.is_dir() else None
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)  # a crash: no clean-up, no chance to write anything
        proc.wait()
    assert interrupted is not None, (tmp_path / "first.log").read_text()[-3000:]
    running = [t for t in _study(sweep).trials if t.state == optuna.trial.TrialState.RUNNING]
    assert len(running) == 1  # the killed trial, left as RUNNING in the study

    out = python(args, cwd=tmp_path)  # the same command again: same sweep folder, same study
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    trials = _study(sweep).trials
    states = sorted(t.state.name for t in trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL"]  # 3 trials in all: the interrupted one kept its record
    failed = next(t for t in trials if t.state.name == "FAIL")
    assert failed.params["optimizer.lr"] == 1e12
    assert sorted(t.params["optimizer.lr"] for t in trials) == [1e-3, 3e-3, 1e12]  # the grid, each point once
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1", "2"]  # resuming neither renumbered nor overwrote job folders
    assert sorted(t.user_attrs["sft_job_num"] for t in trials) == [0, 1, 2]
    # The interrupted trial continued in its own folder from its last checkpoint.
    starts = json.loads((interrupted / "run.json").read_text())["starts"]
    resumed_trial = next(t for t in trials if str(t.user_attrs["sft_job_num"]) == interrupted.name)
    if resumed_trial.state.name == "COMPLETE":
        assert len(starts) == 2 and (interrupted / "metrics.json").is_file()
        assert json.loads((interrupted / "metrics.json").read_text())["fit/epochs"] == 20
    assert "Finishing interrupted trial" in out.stdout + out.stderr
    for trial in trials:  # each trial's value is its job's optimized metric
        if trial.state.name == "COMPLETE":
            job = sweep / str(trial.user_attrs["sft_job_num"])
            assert trial.value == pytest.approx(json.loads((job / "metrics.json").read_text())["val/acc"])
    with (sweep / "summary.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["ok", "ok", "unfinished"]  # the NaN trial started, never finished

    # Running it once more adds nothing: the study already has its 3 trials.
    again = python(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_study(sweep).trials) == 3
    assert "0 of 3 trials to go" in again.stdout + again.stderr


# ---------------------------------------------------------------------- checks before the first job
@pytest.fixture(scope="module")
def multirun_config():
    """The config a multirun's callbacks see (sweep overrides included), from the real Hydra config loader."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sft.config import CONFIG_DIR

    def _load(*overrides: str):
        loader = GlobalHydra.instance().config_loader()
        return loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        yield _load


def test_sweep_checks_compose_every_swept_value(multirun_config):
    from sft.sweep_checks import check_sweep

    cfg = multirun_config("optimizer.lr=1e-5,3e-5", "seed=0,1,2", "report=none", "hydra.sweep.dir=/tmp/x")
    assert check_sweep(cfg) == 5  # each value of each swept key once, not the 6 combinations
    cfg = multirun_config("hparams_search=optuna_tpe", "report=none", "hydra.sweep.dir=/tmp/x")
    assert check_sweep(cfg) == 6  # both ends of the preset's three intervals


@pytest.mark.parametrize(("overrides", "message"), [
    (["optimizer.lrr=1e-5,3e-5"], "Sweep over optimizer.lrr (command line): optimizer.lrr=1e-05 cannot be applied"),
    (["optimizer.lr=1e-5,-1"], "value -1: optimizer.lr=-1 must be a positive number"),
    (["model=bert,bertt"], "model=bertt cannot be applied"),
    (["seed=range(5,1)"], "seed=range(5,1) gives no values to try"),
    (["hparams_search=optuna_tpe", "hydra.sweeper.params=null", "optimizer.lr=interval(1e-3,1e-5)"],
     "optimizer.lr=interval(1e-3,1e-5) is not a valid range; interval(low, high) needs low < high"),
    (["hparams_search=optuna_tpe", "hydra.sweeper.params={optimizer.lr: 'tag(log, interval(0, 1e-3))'}"],
     "(hydra.sweeper.params): optimizer.lr=tag(log, interval(0, 1e-3)) is log-scaled, so its low end must be > 0"),
    (["hparams_search=optuna_tpe", "optimizer.weight_decay=interval(-1.0,0.1)"],
     "optimizer.weight_decay=-1.0 must be a number >= 0"),
    (["trainer=ddp", "trainer.strategy=ddp", "seed=1,2"], "starts its ranks by re-running the command line"),
    (["trainer=fsdp", "seed=1,2"], "trainer.strategy=lightning.pytorch.strategies.FSDPStrategy starts its ranks"),
    # The Optuna sweeper's own settings.
    (["hparams_search=optuna_tpe", "hydra/sweeper/sampler=grid"],
     "hydra/sweeper/sampler=grid needs finitely many values per key, and optimizer.lr=tag(log, interval(1e-5, 3e-4)) "
     "is a continuous interval"),
    (["hparams_search=optuna_tpe", "hydra.sweeper.sampler._target_=optuna.samplers.BestSampler"],
     "hydra.sweeper.sampler._target_=optuna.samplers.BestSampler: optuna.samplers has no class BestSampler; choose "
     "one of hydra/sweeper/sampler=tpe|random|grid|cmaes|gp"),
    (["hparams_search=optuna_tpe", "hydra.sweeper.direction=up"], "hydra.sweeper.direction='up': choose maximize or minimize"),
    (["hparams_search=optuna_tpe", "hydra.sweeper.pruner={_target_: optuna.pruners.EarlyPruner}"],
     "hydra.sweeper.pruner._target_=optuna.pruners.EarlyPruner: optuna.pruners has no class EarlyPruner; choose one "
     "of hydra/sweeper/pruner=median|successive_halving|hyperband (or null: no pruning)"),
    (["hparams_search=optuna_tpe", "hydra/sweeper/pruner=median", "+hydra.sweeper.pruner.n_startup=1"],
     "hydra.sweeper.pruner (optuna.pruners.MedianPruner): got an unexpected keyword argument 'n_startup'"),
    (["hparams_search=optuna_tpe", "hydra.sweeper.max_failure_rate=2"], "hydra.sweeper.max_failure_rate=2 must be a fraction"),
    (["hparams_search=optuna_tpe", "hydra.sweeper.params=null"], "The search has nothing to search"),
    # Settings every job would fail on, refused before the first starts.
    (["seed=1,2", "export.adapter=true"], "export.adapter=true saves a LoRA adapter, but freeze=none trains none"),
    (["seed=1,2", "+export.onnnx=true"], "export.onnnx is not an export setting"),
    (["seed=1,2", "export.onnx=1"], "export.onnx=1 must be true or false"),
])
def test_bad_sweeps_are_refused_with_the_key_and_the_fix(multirun_config, overrides, message):
    from sft.errors import ConfigError
    from sft.sweep_checks import check_sweep

    cfg = multirun_config(*overrides, "report=none", "hydra.sweep.dir=/tmp/x")
    with pytest.raises(ConfigError) as e:
        check_sweep(cfg)
    assert message in str(e.value)


@pytest.mark.subprocess
@pytest.mark.multirun
def test_bad_sweep_stops_before_any_job_starts(tmp_path):
    sweep = tmp_path / "sweep"
    out = python(["-m", "sft.run", "-m", "optimizer.lrr=1e-5,3e-5", "report=none", f"hydra.sweep.dir={sweep}"],
                 cwd=tmp_path)
    assert out.returncode == 2
    assert "error: Sweep over optimizer.lrr" in out.stderr and "+optimizer.lrr" in out.stderr
    assert not any(p.is_dir() for p in sweep.glob("*"))  # no job folder


# ---------------------------------------------------------------------- pruning
@pytest.mark.subprocess
@pytest.mark.multirun
def test_a_hopeless_trial_is_pruned_early_and_the_search_goes_on(tiny_bert, tmp_path):
    # A grid, so the trials are known, in the order the sampler's seed gives: lr 3e-3 (learns), 1e-7 (cannot: its
    # val/loss stays at the start), 1e-3. The median pruner compares each trial with the completed first one.
    data = write_glue(tmp_path / "sst2", "sst2", rows=40)  # the label is in the first word: learnable in steps
    sweep = tmp_path / "search"
    out = python(["-m", "sft.run", "hparams_search=optuna_tpe", "hydra/sweeper/sampler=grid",
                  "hydra.sweeper.sampler.seed=5", "hydra.sweeper.params=null", "optimizer.lr=choice(3e-3,1e-7,1e-3)",
                  "hydra/sweeper/pruner=median", "+hydra.sweeper.pruner.n_startup_trials=1",
                  f"model.name_or_path={tiny_bert}", "data=glue", "data.task=sst2", f"data.path={data}",
                  "optimized_metric=val/loss", f"hydra.sweep.dir={sweep}", *FAST, "trainer.max_epochs=4",
                  "trainer.precision=32-true", "data.batch_size=8", "callbacks.early_stopping=null", "export=false",
                  "test=false"], cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    trials = {t.params["optimizer.lr"]: t for t in _study(sweep).trials}
    full, pruned = trials[3e-3], trials[1e-7]
    assert (full.number, full.state.name, pruned.number, pruned.state.name) == (0, "COMPLETE", 1, "PRUNED")
    assert trials[1e-3].state.is_finished()  # the search went on after the pruned trial
    assert len(full.intermediate_values) == 4  # one report per validation, keyed by the optimizer step
    assert pruned.last_step < full.last_step  # stopped before max_epochs
    assert pruned.intermediate_values[pruned.last_step] > full.intermediate_values[pruned.last_step]
    assert pruned.value == pruned.intermediate_values[pruned.last_step]  # Optuna keeps the last reported value
    job = sweep / str(pruned.user_attrs["sft_job_num"])
    marker = json.loads((job / "pruned.json").read_text())
    assert marker["step"] == pruned.last_step and not (job / "metrics.json").exists()
    assert "Trial 1 was pruned" in out.stdout + out.stderr
    with (sweep / "summary.csv").open(newline="") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert (rows["0"]["status"], rows["1"]["status"]) == ("ok", "pruned")
    assert "optuna_trial" not in rows["1"]["overrides"]  # the sweeper's note to the job is not a setting


# ---------------------------------------------------------------------- the sweeper's parts
def _options(group: str) -> list[str]:
    from sft.config import CONFIG_DIR

    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("sampler", _options("hydra/sweeper/sampler"))
def test_every_sampler_option_builds_and_proposes_from_the_search_space_with_the_runs_seed(multirun_config, sampler):
    from sft.sweeper import build_sampler, check_settings

    cfg = multirun_config("hparams_search=optuna_tpe", f"hydra/sweeper/sampler={sampler}", "hydra.sweeper.params=null",
                          "optimizer.lr=choice(1e-5,3e-5,1e-4)", "data.batch_size=range(8,33,8)", "seed=7",
                          "report=none", "hydra.sweep.dir=/tmp/x")
    assert cfg.hydra.sweeper.sampler._target_.startswith("optuna.samplers.")
    space = check_settings(cfg.hydra.sweeper, list(cfg.hydra.overrides.task))

    def first_proposals():
        study = optuna.create_study(sampler=build_sampler(cfg.hydra.sweeper.sampler, space), direction="maximize")
        proposals = []
        for _ in range(3):
            trial = study.ask(space.distributions)
            proposals.append(trial.params)
            study.tell(trial, trial.params["data.batch_size"] * 1e3 * trial.params["optimizer.lr"])
        return proposals

    proposals = first_proposals()
    assert type(build_sampler(cfg.hydra.sweeper.sampler, space)).__name__ == cfg.hydra.sweeper.sampler._target_.split(".")[-1]
    for params in proposals:
        assert params["optimizer.lr"] in (1e-5, 3e-5, 1e-4) and params["data.batch_size"] in (8, 16, 24, 32)
    assert proposals == first_proposals()  # seeded from the run's seed: the same command proposes the same trials
    if sampler == "grid":
        assert len({tuple(p.values()) for p in proposals}) == 3 and space.grid_size() == 12  # no point twice


@pytest.mark.parametrize("pruner", [None, *_options("hydra/sweeper/pruner")])
def test_every_pruner_option_builds(multirun_config, pruner):
    from sft.sweeper import build_pruner

    cfg = multirun_config("hparams_search=optuna_tpe", *([f"hydra/sweeper/pruner={pruner}"] if pruner else []),
                          "report=none", "hydra.sweep.dir=/tmp/x")
    built = build_pruner(cfg.hydra.sweeper.pruner)
    expected = cfg.hydra.sweeper.pruner._target_.split(".")[-1] if pruner else "NopPruner"  # not Optuna's default
    assert type(built).__name__ == expected and isinstance(built, optuna.pruners.BasePruner)


def test_the_search_space_syntax_becomes_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    from sft.sweeper import search_space

    space = search_space(["optimizer.lr=tag(log, interval(1e-5, 1e-3))", "optimizer.weight_decay=interval(0, 0.1)",
                          "seed=range(1,5)", "data.batch_size=range(32,7,-8)", "x=range(0.5,2.0,0.5)",
                          "model=bert,minilm", "y=choice('a b',1,true)", "trainer.max_epochs=2", "+foo=1", "~logger",
                          "optimizer.weight_decay=interval(0.0, 0.01)",  # a key given again: the later wins
                          "trainer.accumulate_grad_batches=int(interval(1, 8))", "z=tag(log, int(interval(8, 256)))"])
    d = space.distributions
    assert d["trainer.accumulate_grad_batches"] == IntDistribution(1, 8)  # integers, not floats, for the trials
    assert d["z"] == IntDistribution(8, 256, log=True)
    assert d["optimizer.lr"] == FloatDistribution(1e-5, 1e-3, log=True)
    assert d["optimizer.weight_decay"] == FloatDistribution(0.0, 0.01)
    assert d["seed"] == IntDistribution(1, 4)  # Hydra's range excludes its stop
    assert d["data.batch_size"] == IntDistribution(8, 32, step=8)  # 32, 24, 16, 8
    assert d["x"] == FloatDistribution(0.5, 1.5, step=0.5)
    assert d["model"] == CategoricalDistribution(["bert", "minilm"])
    assert d["y"] == CategoricalDistribution(["a b", 1, True])
    assert space.fixed == ["trainer.max_epochs=2", "+foo=1", "~logger"]  # as written, to every trial
    grid = search_space(["data.batch_size=range(32,7,-8)", "x=range(0.5,2.0,0.5)", "model=bert,minilm"]).grid()
    assert grid == {"data.batch_size": [8, 16, 24, 32], "x": [0.5, 1.0, 1.5], "model": ["bert", "minilm"]}


def test_the_trial_note_to_the_job_reads_back_as_the_same_values():
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from sft.sweeper import override_value

    node = {"storage": "sqlite:////tmp/a b/it's/optuna.db", "study": "sft", "number": 3,
            "pruner": {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 1, "x": None, "y": 1e-05,
                       "z": True, "w": [1, "${x}"]}}
    parsed = OverridesParser.create().parse_overrides([f"+optuna_trial={override_value(node)}"])[0]
    assert OmegaConf.to_container(OmegaConf.create({"trial": parsed.value()}), resolve=True)["trial"] == node


def test_pruning_reports_only_fits_validations_not_the_final_evaluation(tiny_bert, tmp_path):
    """The final evaluation of the best checkpoint runs on the same trainer: the pruning callback must neither add
    it to the trial's curve nor prune a trial that has finished training (with a pruner that prunes any value)."""
    from functools import partial

    import lightning as L
    import torch

    from sft.data.text import sample
    from sft.models.classifier import TextClassifier
    from sft.sweep_pruning import OptunaPruning

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="sft", storage=storage, direction="maximize")
    trial = study.ask()
    always = optuna.pruners.ThresholdPruner(lower=2.0)  # val/acc is always below 2: prune at the first report
    pruning = OptunaPruning(storage, "sft", trial.number, always, monitor="val/acc")
    dm = sample(tokenizer=tiny_bert, batch_size=32, train_size=64)

    def model_and_trainer() -> tuple[TextClassifier, L.Trainer]:
        model = TextClassifier(tiny_bert, num_labels=2, id2label=dict(enumerate(dm.label_names)),
                               optimizer=partial(torch.optim.AdamW, lr=1e-3))
        return model, L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, callbacks=[pruning], num_sanity_val_steps=0)

    model, trainer = model_and_trainer()
    trainer.validate(model, datamodule=dm)  # outside fit: ignored
    assert optuna.load_study(study_name="sft", storage=storage).trials[0].intermediate_values == {}
    model, trainer = model_and_trainer()
    with pytest.raises(optuna.TrialPruned):  # inside fit: reported, and pruned
        trainer.fit(model, datamodule=dm)
    assert list(optuna.load_study(study_name="sft", storage=storage).trials[0].intermediate_values) == [2]


@pytest.mark.subprocess
@pytest.mark.multirun
def test_max_failure_rate_counts_the_whole_search_not_each_batch(tiny_bert, tmp_path):
    """One trial at a time (n_jobs=1) and max_failure_rate=0.5: a NaN trial after a completed one is 1 failure in 2
    (the search goes on); counted per batch it was 1 in 1 and stopped the search at once."""
    sweep = tmp_path / "sweep"
    args = ["-m", "sft.run", "hparams_search=optuna_tpe", "hydra/sweeper/sampler=grid", "hydra.sweeper.params=null",
            "optimizer.lr=choice(1e-3,1e12,3e-3)", "hydra.sweeper.max_failure_rate=0.5", "export=false",
            f"model.name_or_path={tiny_bert}", f"hydra.sweep.dir={sweep}", *FAST, "data.train_size=64",
            "trainer.max_epochs=2"]
    done = python(args, env=child_env())
    states = [t.state.name for t in sorted(_study(sweep).trials, key=lambda t: t.number)]
    if states[0] == "FAIL":  # the grid's seeded order put the NaN trial first: 1 in 1 stops either way
        assert done.returncode != 0 and states == ["FAIL"], states
    else:
        assert done.returncode == 0, done.stderr[-3000:]
        assert sorted(states) == ["COMPLETE", "COMPLETE", "FAIL"], states
