"""The HTML trust report: self-contained, escaped, every figure a real non-blank PNG, any set of sections."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sft.errors import ConfigError
from sft.report import registry
from sft.report.page import render, write

PNG_URI = re.compile(r'<img[^>]*\bsrc="data:image/png;base64,([A-Za-z0-9+/=]+)"')
LABELS = ["negative", "positive"]


# ---------------------------------------------------------------------------------------------- builders


def _bins(pairs: list[tuple[int, float | None, float | None]]) -> list[dict]:
    n = len(pairs)
    return [{"lower": i / n, "upper": (i + 1) / n, "count": count, "confidence": conf, "accuracy": acc}
            for i, (count, conf, acc) in enumerate(pairs)]


def _cal(ece: float, accuracy: float, bins: list[dict]) -> dict:
    return {"ece": ece, "mce": 2 * ece, "nll": 0.4 + ece, "brier": 0.2 + ece, "accuracy": accuracy,
            "bins": bins}


def performance() -> dict:
    return {"n": 40, "labels": LABELS, "accuracy": 0.775, "macro_f1": 0.7712,
            "per_class": [
                {"label": "negative", "precision": 0.8, "recall": 0.7, "f1": 0.7467, "support": 20},
                {"label": "positive", "precision": 0.7391, "recall": 0.85, "f1": 0.7907, "support": 20}],
            "confusion_matrix": [[14, 6], [3, 17]],
            "majority_baseline": {"label": "negative", "accuracy": 0.5, "macro_f1": 0.3333}}


def calibration(with_after: bool = True) -> dict:
    before = _cal(0.12, 0.775, _bins([(0, None, None), (0, None, None), (8, 0.55, 0.5), (12, 0.7, 0.58),
                                      (20, 0.93, 0.9)]))
    after = _cal(0.04, 0.775, _bins([(0, None, None), (3, 0.35, 0.33), (10, 0.52, 0.6), (12, 0.72, 0.75),
                                     (15, 0.9, 0.93)]))
    return {"n_bins": 5, "before": before, "after": after if with_after else None,
            "temperature": 1.7 if with_after else None,
            "fit": {"split": "val", "n": 30, "iterations": 12, "converged": True} if with_after else None}


TEXT_TOKENS = ["[CLS]", "<script>", "alert", "(", "1", ")", "</script>", "runn", "##ing", "is", "great",
               "[SEP]"]
# What the page must show for them: escaped, "##" continuation joined to "runn".
SHOWN = ["[CLS]", "&lt;script&gt;", "alert", "(", "1", ")", "&lt;/script&gt;", "runn", "ing", "is", "great",
         "[SEP]"]
TEXT_SCORES = [0.0, 0.9, -0.3, 0.0, 0.05, 0.0, -0.45, 0.2, 0.1, -0.9, 0.6, 0.0]


def text_attributions() -> dict:
    examples = [{"kind": kind, "index": i, "label": "positive", "pred": pred, "confidence": conf,
                 "tokens": TEXT_TOKENS, "scores": TEXT_SCORES, "delta": 0.0123}
                for i, (kind, pred, conf) in enumerate([("confident_correct", "positive", 0.97),
                                                         ("confident_wrong", "negative", 0.91),
                                                         ("least_confident", "positive", 0.51)])]
    return {"method": "integrated_gradients", "modality": "text", "seconds": 1.5, "examples": examples,
            "notes": ["scores <b>summed</b> over embeddings"]}


def small_png(seed: int = 0, size: int = 24) -> str:
    """A real PNG (random colours), base64, as the attribution section stores ``_image_png``."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def image_attributions(n: int = 2) -> dict:
    heat = np.outer(np.linspace(0, 1, 6), np.linspace(1, 0, 6))  # coarse like Grad-CAM: smaller than image
    examples = [{"kind": "confident_correct", "index": i, "label": "ants", "pred": ["ants", "bees"][i % 2],
                 "confidence": 0.8, "heatmap": heat.tolist(), "_image_png": small_png(i)} for i in range(n)]
    return {"method": "grad_cam", "modality": "image", "notes": [], "seconds": 0.4, "examples": examples}


