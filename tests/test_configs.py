"""Every option of every config group composes and instantiates; presets run with fast_dev_run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sft.config import CONFIG_DIR
from sft.config import instantiate as build
from sft.pipeline.build import build_datamodule
from sft.pipeline.checks import check_config
from sft.pipeline.train import train
from tests.conftest import FAST
from tests.taskdata import write_conll, write_glue, write_goemotions

# Every config group in conf/ (a new group is picked up here, and must get its own instantiation test below).
GROUPS = sorted(p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir() and p.name != "hydra") + ["hydra/launcher"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


@pytest.fixture(scope="module")
def glue_dir(tmp_path_factory) -> Path:
    """A small folder in GLUE's SST-2 format (sentence<TAB>label), so data=sst2 runs offline."""
    folder = tmp_path_factory.mktemp("glue_sst2")
    good = ["a joy to watch", "warm and funny", "smart , moving film", "great performances", "i loved it"]
    bad = ["a dull mess", "tedious and long", "flat , lifeless film", "poor acting", "i hated it"]
    rows = [f"{t} \t1" for t in good] * 6 + [f"{t} \t0" for t in bad] * 6
    (folder / "train.tsv").write_text("sentence\tlabel\n" + "\n".join(rows) + "\n")
    (folder / "dev.tsv").write_text("sentence\tlabel\n" + "\n".join(rows[::3]) + "\n")
    return folder


def test_every_group_has_options_and_an_instantiation_test():
    tested = {name.removeprefix("test_").removesuffix("_options") for name in globals()
              if name.startswith("test_") and name.endswith("_options")}
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"
    untested = set(GROUPS) - tested - {"experiment", "debug", "hparams_search", "hydra/launcher"}  # composed below
    assert not untested, f"config groups without a test_<group>_options: {sorted(untested)}"


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(compose_cfg, group):
    for option in options(group):
        extra = {"text_file": ["data.train=x.csv"], "imagefolder": ["data.path=x"]}.get(option, [])
        if group == "experiment" and option in IMAGE_EXPERIMENTS:
            extra = []
        cfg = compose_cfg(f"{group}={option}", "output_dir=/tmp/x", *extra)
        if group != "hydra/launcher":  # the launcher lives in the hydra node, which compose leaves out
            check_config(cfg)  # every shipped option passes sft's own checks (found: freeze=sklearn left no freeze)


IMAGE_MODELS = {"efficientnet_lite0", "resnet18", "resnet50", "efficientnet_b0", "vit_b_16"}
IMAGE_DATA = {"imagefolder", "cifar10"}
IMAGE_EXPERIMENTS = {"lite0_hymenoptera"}


