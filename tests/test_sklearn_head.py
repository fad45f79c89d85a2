"""probe=sklearn: a scikit-learn classifier over cached frozen features, in a normal run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sft.errors import ConfigError
from tests.conftest import FAST, SST2_DIR, needs_sst2


def test_linear_head_is_exported_inside_the_model(tiny_cfg, tmp_path):
    """LogisticRegression on the head's input becomes the model's classifier: the export, evaluated by
    sft.eval through the whole network, scores exactly what the estimator scored."""
    from sklearn.metrics import accuracy_score

    from sft.eval import evaluate
    from sft.pipeline.train import train

    metrics = train(tiny_cfg("probe=sklearn"))
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == pytest.approx(metrics)
    head = json.loads((run / "export" / "sklearn_head.json").read_text())
    assert head["estimator"] == "LogisticRegression" and head["pooling"] == "head"
    again = evaluate(run / "export", "test")
    assert again["test/acc"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert again["test/loss"] == pytest.approx(metrics["test/loss"], rel=1e-3)
    # Independent: sklearn's own accuracy on the cached test features.
    import torch

    from sft.cache import cache_dir

    payloads = [torch.load(p, weights_only=True) for p in cache_dir("features").glob("*.pt")]
    coef, intercept = np.array(head["coef"]), np.array(head["intercept"])
    matches = [p for p in payloads if p["test"]["features"].shape[1] == coef.shape[1]]
    assert matches
    x, y = matches[-1]["test"]["features"].numpy(), matches[-1]["test"]["labels"].numpy()
    predicted = (x @ coef.T + intercept > 0).astype(int).ravel()  # binary logistic regression
    assert accuracy_score(y, predicted) == pytest.approx(metrics["test/acc"], abs=1e-6)


def test_other_estimators_and_bad_settings(tiny_cfg, tmp_path):
    import joblib

    from sft.pipeline.train import train

    metrics = train(tiny_cfg("probe=sklearn", "probe.pooling=mean", "~probe.estimator.max_iter",
                             "probe.estimator._target_=sklearn.neighbors.KNeighborsClassifier"))
    assert metrics["fit/global_step"] == 0 and "test/f1" in metrics  # fitted by sklearn, no gradient step
    knn = joblib.load(tmp_path / "run" / "export" / "sklearn_head.joblib")
    assert type(knn).__name__ == "KNeighborsClassifier" and knn.n_samples_fit_ == 480  # the sample's train split
    with pytest.raises(ConfigError, match="has no predict_proba"):
        train(tiny_cfg("probe=sklearn", "probe.estimator._target_=sklearn.svm.LinearSVC"))
    with pytest.raises(ConfigError, match="probe.pooling=mean only works with a scikit-learn head"):
        train(tiny_cfg("freeze=backbone", "+probe.pooling=mean"))


def test_mean_pooling_is_text_only(compose_cfg, image_root, tmp_path):
    from sft.pipeline.train import train

    cfg = compose_cfg("model=resnet18", "model.weights=none", "data=imagefolder", f"data.path={image_root}",
                      "data.image_size=32", "probe=sklearn", "probe.pooling=mean", f"output_dir={tmp_path}", *FAST)
    with pytest.raises(ConfigError, match="probe.pooling=mean is for text models"):
        train(cfg)


@needs_sst2()
@pytest.mark.slow
def test_minilm_mean_features_with_logistic_regression_on_sst2(compose_cfg, tmp_path):
    from sft.pipeline.train import train

    cfg = compose_cfg("experiment=minilm_sst2_offline", f"data.path={SST2_DIR}", "probe=sklearn",
                      "probe.pooling=mean", f"output_dir={tmp_path}", *FAST)
    metrics = train(cfg)
    assert metrics["test/acc"] > 0.75, metrics  # test = the full SST-2 dev set (872 rows)


def test_predict_on_a_mean_pooled_sklearn_run_says_why_not(tiny_cfg, tmp_path, capsys):
    from sft.pipeline.train import train
    from sft.predict import main as predict_main

    train(tiny_cfg("probe=sklearn", "probe.pooling=mean"))
    assert (tmp_path / "run" / "export" / "sklearn_head.json").is_file()
    assert predict_main([str(tmp_path / "run"), "--input", "-"]) == 2
    assert "probe=sklearn run" in capsys.readouterr().err


def test_the_earlier_freeze_sklearn_spelling_still_runs_and_its_moved_keys_name_the_new_ones(compose_cfg, tiny_cfg):
    from sft.pipeline.checks import check_config

    old, new = compose_cfg("freeze=sklearn", "output_dir=."), compose_cfg("probe=sklearn", "output_dir=.")
    assert old.probe == new.probe and old.freeze.strategy == new.freeze.strategy == "backbone"
    check_config(old)
    with pytest.raises(ConfigError, match="freeze.pooling moved to probe.pooling"):
        check_config(compose_cfg("freeze=sklearn", "freeze.pooling=mean", "output_dir=."))
    mixed = compose_cfg("freeze=sklearn", "probe.pooling=mean", "output_dir=.")  # old group, new key: fine
    check_config(mixed)
    assert mixed.probe.pooling == "mean"