def faithfulness() -> dict:
    fractions = [0.0, 0.25, 0.5, 0.75, 1.0]
    return {"method": "integrated_gradients", "unit": "token", "n": 24, "fractions": [0.1, 0.2, 0.5],
            "comprehensiveness": {"attribution": 0.31, "random": 0.12},
            "sufficiency": {"attribution": 0.08, "random": 0.22},
            "deletion": {"fractions": fractions, "attribution": [0.9, 0.5, 0.35, 0.3, 0.5],
                         "random": [0.9, 0.8, 0.7, 0.6, 0.5], "auc_attribution": 0.44, "auc_random": 0.7},
            "insertion": {"fractions": fractions, "attribution": [0.5, 0.8, 0.85, 0.9, 0.9],
                          "random": [0.5, 0.6, 0.7, 0.8, 0.9], "auc_attribution": 0.81, "auc_random": 0.7},
            "beats_random": True, "verdict": "Attributions beat random <on every score>"}


def robustness() -> dict:
    return {"seed": 0, "n": 40, "clean_accuracy": 0.775,
            "perturbations": [{"name": "token_dropout", "strength": 0.1, "accuracy": 0.725, "flip_rate": 0.1},
                              {"name": "typos", "strength": 0.05, "accuracy": 0.75, "flip_rate": 0.05}]}


def representation(with_pretrained: bool = True) -> dict:
    rng = np.random.default_rng(1)
    point_labels = [i % 2 for i in range(30)]
    shift = np.asarray(point_labels)[:, None] * 3.0

    def rep(points: np.ndarray, silhouette: float) -> dict:
        return {"points": points.tolist(), "explained_variance": [0.41, 0.2], "silhouette": silhouette,
                "knn_accuracy": 0.6 + silhouette / 2}

    return {"method": "pca", "labels": LABELS, "point_labels": point_labels,
            "pretrained": rep(rng.normal(size=(30, 2)), 0.02) if with_pretrained else None,
            "fine_tuned": rep(rng.normal(size=(30, 2)) + shift, 0.55),
            "note": "" if with_pretrained else "pretrained features unavailable: no pretrained builder"}


def stability(differs: bool = False) -> dict:
    accs = [0.78, 0.81, 0.5]
    runs = [{"name": f"{i}", "seed": i, "metrics": {"test/acc": acc, "test/f1": acc - 0.02},
             "degenerate": acc == 0.5} for i, acc in enumerate(accs)]
    return {"n_runs": 3, "runs": runs,
            "metrics": {"test/acc": {"mean": float(np.mean(accs)), "std": float(np.std(accs, ddof=1)),
                                     "min": min(accs), "max": max(accs)}},
            "majority_baseline": 0.5, "degenerate_runs": 1,
            "agreement": {"n_examples": 40, "all_agree": 0.6, "pairwise_mean": 0.73},
            "differs_only_in_seed": not differs,
            "differences": ["optimizer.lr: 1e-3 vs <2e-5>"] if differs else []}


def report(sections: dict, skipped: dict | None = None) -> dict:
    return {"run": {"dir": "/runs/<x>", "model": "tiny-bert", "data": "sst2 & co", "split": "test",
                    "created": "2025-01-01T00:00:00+0000"},
            "sections": sections, "timings": {name: 0.25 for name in sections}, "skipped": skipped or {}}


def full_text_report() -> dict:
    return report({"performance": performance(), "calibration": calibration(),
                   "attributions": text_attributions(), "faithfulness": faithfulness(),
                   "robustness": robustness(), "representation": representation()})


# Figures each section must embed (by the spec, not by the code): confusion matrix; one reliability figure
# (before/after side by side); deletion+insertion figure; one scatter figure (both panels); the runs plot;
# per image example the overlay figure plus the plain input image; none for text attributions and robustness.
FULL_TEXT_FIGURES = 1 + 1 + 0 + 1 + 0 + 1


# ---------------------------------------------------------------------------------------------- checks


def embedded_pngs(page: str) -> list[np.ndarray]:
    images = []
    for data in PNG_URI.findall(page):
        with Image.open(io.BytesIO(base64.b64decode(data, validate=True))) as image:
            assert image.format == "PNG"
            images.append(np.asarray(image.convert("RGB"), dtype=float))
    return images


def distinct_colours(pixels: np.ndarray) -> int:
    rgb = pixels.reshape(-1, 3).astype(np.int64)
    return len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]))


def assert_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", page, re.I)
    assert "<script" not in page.lower()  # no JavaScript at all, so no <script src> either
    assert "<link" not in page.lower() and "@import" not in page and "url(" not in page


