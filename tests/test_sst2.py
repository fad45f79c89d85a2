"""The packaged pretrained MiniLM fine-tuned on real SST-2 rows (../shared/data/sst2), evaluated on full dev."""

from __future__ import annotations

import json

import pytest

from sft.pipeline.train import train
from tests.conftest import FAST, SST2_DIR, needs_sst2


@pytest.mark.slow  # ~90 s on 2 cores; `make test-slow` and CI run it
@needs_sst2()
def test_minilm_on_real_sst2_beats_075_dev_accuracy(compose_cfg, tmp_path):
    cfg = compose_cfg("model=minilm", "data=sst2", f"data.path={SST2_DIR}", "data.train_size=3000",
                      "data.val_size=300", f"output_dir={tmp_path / 'run'}", *FAST, "optimizer.lr=5e-5",
                      "report=default", "report.faithfulness.examples=32")
    metrics = train(cfg)
    # GLUE dev (872 rows) is sft's test split for SST-2.
    assert metrics["test/acc"] > 0.75, metrics
    assert metrics["test/f1"] > 0.75
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test/acc"] == pytest.approx(metrics["test/acc"])
    assert (tmp_path / "run" / "export" / "model.safetensors").is_file()

    # The trust report on real data says what a fine-tuned sentiment model should show.
    sections = json.loads((tmp_path / "run" / "report.json").read_text())["sections"]
    perf = sections["performance"]
    assert perf["n"] == 872 and perf["accuracy"] > perf["majority_baseline"]["accuracy"] + 0.2
    faith = sections["faithfulness"]
    assert faith["beats_random"], faith["verdict"]  # IG finds the words the model uses
    rep = sections["representation"]
    for key in ("silhouette", "knn_accuracy"):  # fine-tuning pulled the two classes apart
        assert rep["fine_tuned"][key] > rep["pretrained"][key], rep
    cal = sections["calibration"]
    assert cal["temperature"] is not None and cal["fit"]["converged"]
    assert cal["after"]["nll"] <= cal["before"]["nll"] + 0.01  # fitted on val, checked on test
    dropout = next(p for p in sections["robustness"]["perturbations"] if p["name"] == "token_dropout")
    assert dropout["flip_rate"] < 0.2 and dropout["accuracy"] > 0.7