@pytest.mark.parametrize("option", options("model"))
def test_model_options(compose_cfg, tiny_bert, option):
    from sft.models.backbones import resolve_name_or_path
    from sft.models.classifier import TextClassifier
    from sft.models.vision import ImageClassifier, preprocess_for

    cfg = compose_cfg(f"model={option}", "output_dir=/tmp/x")
    if option in IMAGE_MODELS:
        preprocess = preprocess_for(cfg.model.arch, cfg.model.get("weights"))  # validates the weights enum
        assert preprocess["crop"] == 224
        # torchvision weights download when online; here build the same class with weights=none.
        offline = {} if option == "efficientnet_lite0" else {"weights": None}
        model = build(cfg.model, num_labels=3, **offline)
        assert isinstance(model, ImageClassifier)
        assert model.eval()(torch.zeros(1, 3, 224, 224)).shape == (1, 3)
        return
    resolved = resolve_name_or_path(cfg.model.name_or_path)
    if option == "minilm":
        assert Path(resolved, "config.json").is_file()  # packaged, offline
        model = build(cfg.model, num_labels=3, id2label={0: "a", 1: "b", 2: "c"})
        assert sum(p.numel() for p in model.parameters()) == pytest.approx(22.7e6, rel=0.02)
    else:
        assert resolved == cfg.model.name_or_path and "/" not in resolved  # a hub id, loaded when online
        model = build(cfg.model, name_or_path=tiny_bert, num_labels=3)  # same class, local weights
    assert isinstance(model, TextClassifier)
    assert model.model.config.num_labels == 3


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("imagefolder")
    for split in ("train", "val"):
        for label, colour in (("cats", (200, 30, 30)), ("dogs", (30, 30, 200))):
            (root / split / label).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), colour).save(root / split / label / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cifar_npz(tmp_path_factory) -> Path:
    import numpy as np

    path = tmp_path_factory.mktemp("cifar") / "pool.npz"
    rng = np.random.default_rng(0)
    np.savez(path, data=rng.integers(0, 256, size=(40, 3072), dtype=np.uint8), labels=np.arange(40) % 2,
             label_names=np.array(["cat", "dog"]))
    return path


@pytest.mark.parametrize("option", options("data"))
def test_data_options(compose_cfg, minilm_path, glue_dir, image_dir, cifar_npz, tmp_path, option):

    extra = {"sst2": [f"data.path={glue_dir}", "data.val_size=6"],
             "glue": [f"data.path={glue_dir}", "data.val_size=6"],
             "conll2003": [f"data.path={write_conll(tmp_path / 'conll')}"],
             "goemotions": [f"data.path={write_goemotions(tmp_path / 'go')}"],
             "text_file": [f"data.train={glue_dir / 'train.tsv'}", "data.text_column=sentence"],
             "imagefolder": [f"data.path={image_dir}", "data.batch_size=4"],
             "cifar10": [f"data.path={cifar_npz}", "data.batch_size=4", "data.image_size=32"]}.get(option, [])
    cfg = compose_cfg(f"data={option}", "output_dir=/tmp/x", *extra)
    if option in IMAGE_DATA:
        from sft.models.vision import preprocess_for

        dm = build_datamodule(cfg.data, preprocess=preprocess_for("efficientnet_lite0"), seed=0)
    else:
        dm = build_datamodule(cfg.data, tokenizer=minilm_path, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    expected = {"pixel_values", "labels"} if option in IMAGE_DATA else {"input_ids", "attention_mask", "labels"}
    assert set(batch) == expected
    assert all(len(dm.datasets[s]) > 0 for s in ("train", "val", "test"))
    names = {"conll2003": ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"], "goemotions": ["joy", "anger", "neutral"]}
    assert dm.label_names == names.get(option, dm.label_names) and len(dm.label_names) >= 2
    assert cfg.data.metric == {"conll2003": "val/f1", "goemotions": "val/macro_f1"}.get(option, "val/acc")
    rows = len(batch["labels"])
    assert batch["labels"].shape == {"conll2003": batch.get("input_ids", torch.empty(0)).shape,
                                     "goemotions": (rows, 3)}.get(option, (rows,))


@pytest.mark.parametrize("option", options("optimizer"))
def test_optimizer_options(compose_cfg, option):
    from sft.optim import build_optimizer

    cfg = compose_cfg(f"optimizer={option}", "output_dir=/tmp/x")
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = build_optimizer(build(cfg.optimizer), {"all": list(net.named_parameters())}, torch.device("cpu"))
    assert type(optimizer).__name__.lower() == option
    decays = sorted(g["weight_decay"] for g in optimizer.param_groups)
    if option == "adamw":
        assert decays == [0.0, 0.01]  # weight matrices decay; biases and LayerNorm do not
        assert optimizer.defaults.get("fused") is True
    assert all(g["lr"] == cfg.optimizer.lr for g in optimizer.param_groups)


@pytest.mark.parametrize("option", options("scheduler"))
def test_scheduler_options(compose_cfg, option):
    from sft.optim import build_scheduler

    cfg = compose_cfg(f"scheduler={option}", "output_dir=/tmp/x")
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    config = build_scheduler(build(cfg.scheduler), optimizer, total_steps=100, monitor="val/acc")
    assert config["interval"] == ("step" if option in ("constant", "linear", "cosine", "onecycle") else "epoch")
    if option == "plateau":
        assert config["monitor"] == "val/acc"
    if option in ("linear", "cosine"):
        sched = config["scheduler"]
        lrs = []
        for _ in range(100):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            sched.step()
        assert lrs[0] < lrs[10] == pytest.approx(0.1, rel=0.05)  # 10% warmup
        assert lrs[-1] < 0.01


@pytest.mark.parametrize("option", options("freeze"))
def test_freeze_options(compose_cfg, tiny_bert, option):
    from omegaconf import OmegaConf

    cfg = compose_cfg(f"freeze={option}", "output_dir=/tmp/x")
    model = build(cfg.model, _partial_=True)(name_or_path=tiny_bert, num_labels=2,
                                             freeze=OmegaConf.to_container(cfg.freeze, resolve=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if option == "none":
        assert trainable == {n for n, _ in model.named_parameters()}
        return
    if option == "lora":  # adapters on query / value of each layer and the head's trained copy; the rest frozen
        assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable), sorted(trainable)
        assert sum(".lora_A." in n for n in trainable) == 2 * len(model.model.bert.encoder.layer)
        assert cfg.optimizer.lr == 5e-4
        return
    # backbone: the classifier only; bottom_k (k=2 of the tiny BERT's 2 layers) and gradual (at its start):
    # pooler + classifier, the head group above the blocks.
    allowed = ("model.classifier.",) if option in ("backbone", "sklearn") else ("model.classifier.", "model.bert.pooler.")
    assert trainable and all(n.startswith(allowed) for n in trainable), sorted(trainable)
    model.train()
    layers = model.model.bert.encoder.layer
    assert not any(m.training for layer in layers for m in layer.modules()) and model.model.classifier.training  # frozen: no dropout


@pytest.mark.parametrize("option", options("probe"))
def test_probe_options(compose_cfg, option):
    from sft.pipeline.build import build_estimator
    from sft.probes.sklearn_head import check_estimator

    cfg = compose_cfg(f"probe={option}", "output_dir=/tmp/x")
    check_config(cfg)
    probe = cfg.probe
    if option == "none":
        assert not probe.get("cache_features") and probe.get("estimator") is None and cfg.freeze.strategy == "none"
        return
    assert probe.cache_features and cfg.freeze.strategy == "backbone"  # a probe freezes the whole backbone
    assert cfg.optimizer.lr == pytest.approx(1e-3)  # and trains its head at the probe learning rate
    if option == "sklearn":
        estimator = check_estimator(build_estimator(probe.estimator))
        assert type(estimator).__name__ == "LogisticRegression" and estimator.max_iter == 2000


@pytest.mark.parametrize("option", options("report"))
def test_report_options(compose_cfg, option):
    from sft.config import plain
    from sft.pipeline.build import report_settings
    from sft.report.registry import SECTIONS, check_report_settings

    cfg = compose_cfg(f"report={option}", "output_dir=/tmp/x")
    settings = report_settings(cfg)
    if option == "none":
        assert settings is None and "enabled" not in cfg.report  # report=none is the one way off
        return
    check_report_settings(settings)
    assert settings["sections"] and set(settings["sections"]) <= set(SECTIONS)
    assert report_settings(compose_cfg(f"report={option}", "test=false", "output_dir=/tmp/x")) is None  # no test split
    assert plain(cfg.report) == settings


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options(compose_cfg, option, tmp_path):
    cfg = compose_cfg(f"trainer={option}", "output_dir=/tmp/x")
    if option == "fsdp":  # the strategy (block classes as FSDP units) builds anywhere; the Trainer needs GPUs
        from lightning.pytorch.strategies import FSDPStrategy
        from transformers.models.bert.modeling_bert import BertLayer

        strategy = build(cfg.trainer.strategy)
        assert isinstance(strategy, FSDPStrategy) and cfg.trainer.use_distributed_sampler is False
        assert BertLayer in build(cfg.trainer.strategy.auto_wrap_policy)
    if option in ("gpu", "fsdp") and not torch.cuda.is_available():
        with pytest.raises(Exception, match="(?i)gpu|cuda|accelerator"):
            build(cfg.trainer, logger=False, precision="32-true", default_root_dir=str(tmp_path))
        return
    trainer = build(cfg.trainer, logger=False, precision=cfg.trainer.precision or "32-true",
                    default_root_dir=str(tmp_path))
    assert trainer.max_epochs == cfg.trainer.max_epochs


def _hydra_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=["output_dir=/tmp/x", *overrides], return_hydra_config=True)


@pytest.mark.parametrize("option", options("hydra/launcher"))
def test_launcher_presets_instantiate(option):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e '.[sweep]'")
    from hydra.utils import instantiate

    cfg = _hydra_config(f"hydra/launcher={option}")
    launcher = instantiate(cfg.hydra.launcher)  # the plugin's own launcher class, with the preset's settings
    assert type(launcher).__module__.startswith("hydra_plugins.")
    if option == "slurm":
        assert cfg.hydra.launcher.additional_parameters.signal.startswith("USR1@")  # Lightning's requeue signal
    if option == "gpu_pool":
        assert cfg.hydra.launcher.n_jobs == max(1, torch.cuda.device_count())


@pytest.mark.parametrize("option", options("hparams_search"))
def test_hparams_search_presets_take_the_direction_from_the_metric(option):
    pytest.importorskip("optuna", reason="pip install -e '.[sweep]'")
    from hydra.core.plugins import Plugins

    from sft.sweeper import PLUGIN_TARGET, register

    cfg = _hydra_config(f"hparams_search={option}")
    assert cfg.hydra.sweeper.direction == "maximize" and cfg.hydra.sweeper.storage.endswith("/optuna.db")
    register()  # what the sweep checks callback does before Hydra builds the sweeper: Hydra now knows the class
    assert cfg.hydra.sweeper._target_ == PLUGIN_TARGET and PLUGIN_TARGET in Plugins.instance().class_name_to_class
    assert cfg.callbacks.model_checkpoint.mode == "max"
    cfg = _hydra_config(f"hparams_search={option}", "optimized_metric=val/loss")
    assert cfg.hydra.sweeper.direction == "minimize" and cfg.callbacks.model_checkpoint.mode == "min"
    assert cfg.callbacks.early_stopping.mode == "min"


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options(compose_cfg, option, tmp_path):
    import importlib.util

    from sft.errors import ConfigError

    cfg = compose_cfg(f"logger={option}", f"output_dir={tmp_path}")
    package = {"wandb": "wandb", "mlflow": "mlflow", "tensorboard": "tensorboard"}.get(option)
    nodes = list(cfg.logger.values())
    if package and importlib.util.find_spec(package) is None:
        with pytest.raises(ConfigError, match="not installed") as error:
            build(nodes[0])
        # The logger's own package: PyPI's "sft" is an unrelated project, so no `sft[...]` extra.
        assert f"pip install {package}`" in str(error.value) and "sft[" not in str(error.value)
        return
    loggers = [build(node) for node in nodes]
    assert loggers and all(hasattr(lg, "log_metrics") for lg in loggers)


@pytest.mark.parametrize("option", options("callbacks"))
def test_callbacks_options(compose_cfg, option, tmp_path):
    from sft.config import instantiate_all as _instantiate_all

    cfg = compose_cfg(f"callbacks={option}", f"output_dir={tmp_path}")
    callbacks = _instantiate_all(cfg.callbacks)
    names = {type(c).__name__ for c in callbacks}
    if option == "default":
        assert {"ModelCheckpoint", "LastCheckpoint", "EarlyStopping", "LearningRateMonitor"} <= names
    else:
        assert not callbacks


@pytest.mark.parametrize("option", options("experiment"))
def test_experiment_presets_run_with_fast_dev_run(compose_cfg, tiny_bert, glue_dir, image_dir, tmp_path, option):
    if option in IMAGE_EXPERIMENTS:  # the packaged EfficientNet-Lite0 on a tiny image folder
        extra = [f"data.path={image_dir}", "data.batch_size=4"]
    elif option in ("quickstart", "compare_strategies"):  # the packaged sample data
        extra = [f"model.name_or_path={tiny_bert}"]
    elif option.startswith("glue_") and option != "glue_all":  # each GLUE task in its own file layout
        folder = write_glue(tmp_path / "data", option.removeprefix("glue_"))
        extra = [f"model.name_or_path={tiny_bert}", f"data.path={folder}", "data.val_size=6"]
    elif option in ("conll2003_ner", "goemotions"):
        writer = write_conll if option == "conll2003_ner" else write_goemotions
        extra = [f"model.name_or_path={tiny_bert}", f"data.path={writer(tmp_path / 'data')}"]
    else:
        extra = [f"model.name_or_path={tiny_bert}", f"data.path={glue_dir}", "data.train_size=null", "data.val_size=6"]
    cfg = compose_cfg(f"experiment={option}", "debug=fast_dev_run", f"output_dir={tmp_path}", *FAST, *extra)
    metrics = train(cfg)
    assert metrics["fit/global_step"] == 1 and cfg.optimized_metric.replace("val/", "test/") in metrics
    assert cfg.optimized_metric == cfg.data.metric


@pytest.mark.parametrize("option", ["fast_dev_run", "limit"])
def test_debug_presets_run(tiny_cfg, option):
    metrics = train(tiny_cfg(f"debug={option}", "export=false", "trainer.max_epochs=2"))
    expected_steps = {"fast_dev_run": 1, "limit": 2 * 5}[option]
    assert metrics["fit/global_step"] == expected_steps