def assert_figures(page: str, expected: int) -> list[np.ndarray]:
    assert page.count("<img") == expected
    images = embedded_pngs(page)
    assert len(images) == expected
    for image in images:
        assert image.std() > 0, "blank figure"
        assert image.shape[0] >= 16 and image.shape[1] >= 16
    return images


def section_html(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"section {name} missing"
    return match.group(1)


# ---------------------------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def full_page() -> str:
    """Every section of a text run plus a stability section, rendered once (figures take ~0.3 s each)."""
    rep = full_text_report()
    rep["sections"]["stability"] = stability(differs=True)
    return render(rep)


def test_full_report_is_self_contained_with_real_figures(full_page: str) -> None:
    page = full_page
    assert_self_contained(page)
    assert_figures(page, FULL_TEXT_FIGURES + 1)
    assert "Could not render" not in page
    for name in ["performance", "calibration", "attributions", "faithfulness", "robustness", "representation",
                 "stability"]:
        assert f'<section id="{name}"><h2>' in page
    assert len(page.encode()) < 600_000  # small figures: the page stays a few hundred KB at most
    # Key numbers reach the page: summary strip, tables, verdict in bold (escaped).
    strip = re.search(r'<div class="strip">(.*?)<nav>', page, re.S).group(1)
    assert "0.775" in strip and "0.500" in strip and "0.120 → 0.040" in strip and "beats random" in strip
    assert "<b>Attributions beat random &lt;on every score&gt;</b>" in page
    perf = section_html(page, "performance")
    assert "0.739" in perf and "0.850" in perf and ">20<" in perf  # precision, recall, support of "positive"
    robust = section_html(page, "robustness")
    assert "-0.050" in robust and "-0.025" in robust  # accuracy change vs clean 0.775: 0.725 and 0.75
    assert robust.index("clean") < robust.index("token_dropout")
    cal = section_html(page, "calibration")
    assert "-0.080" in cal  # ECE 0.12 -> 0.04
    assert "1.700" in cal and "fitted on val" in cal


def test_user_text_is_escaped_everywhere() -> None:
    rep = report({"performance": performance(), "attributions": text_attributions(),
                  "representation": representation()})
    rep["sections"]["performance"]["labels"] = ["<script>", "$\\notacommand$"]  # $..$: mathtext in mpl
    rep["sections"]["performance"]["per_class"][0]["label"] = "<script>"
    rep["sections"]["representation"]["labels"] = ["_hidden", "<i>b</i>"]  # "_": hidden in mpl legends
    rep["skipped"] = {"robustness": "needs <gpu> & time"}
    page = render(rep)
    assert "<script>" not in page and "</script>" not in page
    assert "&lt;script&gt;" in page and "&lt;/script&gt;" in page
    assert "needs &lt;gpu&gt; &amp; time" in page
    assert "/runs/&lt;x&gt;" in page and "sst2 &amp; co" in page
    assert "scores &lt;b&gt;summed&lt;/b&gt;" in page
    assert "Could not render" not in page  # the "$" label drew as plain text
    assert_figures(page, 2)


def _token_spans(card: str) -> list[tuple[str, str, str]]:
    """(text before the span, span attributes, span text) for every token span of one card."""
    return [(card[m.start() - 1], m.group(1), m.group(2))
            for m in re.finditer(r'<span class="tok[^"]*"([^>]*)>([^<]*)</span>', card)]


def test_text_tokens_coloured_by_signed_score_and_word_pieces_joined() -> None:
    page = render(report({"attributions": text_attributions()}))
    assert_figures(page, 0)
    cards = section_html(page, "attributions").split('<div class="card">')[1:]
    assert len(cards) == 3
    spans = _token_spans(cards[0])
    assert [text for _, _, text in spans] == SHOWN
    # "##ing" continues "runn": no space between the two spans; every other word is preceded by a space.
    joined = {text: before for before, _, text in spans}
    assert joined["ing"] == ">" and joined["is"] == " " and joined["great"] == " "
    colours = {}
    for _, attrs, text in spans:
        title = re.search(r'title="([^"]*)"', attrs).group(1)
        match = re.search(r"background:rgba\((\d+),(\d+),(\d+),([\d.]+)\)", attrs)
        colours[text] = (tuple(map(int, match.groups()[:3])), float(match.group(4))) if match else None
        assert "##ing" in title if text == "ing" else True
    score = dict(zip(SHOWN, TEXT_SCORES, strict=True))
    (red, alpha_script), (blue, alpha_is) = colours["&lt;script&gt;"], colours["is"]
    assert red[0] > red[2] and blue[2] > blue[0]  # positive red, negative blue
    assert colours["alert"][0][2] > colours["alert"][0][0]
    # Scaled per example by max |score| (0.9): the alpha ratio follows |score|.
    for text in ["alert", "great", "&lt;/script&gt;", "ing"]:
        assert colours[text][1] / alpha_script == pytest.approx(abs(score[text]) / 0.9, abs=0.01)
    assert alpha_is == pytest.approx(alpha_script, abs=1e-3)
    assert colours["[CLS]"] is None or colours["[CLS]"][1] == 0
    assert 'title="great: +0.6000"' in cards[0]
    assert "0.0123" in cards[0]  # delta
    assert "Most confident wrong" in cards[1] and "wrong" in cards[1]


def test_all_zero_scores_and_short_score_lists_render_uncoloured() -> None:
    attributions = text_attributions()
    first = attributions["examples"][0]
    attributions["examples"] = [dict(first, scores=[0.0] * len(TEXT_TOKENS), delta=None),
                                dict(first, scores=[0.5, -0.5])]
    page = render(report({"attributions": attributions}))
    cards = section_html(page, "attributions").split('<div class="card">')[1:]
    assert "background:rgba" not in cards[0] and "n/a" in cards[0]
    assert cards[1].count("background:rgba") == 2 and "no score" in cards[1]


def test_sentencepiece_word_starts_are_joined() -> None:
    attributions = text_attributions()
    tokens = ["<s>", "▁The", "▁mov", "ie", "</s>"]
    scores = [0.0, 0.1, 0.4, -0.2, 0.0]
    attributions["examples"] = [dict(attributions["examples"][0], tokens=tokens, scores=scores)]
    card = section_html(render(report({"attributions": attributions})), "attributions")
    spans = _token_spans(card)
    assert [text for _, _, text in spans] == ["&lt;s&gt;", "The", "mov", "ie", "&lt;/s&gt;"]
    before = {text: b for b, _, text in spans}
    assert before["ie"] == ">" and before["mov"] == " "  # "movie" is one word, "The movie" two


def test_many_classes() -> None:
    """25 classes: no per-cell numbers in the confusion matrix, a colour map instead of a scatter legend."""
    n = 25
    labels = [f"class_{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    matrix = (np.eye(n, dtype=int) * 8 + rng.integers(0, 3, size=(n, n))).tolist()
    perf = dict(performance(), labels=labels, confusion_matrix=matrix,
                per_class=[{"label": label, "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10}
                           for label in labels])
    rep = dict(representation(), labels=labels, point_labels=[i % n for i in range(30)])
    page = render(report({"performance": perf, "representation": rep}))
    assert "Could not render" not in page
    assert_figures(page, 2)
    assert page.count("class_24") == 1  # once in the per-class table; figure text is inside the PNGs


def test_image_attributions_overlay_and_plain_image() -> None:
    attributions = image_attributions(n=2)
    page = render(report({"attributions": attributions}))
    assert_self_contained(page)
    images = assert_figures(page, 2 * 2)
    # The plain input image is embedded unchanged, once per example.
    plain = [np.asarray(Image.open(io.BytesIO(base64.b64decode(e["_image_png"]))).convert("RGB"), dtype=float)
             for e in attributions["examples"]]
    for original in plain:
        assert sum(img.shape == original.shape and np.array_equal(img, original) for img in images) == 1
    # The overlay figures show a colourbar and the jet heatmap: far more colours than a greyscale plot.
    overlays = [img for img in images if img.shape[0] > 100]
    assert len(overlays) == 2
    for overlay in overlays:
        assert distinct_colours(overlay) > 200
    # Without the image (e.g. re-rendered from report.json) the heatmap alone still shows.
    del attributions["examples"][0]["_image_png"]
    assert_figures(render(report({"attributions": attributions})), 2 + 1)


def test_missing_sections_render_and_skipped_reasons_show() -> None:
    skipped = {"attributions": "attributions are not supported for SklearnHeadClassifier",
               "representation": "no features"}
    page = render(report({"performance": performance()}, skipped=skipped))
    assert_figures(page, 1)
    assert "not supported for SklearnHeadClassifier" in page and "no features" in page
    assert '<section id="calibration">' not in page and '<section id="attributions">' not in page
    # Nothing at all: still a valid page.
    empty = render({"sections": {}})
    assert empty.startswith("<!DOCTYPE html>") and empty.rstrip().endswith("</html>")
    assert_figures(empty, 0)
    # Calibration without "after" (no val split): one panel, no temperature, a note why.
    page = render(report({"calibration": calibration(with_after=False)}))
    assert_figures(page, 1)
    assert "No temperature scaling" in page and "after scaling" not in page


def test_representation_without_pretrained_shows_note() -> None:
    both = render(report({"representation": representation()}))
    single = render(report({"representation": representation(with_pretrained=False)}))
    [two_panels] = assert_figures(both, 1)
    [one_panel] = assert_figures(single, 1)
    assert two_panels.shape[1] > one_panel.shape[1] * 1.4  # side by side vs one panel
    assert "pretrained features unavailable" in single
    assert "silhouette" in both and "0.550" in both and "0.020" in both


def test_stability_only_report() -> None:
    page = render(report({"stability": stability()}))
    assert_self_contained(page)
    assert_figures(page, 1)
    body = section_html(page, "stability")
    mean, std = np.mean([0.78, 0.81, 0.5]), np.std([0.78, 0.81, 0.5], ddof=1)
    assert f"{mean:.3f} ± {std:.3f}" in body
    assert "0.600" in body and "0.730" in body  # agreement
    assert "degenerate" in body and "differ in more than the seed" not in body
    differing = render(report({"stability": stability(differs=True)}))
    assert "differ in more than the seed" in differing and "1e-3 vs &lt;2e-5&gt;" in differing


def test_a_malformed_section_does_not_lose_the_others() -> None:
    rep = report({"performance": performance(), "calibration": {"before": {"bins": [{"lower": "x"}]}}})
    rep["sections"]["extra"] = {"value": 1, "_asset": "zzz"}  # a section this renderer does not know
    page = render(rep)
    assert "Could not render this section" in section_html(page, "calibration")
    assert_figures(page, 1)  # performance still drawn
    extra = section_html(page, "extra")
    assert "&quot;value&quot;: 1" in extra and "zzz" not in extra


def test_rendering_leaves_matplotlib_state_alone() -> None:
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures, font_size = matplotlib.get_backend(), plt.get_fignums(), plt.rcParams["font.size"]
    render(report({"performance": performance(), "calibration": calibration()}))
    assert matplotlib.get_backend() == backend
    assert plt.get_fignums() == figures
    assert matplotlib.rcParams["font.size"] == font_size


# A new section in one module: its settings check, title, help and HTML (its ``section(ctx, settings)``, the
# work, is left out: neither the page nor the settings check calls it).
WORDCOUNT_MODULE = '''
from sft.errors import ConfigError
from sft.report.htmlparts import esc, how, table

TITLE = "Word <counts>"
HOW = """How often the {top} most common words occur
    in the test texts."""


def check_settings(settings):
    if settings.get("top", 10) < 1:
        raise ConfigError("report.wordcount.top must be at least 1")
    return settings


def render(data):
    rows = [[esc(word), str(count)] for word, count in data["counts"].items()]
    return how(HOW, top=str(data["top"])) + table(["word", "count"], rows)
'''


def section_ids(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)">', page)


def test_a_new_section_is_one_module_and_one_registry_line(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "wordcount_section.py").write_text(WORDCOUNT_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    wordcount = {"top": 2, "counts": {"<b>great</b>": 3, "film": 1}}
    rep = report({"stability": stability(), "wordcount": wordcount, "performance": performance()})
    # Not registered: shown as JSON under its bare name, after the known sections.
    unknown = render(rep)
    assert section_ids(unknown) == ["performance", "stability", "wordcount", "timings"]
    assert '<section id="wordcount"><h2>wordcount<' in unknown and "&quot;film&quot;: 1" in unknown
    with pytest.raises(ConfigError, match="unknown section"):
        registry.check_report_settings({"sections": ["wordcount"]})

    monkeypatch.setitem(registry.SECTIONS, "wordcount", "wordcount_section")  # the one registry line
    page = render(rep)
    # Registry order: the run's sections (performance ... representation, wordcount), then stability.
    assert section_ids(page) == ["performance", "wordcount", "stability", "timings"]
    body = section_html(page, "wordcount")
    assert body.startswith('<h2>Word &lt;counts&gt;<span class="timing">0.25 s</span></h2>')
    assert '<p class="how">How often the 2 most common words occur in the test texts.</p>' in body
    assert "<td class=\"l\">&lt;b&gt;great&lt;/b&gt;</td><td>3</td>" in body and "&quot;" not in body
    assert '<a href="#wordcount">Word &lt;counts&gt;</a>' in page
    skipped = render(report({"performance": performance()}, skipped={"wordcount": "no texts"}))
    assert '<span class="skip">Word &lt;counts&gt; (skipped)</span>' in skipped
    # The same line makes it a report.sections choice, its settings checked before any work.
    registry.check_report_settings({"sections": ["performance", "wordcount"], "wordcount": {"top": 3}})
    with pytest.raises(ConfigError, match="at least 1"):
        registry.check_report_settings({"sections": ["wordcount"], "wordcount": {"top": 0}})
    # Stability is shown by the page but made from a multirun folder: never a report.sections choice.
    with pytest.raises(ConfigError, match="unknown section"):
        registry.check_report_settings({"sections": ["stability"]})


def _strip_private(value):
    if isinstance(value, dict):
        return {k: _strip_private(v) for k, v in value.items() if not k.startswith("_")}
    if isinstance(value, list):
        return [_strip_private(v) for v in value]
    return value


def test_write_html_and_json(tmp_path: Path) -> None:
    rep = report({"attributions": image_attributions(n=1), "performance": performance()})
    expected = _strip_private(json.loads(json.dumps(rep)))
    # Values sections may leave as numpy / torch: written as plain numbers; NaN as null (strict JSON).
    rep["sections"]["performance"]["accuracy"] = np.float32(0.775)
    rep["sections"]["performance"]["n"] = np.int64(40)
    rep["sections"]["performance"]["macro_f1"] = torch.tensor(0.7712)
    rep["sections"]["performance"]["per_class"][0]["support"] = torch.tensor(20)
    rep["sections"]["performance"]["confusion_matrix"] = np.asarray([[14, 6], [3, 17]])
    rep["sections"]["performance"]["extra_nan"] = float("nan")
    rep["sections"]["performance"]["_thumb"] = "abc"
    html_path, json_path = write(rep, tmp_path / "out")
    assert html_path == tmp_path / "out" / "report.html" and json_path == tmp_path / "out" / "report.json"
    assert_figures(html_path.read_text(encoding="utf-8"), 1 + 2)
    text = json_path.read_text(encoding="utf-8")
    assert "NaN" not in text and "_image_png" not in text
    data = json.loads(text)

    def keys(value):
        if isinstance(value, dict):
            return [*value, *(k for v in value.values() for k in keys(v))]
        return [k for v in value for k in keys(v)] if isinstance(value, list) else []

    assert not [k for k in keys(data) if k.startswith("_")]
    perf = data["sections"]["performance"]
    assert perf.pop("extra_nan") is None
    assert perf["accuracy"] == pytest.approx(0.775) and perf["macro_f1"] == pytest.approx(0.7712)
    perf["accuracy"], perf["macro_f1"] = 0.775, 0.7712  # float32 rounding
    assert data == expected
    assert json.loads(json.dumps(data)) == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.html", "report.json"]
    with pytest.raises(TypeError, match="performance.bad"):
        write(dict(rep, sections={"performance": {"bad": object()}}), tmp_path / "bad")


CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed: apt install chromium")
def test_page_renders_in_a_browser(full_page: str, tmp_path: Path) -> None:
    html_path = tmp_path / "report.html"
    html_path.write_text(full_page, encoding="utf-8")
    shot = tmp_path / "shot.png"
    # A private profile: helpers running chromium at the same time must not share a profile lock.
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2400",
               html_path.resolve().as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert shot.exists(), f"no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2400, 1280)
    background = pixels[5, 5]
    differs = (np.abs(pixels.astype(int) - background.astype(int)).sum(axis=-1) > 30).mean()
    colours = distinct_colours(pixels)
    # Text alone covers a few % and uses grey anti-aliasing; figures and tables add area and colour.
    assert differs > 0.05, f"only {differs:.1%} of the screenshot differs from the background"
    assert colours > 500, f"only {colours} distinct colours: figures did not render"
    assert not math.isclose(float(pixels.std()), 0.0)
