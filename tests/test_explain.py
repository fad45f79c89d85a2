"""The trust report end to end: written after test by a real run, rebuilt by ``sft.explain``, its temperature
used by ``sft.predict --calibrated``, and the stability report over a seed sweep."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import pytest

from tests.conftest import FAST

# Small but complete: every section runs, on few examples.
SMALL_REPORT = [
    "report=default",
    "report.attributions.examples=1",
    "report.attributions.n_steps=16",
    "report.faithfulness.examples=6",
    "report.faithfulness.random_repeats=2",
    "report.representation.max_points=60",
]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def text_run(compose_cfg, tiny_bert, tmp_path_factory) -> tuple[Path, dict[str, float]]:
    from sft.pipeline.train import train

    out = tmp_path_factory.mktemp("report_run") / "run"
    cfg = compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={out}", *FAST, "trainer.max_epochs=2",
                      "optimizer.lr=1e-3", *SMALL_REPORT)
    return out, train(cfg)


def test_the_run_writes_the_report_with_every_section(text_run):
    run_dir, metrics = text_run
    report = json.loads((run_dir / "report.json").read_text())
    expected = ["performance", "calibration", "attributions", "faithfulness", "robustness", "representation"]
    assert list(report["sections"]) == expected, report["skipped"]
    assert set(report["timings"]) == set(expected)  # every section timed
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4  # confusion matrix, reliability, curves, projections
    assert "_image_png" not in json.dumps(report)


def test_report_numbers_agree_with_the_runs_test_metrics(text_run):
    run_dir, metrics = text_run
    report = json.loads((run_dir / "report.json").read_text())
    perf = report["sections"]["performance"]
    assert perf["accuracy"] == pytest.approx(metrics["test/acc"], abs=1e-6)  # torchmetrics in the Trainer
    assert perf["macro_f1"] == pytest.approx(metrics["test/f1"], abs=1e-6)
    assert perf["n"] == 120 and sum(map(sum, perf["confusion_matrix"])) == 120
    rows = read_csv(run_dir / "predictions.csv")
    assert len(rows) == 120 and [int(r["index"]) for r in rows] == list(range(120))
    assert sum(r["label"] == r["pred"] for r in rows) / 120 == pytest.approx(metrics["test/acc"], abs=1e-6)
    for r in rows:  # confidence is the predicted class's probability, and the probabilities sum to one
        probs = {k[5:]: float(v) for k, v in r.items() if k.startswith("prob_")}
        assert max(probs, key=probs.get) == r["pred"]
        assert float(r["confidence"]) == pytest.approx(max(probs.values()), abs=1e-6)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    cal = report["sections"]["calibration"]
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/ece"] == pytest.approx(cal["before"]["ece"]) and saved["test/nll"] == pytest.approx(cal["before"]["nll"])
    assert saved["calibration/temperature"] == pytest.approx(cal["temperature"])
    # The report's NLL is the Trainer's test loss (mean cross-entropy of the same logits).
    assert cal["before"]["nll"] == pytest.approx(metrics["test/loss"], rel=1e-4)
    assert json.loads((run_dir / "export" / "calibration.json").read_text())["temperature"] == pytest.approx(cal["temperature"])


def test_explain_rebuilds_the_report_from_the_run_folder(text_run, tmp_path):
    from sft.explain import main

    run_dir, metrics = text_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = json.loads((copy / "report.json").read_text())
    assert main([str(copy), "report=fast"]) == 0
    after = json.loads((copy / "report.json").read_text())
    assert list(after["sections"]) == ["performance", "calibration"]
    assert after["sections"]["performance"] == before["sections"]["performance"]
    for key in ("ece", "nll", "brier"):
        assert after["sections"]["calibration"]["before"][key] == pytest.approx(before["sections"]["calibration"]["before"][key], abs=1e-6)
    assert after["sections"]["calibration"]["temperature"] == pytest.approx(before["sections"]["calibration"]["temperature"], rel=1e-3)
    # The pretrained model is rebuilt from the run's config for the representation comparison (it silently was
    # not when sft.explain passed the label count where the task goes).
    assert main([str(copy), "report.sections=[representation]", "report.representation.max_points=60"]) == 0
    representation = json.loads((copy / "report.json").read_text())["sections"]["representation"]
    assert representation["pretrained"] is not None, representation.get("note")


def test_explain_overrides_apply_on_top_of_the_runs_report_settings(text_run, tmp_path):
    """report.x=y overrides keep the run's other report settings, and faithfulness ranks with the attribution
    method the report configures (not a default)."""
    from sft.explain import main

    run_dir, _ = text_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    assert main([str(copy), "report.sections=[attributions,faithfulness]", "report.attributions.method=occlusion",
                 "report.faithfulness.examples=4"]) == 0
    sections = json.loads((copy / "report.json").read_text())["sections"]
    assert sections["attributions"]["method"] == "occlusion" and sections["faithfulness"]["method"] == "occlusion"
    assert len(sections["attributions"]["examples"]) <= 3  # attributions.examples=1 per kind, from the run
    assert sections["faithfulness"]["n"] == 4
    assert not (copy / "export" / "calibration.json").exists()  # no calibration section: no stale temperature


def test_a_failing_section_is_skipped_with_its_reason_and_the_rest_is_kept(text_run, monkeypatch):
    from sft.config import data_config
    from sft.inference import label_names, load_model
    from sft.pipeline.build import build_datamodule as build
    from sft.report.make import build_context, run_sections
    from sft.report.registry import SECTIONS

    run_dir, _ = text_run
    model, inputs = load_model(run_dir)
    datamodule = build(data_config(run_dir, []), **inputs, label_names=label_names(model))
    monkeypatch.setitem(SECTIONS, "broken", __name__)  # a plug-in section (this module's `section`)
    result = run_sections(build_context(model, datamodule), {"sections": ["performance", "broken", "calibration"]})
    assert list(result["sections"]) == ["performance", "calibration"]
    assert result["skipped"]["broken"] == "failed: RuntimeError: this section always fails"


def section(ctx, settings):  # the "broken" plug-in section above
    raise RuntimeError("this section always fails")


def test_predict_calibrated_divides_the_logits_by_the_fitted_temperature(text_run, tmp_path, capsys):
    from sft.predict import main

    run_dir, _ = text_run
    temperature = json.loads((run_dir / "export" / "calibration.json").read_text())["temperature"]
    texts = tmp_path / "texts.txt"
    texts.write_text("a warm , funny film\na dull , lifeless mess\nit was fine\n")
    assert main([str(run_dir), "--input", str(texts), "--output", str(tmp_path / "raw.csv")]) == 0
    assert main([str(run_dir), "--input", str(texts), "--output", str(tmp_path / "cal.csv"), "--calibrated"]) == 0
    raw, cal = read_csv(tmp_path / "raw.csv"), read_csv(tmp_path / "cal.csv")
    for r, c in zip(raw, cal, strict=True):
        names = [k for k in r if k.startswith("prob_")]
        # softmax(logits / T) == softmax(log p / T): the log-sum-exp shift cancels.
        scaled = [math.log(float(r[k])) / temperature for k in names]
        top = max(scaled)
        expected = [math.exp(s - top) / sum(math.exp(t - top) for t in scaled) for s in scaled]
        assert [float(c[k]) for k in names] == pytest.approx(expected, abs=1e-5)
        assert c["label"] == r["label"]  # a temperature never changes the argmax


def test_predict_calibrated_without_a_fitted_temperature_says_how_to_get_one(text_run, tmp_path, capsys):
    from sft.predict import main

    run_dir, _ = text_run
    export = tmp_path / "export"
    shutil.copytree(run_dir / "export", export)
    (export / "calibration.json").unlink()
    assert main([str(export), "--input", "-", "--calibrated"]) == 2
    err = capsys.readouterr().err
    assert "calibration.json" in err and "sft.explain" in err


def test_stability_over_a_seed_sweep(compose_cfg, tiny_bert, tmp_path):
    from sft.explain import main
    from sft.pipeline.train import train

    sweep = tmp_path / "sweep"
    results = {}
    for job, seed in enumerate((1, 2)):
        results[job] = train(compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={sweep / str(job)}", *FAST,
                                         "optimizer.lr=1e-3", f"seed={seed}", "report=fast"))
    assert main([str(sweep)]) == 0
    stab = json.loads((sweep / "report.json").read_text())["sections"]["stability"]
    assert stab["n_runs"] == 2 and stab["differs_only_in_seed"] is True
    accs = [results[j]["test/acc"] for j in (0, 1)]
    assert stab["metrics"]["test/acc"]["mean"] == pytest.approx(sum(accs) / 2, abs=1e-6)
    assert stab["metrics"]["test/acc"]["std"] == pytest.approx(abs(accs[0] - accs[1]) / math.sqrt(2), abs=1e-6)
    preds = [[r["pred"] for r in read_csv(sweep / str(j) / "predictions.csv")] for j in (0, 1)]
    agree = sum(a == b for a, b in zip(*preds, strict=True)) / len(preds[0])
    assert stab["agreement"]["all_agree"] == pytest.approx(agree) and stab["agreement"]["pairwise_mean"] == pytest.approx(agree)
    assert (sweep / "report.html").is_file()


@pytest.mark.parametrize("override, message", [
    ("report.sections=[performance,bogus]", r"report.sections.*bogus"),
    ("report.calibration.n_bins=0", r"report.calibration.n_bins"),
    ("report.attributions.method=saliency", r"report.attributions.method='saliency'.*integrated_gradients"),
    ("report.faithfulness.fractions=[0.1,1.5]", r"report.faithfulness.fractions"),
    ("report.robustness.token_dropout=-0.1", r"report.robustness.token_dropout"),
    ("report.representation.method=tsne", r"report.representation.method"),
    ("report.split=train", r"report.split"),
])
def test_bad_report_settings_fail_before_any_work(tiny_cfg, override, message):
    from sft.errors import ConfigError
    from sft.pipeline.train import train

    with pytest.raises(ConfigError, match=message):
        train(tiny_cfg("report=default", override))
    assert not (Path(tiny_cfg().output_dir) / "run.json").exists()


@pytest.mark.subprocess
def test_report_none_is_the_one_way_off_and_report_false_names_it(tmp_path, tiny_cfg):
    from sft.pipeline.train import train
    from tests.helpers import python

    out = python(["-m", "sft.run", "--cfg", "job", "report=false"], cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "report is a config group" in out.stderr and "report=none turns it off" in out.stderr
    metrics = train(tiny_cfg("report=none"))
    run_dir = Path(tiny_cfg().output_dir)
    assert not (run_dir / "report.html").exists() and "test/ece" not in metrics
    assert (run_dir / "metrics.json").is_file()


def test_image_run_report_has_grad_cam_heatmaps(compose_cfg, image_root, tmp_path):
    from sft.pipeline.train import train

    out = tmp_path / "run"
    train(compose_cfg("model=resnet18", "model.weights=none", "data=imagefolder", f"data.path={image_root}",
                      "data.batch_size=8", "data.image_size=32", f"output_dir={out}", *FAST, "optimizer.lr=1e-3",
                      "report=default", "report.sections=[performance,calibration,attributions,robustness]",
                      "report.attributions.examples=1"))
    report = json.loads((out / "report.json").read_text())
    attr = report["sections"]["attributions"]
    assert attr["modality"] == "image" and attr["method"] == "grad_cam" and attr["examples"]
    for example in attr["examples"]:
        heat = example["heatmap"]
        assert min(map(min, heat)) >= 0 and max(map(max, heat)) <= 1 + 1e-6
    names = [p["name"] for p in report["sections"]["robustness"]["perturbations"]]
    assert set(names) == {"noise", "blur"}
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 + len(attr["examples"])
    # This image folder has no test/ split, so test is val: a temperature fitted on val cannot be judged on
    # it, and no "calibrated" metric is recorded (here val is also fitted perfectly: no finite temperature).
    cal = report["sections"]["calibration"]
    assert cal["after"] is None or cal["after_in_sample"] is True
    assert "test/ece_calibrated" not in json.loads((out / "metrics.json").read_text())


def test_sklearn_head_run_reports_the_estimators_predictions(tiny_cfg):
    """probe=sklearn with a linear head: the report runs on the model carrying the estimator's head, so its
    accuracy is the estimator's (computed by sklearn in the run)."""
    from sft.pipeline.train import train

    metrics = train(tiny_cfg("probe=sklearn", "report=fast"))
    run_dir = Path(tiny_cfg().output_dir)
    perf = json.loads((run_dir / "report.json").read_text())["sections"]["performance"]
    assert perf["accuracy"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    calibration = json.loads((run_dir / "report.json").read_text())["sections"]["calibration"]
    assert json.loads((run_dir / "metrics.json").read_text())["test/ece"] == pytest.approx(calibration["before"]["ece"])
