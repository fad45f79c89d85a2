"""Real data: the packaged EfficientNet-Lite0 on the hymenoptera ants/bees folders (../shared/data),
as a linear probe and fully fine-tuned, through experiment=lite0_hymenoptera."""

from __future__ import annotations

import pytest

from tests.conftest import FAST, SHARED_DATA

HYMENOPTERA = SHARED_DATA / "hymenoptera"
needs_hymenoptera = pytest.mark.skipif(
    not (HYMENOPTERA / "train").is_dir(),
    reason=f"hymenoptera images not found at {HYMENOPTERA} (the ../shared/data folder is absent)")


def run(compose_cfg, tmp_path, *overrides: str) -> dict[str, float]:
    from sft.pipeline.train import train

    cfg = compose_cfg("experiment=lite0_hymenoptera", f"data.path={HYMENOPTERA}", f"output_dir={tmp_path / 'run'}",
                      *FAST, *overrides)
    return train(cfg)


@pytest.mark.slow  # ~100 s on 2 cores: keeps `make test` under its 15-minute budget
@needs_hymenoptera
def test_linear_probe_with_the_defaults_reaches_090(compose_cfg, tmp_path):
    """The user's command, nothing tuned: `model=efficientnet_lite0 data=imagefolder data.path=... freeze=backbone
    trainer.max_epochs=2` (the fine-tuning lr 5e-5 used to leave it at 0.536)."""
    from sft.pipeline.train import train

    cfg = compose_cfg("model=efficientnet_lite0", "data=imagefolder", f"data.path={HYMENOPTERA}", "freeze=backbone",
                      f"output_dir={tmp_path / 'run'}", *FAST, "trainer.max_epochs=2")
    metrics = train(cfg)
    assert metrics["val/acc"] >= 0.90, metrics


@needs_hymenoptera
@pytest.mark.slow
def test_full_fine_tune_reaches_090(compose_cfg, tmp_path):
    import json

    metrics = run(compose_cfg, tmp_path, "trainer.max_epochs=3", "report=default", "report.faithfulness.examples=8")
    assert metrics["fit/epochs"] == 3
    assert metrics["val/acc"] >= 0.90, metrics
    # The report on real images: Grad-CAM heat maps for the selected examples, and where they point matters.
    sections = json.loads((tmp_path / "run" / "report.json").read_text())["sections"]
    attr = sections["attributions"]
    assert attr["method"] == "grad_cam" and attr["examples"]
    faith = sections["faithfulness"]
    assert faith["unit"] == "patch" and faith["n"] == 8
    assert faith["comprehensiveness"]["attribution"] > faith["comprehensiveness"]["random"], faith["verdict"]
    assert {p["name"] for p in sections["robustness"]["perturbations"]} == {"noise", "blur"}
