"""Image classifier and DataModule with a real Lightning Trainer on images written to a temp folder."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from sft.data.image import ImageDataModule
from sft.data.image_sources import ImageFolderSource
from sft.errors import ConfigError
from sft.models.vision import ImageClassifier, build_image_model, preprocess_for

TINY = {"resize": 40, "crop": 32, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "interpolation": "bilinear"}


def fit(model: ImageClassifier, dm: ImageDataModule, tmp_path: Path, epochs: int = 2) -> dict[str, float]:
    trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, deterministic="warn")
    trainer.fit(model, datamodule=dm)
    return {k: float(v) for k, v in trainer.validate(model, datamodule=dm, verbose=False)[0].items()}


def test_resnet_learns_two_colours(image_root, tmp_path):
    # Random init: BatchNorm running statistics (momentum 0.1, from mean 0 / var 1) trail weights that AdamW moves
    # fast, and layer4 sees 1x1 maps at 32 px. After 18 steps (0.9**18: 15% of the start values left) eval-mode
    # accuracy hinged on rounding (oneDNN's AVX-512 vs AVX2 kernels): 0.5-1.0 across seeds although the trained
    # weights separate the classes in train-mode BN. 48 steps were not always enough either (seeds 0-5, 2026-11-30:
    # 0.5 on one seed with either head bias, 0.875 on another); 84 steps gave 1.0 on all six, with both.
    torch.manual_seed(0)
    dm = ImageDataModule(ImageFolderSource(str(image_root)), TINY, batch_size=8)
    dm.prepare_data()
    assert dm.label_names == ["blue", "red"]
    model = ImageClassifier("resnet18", num_labels=2, id2label=dm.id2label,
                            optimizer=partial(torch.optim.AdamW, lr=1e-3))
    metrics = fit(model, dm, tmp_path, epochs=14)
    assert metrics["val/acc"] >= 0.9 and metrics["val/loss"] < 0.3, metrics


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(image_root, tmp_path):
    dm = ImageDataModule(ImageFolderSource(str(image_root)), TINY, batch_size=8)
    model = ImageClassifier("resnet18", num_labels=2, freeze="backbone", optimizer=partial(torch.optim.SGD, lr=0.1))
    before = {k: v.clone() for k, v in model.model.state_dict().items() if not k.startswith("fc.")}
    fit(model, dm, tmp_path, epochs=1)
    after = model.model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), f"frozen tensor changed: {key}"  # BN running stats included
    assert not torch.equal(after["fc.weight"], model.model.fc.weight.detach() * 0)
    model.train()
    assert not model.model.layer1.training and model.model.fc.training


def test_weights_path_and_bad_names(tmp_path):
    reference = build_image_model("resnet18", num_classes=1000)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    loaded = build_image_model("resnet18", num_classes=3, weights_path=str(path))
    assert torch.equal(loaded.conv1.weight, reference.conv1.weight) and loaded.fc.out_features == 3
    with pytest.raises(ConfigError, match="not a torchvision model"):
        build_image_model("resnet19", num_classes=2)
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build_image_model("resnet18", num_classes=2, weights="IMAGENET1K_V9")
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        torch.save(build_image_model("resnet34", num_classes=1000).state_dict(), tmp_path / "r34.pth")
        build_image_model("resnet18", num_classes=2, weights_path=str(tmp_path / "r34.pth"))


def test_preprocessing_comes_from_the_weights():
    assert preprocess_for("resnet50", "IMAGENET1K_V2")["resize"] == 232  # torchvision's V2 recipe
    assert preprocess_for("resnet18", "IMAGENET1K_V1")["crop"] == 224
    assert preprocess_for("efficientnet_lite0")["mean"] == pytest.approx((0.5, 0.5, 0.5))


@pytest.mark.parametrize("arch, head", [("efficientnet_b0", "classifier"), ("vit_b_16", "heads")])
def test_heads_are_replaced_for_other_families(arch, head):
    model = build_image_model(arch, num_classes=5)
    assert getattr(model, head)  # the head child exists
    out = model.eval()(torch.zeros(1, 3, 224, 224))
    assert out.shape == (1, 5)


def test_train_runs_an_image_config_end_to_end_and_exports(compose_cfg, image_root, tmp_path):
    """model=resnet18 data=imagefolder through Hydra compose and sft.train; the export rebuilds with
    torchvision alone and predicts the same."""
    import json

    import torchvision

    from sft.eval import evaluate
    from sft.pipeline.train import train
    from tests.conftest import FAST

    out = tmp_path / "run"
    cfg = compose_cfg("model=resnet18", "model.weights=none", "data=imagefolder", f"data.path={image_root}",
                      "data.batch_size=8", f"output_dir={out}", *FAST, "trainer.max_epochs=2", "optimizer.lr=1e-3")
    torch.utils.deterministic.fill_uninitialized_memory = True  # torch's default
    metrics = train(cfg)
    assert metrics["fit/epochs"] == 2
    # Deterministic (the default trainer.deterministic=warn) without NaN-filling every new tensor (13% of a step).
    assert torch.are_deterministic_algorithms_enabled() and not torch.utils.deterministic.fill_uninitialized_memory
    again = evaluate(out, "test")  # the run folder, evaluated again, scores what the run reported
    assert again["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    info = json.loads((out / "export" / "model.json").read_text())
    assert info["label_names"] == ["blue", "red"] and info["arch"] == "resnet18"
    rebuilt = torchvision.models.get_model(info["arch"], num_classes=info["num_classes"])
    rebuilt.load_state_dict(torch.load(out / "export" / "model.pt", weights_only=True))
    x = torch.randn(2, 3, 224, 224)
    best = sorted((out / "checkpoints").glob("best-*.ckpt"))[0]
    state = torch.load(best, weights_only=True)["state_dict"]
    model = build_image_model("resnet18", num_classes=2)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
    assert torch.allclose(rebuilt.eval()(x), model.eval()(x), atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_lite0"])
def test_channels_last_is_the_same_model_in_the_faster_layout(arch):
    torch.manual_seed(0)
    fast = ImageClassifier(arch, num_labels=2).eval()
    plain = ImageClassifier(arch, num_labels=2, channels_last=False).eval()
    plain.load_state_dict(fast.state_dict())
    conv = next(m for m in fast.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(fast(x), plain(x), atol=1e-4)


@pytest.mark.parametrize("arch, expected", [("efficientnet_lite0", "32-true"), ("mobilenet_v3_small", "32-true"),
                                            ("resnet18", "bf16-mixed")])
def test_automatic_precision_on_a_bf16_cpu_follows_the_architecture(compose_cfg, image_root, tmp_path, arch, expected):
    """On an AMX / AVX512-BF16 CPU (detection forced on), depthwise CNNs train in fp32, where bf16 is not faster;
    an explicit trainer.precision still wins."""
    import json

    from sft.pipeline.train import train
    from tests.conftest import FAST, cpu_bf16

    def run(name: str, *extra: str) -> str:
        out = tmp_path / name
        model = ["model=efficientnet_lite0"] if arch == "efficientnet_lite0" else \
            ["model=resnet18", f"model.arch={arch}", "model.weights=none"]  # any torchvision architecture
        cfg = compose_cfg(*model, "data=imagefolder", f"data.path={image_root}", "data.batch_size=8", "data.image_size=32",
                          f"output_dir={out}", *FAST, "trainer.max_epochs=1", "export=false", "report=none", *extra)
        with cpu_bf16("bf16"):
            train(cfg)
        return json.loads((out / "run.json").read_text())["precision"]

    assert run("auto") == expected
    if expected == "32-true":
        assert run("explicit", "trainer.precision=bf16-mixed") == "bf16-mixed"


def test_text_model_on_image_data_is_a_clear_error(compose_cfg, image_root, tmp_path):
    from sft.pipeline.train import train

    cfg = compose_cfg("data=imagefolder", f"data.path={image_root}", f"output_dir={tmp_path}")
    with pytest.raises(ConfigError, match="takes text data"):
        train(cfg)


def test_efficientnet_lite0_export_loads_with_timm_alone(image_root, tmp_path):
    import json

    import timm

    dm = ImageDataModule(ImageFolderSource(str(image_root)), preprocess_for("efficientnet_lite0"))
    model = ImageClassifier("efficientnet_lite0", num_labels=2, id2label=dm.id2label).eval()
    out = model.export(tmp_path / "export", dm)
    info = json.loads((out / "model.json").read_text())
    assert info["library"] == "timm" and info["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    net = timm.create_model(info["arch"], num_classes=info["num_classes"])
    net.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    x = torch.randn(2, 3, 224, 224)
    assert torch.allclose(net.eval()(x), model(x), atol=1e-5)
    reloaded, preprocess = ImageClassifier.from_export(out)
    assert preprocess == info["preprocess"] and reloaded.id2label == {0: "blue", 1: "red"}
    assert torch.allclose(reloaded(x), model(x), atol=1e-5)
