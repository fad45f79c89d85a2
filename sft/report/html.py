"""``render(report) -> str``: the trust report as one self-contained HTML page; ``write`` also saves JSON.

The page needs nothing from the network: styles are inline, there is no JavaScript, and every figure is a
base64 PNG drawn with matplotlib's Agg renderer. Figures are built with ``matplotlib.figure.Figure`` (not
pyplot), so rendering never switches the process-wide backend (a notebook user's inline backend stays) and
no figure outlives the call. Tokens and labels come from user data: every text goes through ``html.escape``
and every figure text through :func:`_mpl_text` (a ``$`` would otherwise start matplotlib mathtext).

Any subset of sections renders; a section whose data cannot be drawn shows an error box instead of taking
the whole page down (the report is written after a training run that may have taken hours).
"""

from __future__ import annotations

import base64
import binascii
import html
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SECTION_ORDER = ["performance", "calibration", "attributions", "faithfulness", "robustness",
                 "representation", "stability"]
TITLES = {
    "performance": "Performance",
    "calibration": "Calibration",
    "attributions": "Attributions",
    "faithfulness": "Faithfulness of the attributions",
    "robustness": "Robustness",
    "representation": "Representation",
    "stability": "Stability across runs",
}
KIND_TITLES = {
    "confident_correct": "Most confident correct",
    "confident_wrong": "Most confident wrong",
    "least_confident": "Least confident",
}
DPI = 100
MISSING = "—"
# Token backgrounds: red = pushes toward the predicted class, blue = pushes away from it.
POSITIVE_RGB = (220, 38, 38)
NEGATIVE_RGB = (37, 99, 235)
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>", "<unk>", "<mask>")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")

CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#1f2933;
 background:#fff;margin:0;padding:0 24px 48px;line-height:1.45;font-size:15px}
main{max-width:1150px;margin:0 auto}
h1{font-size:26px;margin:24px 0 4px}h2{font-size:21px;margin:0 0 6px}h3{font-size:16px;margin:14px 0 6px}
section{border-top:2px solid #e4e7eb;padding:18px 0 8px;margin-top:18px}
.timing{font-size:12px;color:#7b8794;font-weight:normal;margin-left:8px}
.how{color:#52606d;font-size:14px;max-width:900px;margin:4px 0 12px}
.meta{color:#52606d;font-size:14px;margin:0 0 12px}
.meta code{background:#f5f7fa;padding:1px 4px;border-radius:3px}
.strip{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.stat{background:#f5f7fa;border:1px solid #e4e7eb;border-radius:6px;padding:8px 12px;min-width:110px}
.stat .k{font-size:12px;color:#616e7c}.stat .v{font-size:19px;font-weight:600}
table{border-collapse:collapse;margin:8px 0 12px;font-size:14px}
th,td{border:1px solid #d9e2ec;padding:4px 9px;text-align:right}
th{background:#f0f4f8}td.l,th.l{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:22px;align-items:flex-start}
img.fig{max-width:100%;height:auto;border:1px solid #eef2f6}
img.thumb{width:180px;height:auto;image-rendering:pixelated;border:1px solid #eef2f6}
.box{border-radius:6px;padding:10px 14px;margin:10px 0}
.warn{background:#fff8e1;border:1px solid #f0b429}.err{background:#ffeeee;border:1px solid #e12d39}
.note{background:#f0f4f8;border:1px solid #bcccdc}
.card{border:1px solid #d9e2ec;border-radius:8px;padding:10px 14px;margin:10px 0}
.card .head{font-size:14px;margin-bottom:6px}
.wrong{color:#cf1124;font-weight:600}.right{color:#0e7c3a;font-weight:600}
.tokens{line-height:2.1;font-size:15px}
.tok{padding:2px 0;border-radius:2px}.tok.special{color:#9aa5b1;font-size:12px}
.legend span{padding:1px 6px;border-radius:3px;margin-right:6px}
nav{font-size:14px;margin:6px 0}nav a{margin-right:12px;color:#2f6fbf}
nav .skip{color:#9aa5b1;margin-right:12px}
pre{background:#f5f7fa;padding:10px;overflow:auto;font-size:12px}
"""

# How to read each section (HTML; whitespace collapses). {placeholders} are filled with escaped values.
HOW = {
    "page": """How good the model is, how far its confidence can be trusted, what it looks at, how robust
        and how stable it is. Each section says how to read it; all numbers are on the split above.""",
    "performance": """Results on {n} examples. Precision: of the examples predicted as a class, the share
        that really are; recall: of the examples of a class, the share found; F1 combines both. The majority
        baseline always predicts the most common training class: a useful model beats it clearly, on macro
        F1 especially. In the confusion matrix rows are the true class, columns the prediction; numbers are
        counts, colour is the share of the row (the diagonal is correct).""",
    "calibration": """Calibration asks whether confidence means what it says: of the predictions made with
        80 % confidence, about 80 % should be right. ECE is the average gap between confidence and accuracy
        over {n_bins} confidence bins (lower is better, 0 is perfect); MCE the worst bin. NLL and Brier score
        the probabilities themselves (lower is better). Temperature scaling divides the logits by one number
        fitted on the validation split: it changes confidence, never the predicted class. In the reliability
        diagram bars on the diagonal are perfectly calibrated, bars below it mean over-confidence; the small
        histogram shows how many predictions fall in each bin.""",
    "attributions_text": """Which words drove each prediction. Each token's colour shows its signed
        contribution to the predicted class: red pushes toward the prediction, blue against it; the stronger
        the colour, the larger the contribution, relative to the strongest token of the same example (hover a
        token for its value). Word pieces are joined back into words. For integrated gradients, delta is the
        approximation error: small compared with the scores means they add up as they should. {legend}""",
    "attributions_image": """Where the model looked. The heatmap over each image shows how much each region
        pushed the model toward its prediction (bright = strongly); the plain image is beside it. A model
        that is right for the right reasons lights up the object, not the background, borders or
        watermarks.""",
    "faithfulness": """Do the attributions point at what the model really uses? Each test example is changed
        by removing (deletion) or keeping only (insertion) the {unit}s ranked most important, and the model's
        score for its original prediction is measured again; the same with {unit}s picked at random. Faithful
        attributions make the score fall faster than random under deletion (lower area under the curve) and
        rise faster under insertion (higher area). Comprehensiveness is the score drop when the top {unit}s
        are removed (higher is better); sufficiency the drop when only they are kept (lower is better),
        averaged over the fractions {fractions}.""",
    "robustness": """How much small, meaning-preserving changes to the input matter, on {n} examples (seed
        {seed}). Flip rate is the share of predictions that change under the perturbation; a robust model
        keeps both its accuracy and its predictions.""",
    "representation": """The model's features of the test examples, projected to 2-D ({method}), one dot per
        example coloured by its true label. Fine-tuning should pull the classes apart. Silhouette (-1 to 1)
        measures how well separated the classes are and kNN accuracy how well neighbours agree on the label,
        both in the full feature space, not only in this picture.""",
    "stability": """The same training repeated over {n_runs} runs. The spread (std, min to max) says how much
        a single run's number can be trusted; differences between models smaller than it are noise.
        Agreement counts how often the runs predict the same class for the same example. A degenerate run
        collapsed, e.g. to always predicting one class.""",
}


# ---------------------------------------------------------------------------------------------- public


def render(report: dict[str, Any]) -> str:
    """The whole report as one HTML page (text). Renders whatever sections ``report["sections"]`` holds."""
    import matplotlib

    report = _jsonable(report, drop_private=False)
    sections = report.get("sections") or {}
    timings = report.get("timings") or {}
    skipped = report.get("skipped") or {}
    names = [n for n in SECTION_ORDER if n in sections] + [n for n in sections if n not in SECTION_ORDER]

    # Fixed, small figure style: the page looks the same whatever the user's matplotlibrc says.
    style = {"font.size": 8, "axes.titlesize": 9, "axes.labelsize": 8, "legend.fontsize": 7,
             "xtick.labelsize": 7, "ytick.labelsize": 7, "text.usetex": False, "figure.dpi": DPI,
             "savefig.dpi": DPI, "axes.spines.top": False, "axes.spines.right": False}
    with matplotlib.rc_context(style):
        bodies = [_render_section(name, sections[name], timings.get(name)) for name in names]

    run = report.get("run") or {}
    title = f"Trust report: {run.get('model') or run.get('dir') or 'run'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>",
        _header(report, names),
        _skipped_box(skipped),
        *bodies,
        _timings_table(timings, skipped),
        "</main></body></html>",
    ]
    return "\n".join(p for p in parts if p)


def write(report: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.json`` into ``folder``; returns their paths.

    report.json is the report without rendering assets (keys starting with ``_``, at any depth), with numpy
    and torch values as plain numbers and non-finite floats as null (strict JSON)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = _jsonable(report, drop_private=True)
    json_text = json.dumps(data, indent=2, allow_nan=False)
    html_text = render(report)
    html_path, json_path = folder / "report.html", folder / "report.json"
    _write_text(json_path, json_text + "\n")
    _write_text(html_path, html_text)
    return html_path, json_path


# ---------------------------------------------------------------------------------------------- values


def _jsonable(value: Any, drop_private: bool, path: str = "report") -> Any:
    """Plain JSON values: numpy/torch scalars and arrays -> numbers/lists, NaN/inf -> None, tuple -> list."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{path}: key {key!r} is a {type(key).__name__}; report keys must be strings")
            if drop_private and key.startswith("_"):
                continue
            out[key] = _jsonable(item, drop_private, f"{path}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, drop_private, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    tolist = getattr(value, "tolist", None)  # numpy scalars/arrays and torch tensors, importing neither
    if callable(tolist):
        plain = tolist()
        if not isinstance(plain, type(value)):
            return _jsonable(plain, drop_private, path)
    raise TypeError(f"{path} is a {type(value).__name__}, which is not JSON-able; "
                    "sections must return plain numbers, strings, lists and dicts")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _sig(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else _num(value)


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _esc(value)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _get(data: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def _floats(values: Any) -> list[float]:
    return [math.nan if v is None else float(v) for v in (values or [])]


def _mpl_text(value: Any) -> str:
    """User text for matplotlib: ``$`` escaped so it is never read as mathtext."""
    return str(value).replace("$", r"\$")


# ---------------------------------------------------------------------------------------------- html pieces


def _table(header: list[str], rows: list[list[str]], left_columns: int = 1) -> str:
    """A table; header cells are escaped here, row cells must already be HTML (use _esc / _num)."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag} class="l">{v}</{tag}>' if i < left_columns else f"<{tag}>{v}</{tag}>"
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    head = cells("th", [_esc(h) for h in header])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _how(key: str, **values: str) -> str:
    return f'<p class="how">{" ".join(HOW[key].split()).format(**values)}</p>'


def _box(kind: str, inner: str) -> str:
    return f'<div class="box {kind}">{inner}</div>'


def _img(uri: str, alt: str, css_class: str = "fig") -> str:
    return f'<img class="{css_class}" src="{uri}" alt="{_esc(alt)}">'


def _row(*columns: str) -> str:
    return '<div class="row">' + "".join(f"<div>{c}</div>" for c in columns) + "</div>"


def _header(report: dict[str, Any], names: list[str]) -> str:
    run = report.get("run") or {}
    fields = [("dir", "run"), ("model", "model"), ("data", "data"), ("split", "split"), ("created", "date")]
    meta = " · ".join(f"{label}: <code>{_esc(run.get(key) or MISSING)}</code>" for key, label in fields)
    nav = [f'<a href="#{_esc(n)}">{_esc(TITLES.get(n, n))}</a>' for n in names]
    nav += [f'<span class="skip">{_esc(TITLES.get(n, n))} (skipped)</span>'
            for n in report.get("skipped") or {}]
    return (f'<h1>Trust report</h1><p class="meta">{meta}</p>' + _how("page")
            + _summary_strip(report.get("sections") or {})
            + (f"<nav>{''.join(nav)}</nav>" if nav else ""))


def _summary_strip(sections: dict[str, Any]) -> str:
    stats: list[tuple[str, str]] = []
    perf = sections.get("performance")
    if isinstance(perf, dict):
        stats.append(("accuracy", _num(perf.get("accuracy"))))
        stats.append(("macro F1", _num(perf.get("macro_f1"))))
        stats.append(("majority baseline acc.", _num(_get(perf, "majority_baseline", "accuracy"))))
    cal = sections.get("calibration")
    if isinstance(cal, dict):
        before, after = _num(_get(cal, "before", "ece")), _num(_get(cal, "after", "ece"))
        stats.append(("ECE before → after", f"{before} → {after}" if cal.get("after") else before))
        stats.append(("temperature", _num(cal.get("temperature"), 2)))
    faith = sections.get("faithfulness")
    if isinstance(faith, dict):
        beats = faith.get("beats_random")
        verdict = MISSING if beats is None else "beats random" if beats else "does not beat random"
        stats.append(("attributions", verdict))
    stab = sections.get("stability")
    if isinstance(stab, dict):
        stats.append(("runs", _num(stab.get("n_runs"))))
        acc = _get(stab, "metrics", "test/acc")
        if isinstance(acc, dict):
            stats.append(("test/acc mean ± std", f"{_num(acc.get('mean'))} ± {_num(acc.get('std'))}"))
        stats.append(("degenerate runs", _num(stab.get("degenerate_runs"))))
    if not stats:
        return ""
    cells = "".join(f'<div class="stat"><div class="k">{_esc(k)}</div><div class="v">{v}</div></div>'
                    for k, v in stats)
    return f'<div class="strip">{cells}</div>'


def _skipped_box(skipped: dict[str, Any]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li><b>{_esc(name)}</b>: {_esc(reason)}</li>" for name, reason in skipped.items())
    return _box("note", f"<b>Skipped sections</b><ul>{items}</ul>")


def _timings_table(timings: dict[str, Any], skipped: dict[str, Any]) -> str:
    if not timings:
        return ""
    rows = [[_esc(name) + (" (skipped)" if name in skipped else ""), _num(seconds, 2)]
            for name, seconds in timings.items()]
    total = sum(s for s in timings.values() if _is_num(s))
    rows.append(["<b>total</b>", f"<b>{total:.2f}</b>"])
    table = _table(["section", "seconds"], rows)
    return f'<section id="timings"><h2>Time per section</h2>{table}</section>'


def _render_section(name: str, data: Any, seconds: Any) -> str:
    timing = f'<span class="timing">{_num(seconds, 2)} s</span>' if _is_num(seconds) else ""
    head = f'<section id="{_esc(name)}"><h2>{_esc(TITLES.get(name, name))}{timing}</h2>'
    renderer = RENDERERS.get(name, _generic)
    try:
        if not isinstance(data, dict):
            raise TypeError(f"section data is a {type(data).__name__}, expected a dict")
        body = renderer(data)
    except Exception as e:  # one malformed section must not lose the rest of the report
        log.warning("report: could not render section %s: %s: %s", name, type(e).__name__, e)
        body = _box("err", f"Could not render this section: {_esc(type(e).__name__)}: {_esc(e)}")
    return head + body + "</section>"


def _generic(data: dict[str, Any]) -> str:
    """A section this renderer does not know: its data as JSON, so nothing is hidden."""
    return f"<pre>{_esc(json.dumps(_jsonable(data, drop_private=True), indent=2))}</pre>"


# ---------------------------------------------------------------------------------------------- figures


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _png_uri(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, facecolor="white")
    fig.clear()  # Figure objects are not tracked by pyplot: clearing drops the artists right away
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _label_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "viridis"]
    if n <= 20:
        return [cmap(i) for i in range(n)]
    return [cmap(i / max(n - 1, 1)) for i in range(n)]


# ---------------------------------------------------------------------------------------------- performance


def _performance(data: dict[str, Any]) -> str:
    labels = [str(label) for label in data.get("labels") or []]
    rows = [[_esc(c.get("label")), _num(c.get("precision")), _num(c.get("recall")), _num(c.get("f1")),
             _num(c.get("support"))] for c in data.get("per_class") or []]
    class_table = _table(["class", "precision", "recall", "F1", "support"], rows)

    baseline = data.get("majority_baseline") or {}
    compare = _table(["", "accuracy", "macro F1"], [
        ["model", _num(data.get("accuracy")), _num(data.get("macro_f1"))],
        [f"majority baseline (always “{_esc(baseline.get('label'))}”)", _num(baseline.get("accuracy")),
         _num(baseline.get("macro_f1"))],
    ])
    acc, base_acc = data.get("accuracy"), baseline.get("accuracy")
    warn = ""
    if _is_num(acc) and _is_num(base_acc) and acc <= base_acc + 1e-9:
        warn = _box("warn", "The model is no more accurate than always predicting the majority class.")

    matrix = data.get("confusion_matrix")
    figure = _img(_confusion_figure(matrix, labels), "confusion matrix") if matrix else ""
    return _how("performance", n=_num(data.get("n"))) + warn + _row(compare + class_table, figure)


def _confusion_figure(matrix: list[list[int]], labels: list[str]) -> str:
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    n = counts.shape[0]
    labels = labels if len(labels) == n else [str(i) for i in range(n)]
    row_sums = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, row_sums, out=np.zeros_like(counts), where=row_sums > 0)
    size = min(6.0, 3.0 + 0.35 * n)
    fig = _figure(size + 0.8, size)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="share of the true class", shrink=0.8)
    if n <= 30:
        ticks = [_mpl_text(label) for label in labels]
        slanted = max(map(len, ticks), default=0) > 4
        ax.set_xticks(range(n), ticks, rotation=45 if slanted else 0, ha="right" if slanted else "center")
        ax.set_yticks(range(n), ticks)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=8 if n <= 10 else 6,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("Confusion matrix")
    return _png_uri(fig)


# ---------------------------------------------------------------------------------------------- calibration


def _calibration(data: dict[str, Any]) -> str:
    before, after = data.get("before") or {}, data.get("after")
    metrics = [("ece", "ECE (expected calibration error)"), ("mce", "MCE (maximum calibration error)"),
               ("nll", "NLL (negative log-likelihood)"), ("brier", "Brier score"), ("accuracy", "accuracy")]
    if after:
        rows = []
        for key, label in metrics:
            b, a = before.get(key), after.get(key)
            change = f"{a - b:+.3f}" if _is_num(a) and _is_num(b) else MISSING
            rows.append([_esc(label), _num(b), _num(a), change])
        table = _table(["metric", "before", "after scaling", "change"], rows)
    else:
        table = _table(["metric", "value"], [[_esc(label), _num(before.get(key))] for key, label in metrics])

    fit, temperature = data.get("fit"), data.get("temperature")
    fit_text = ""
    if temperature is not None:
        fit_text = f"<p>Temperature <b>{_num(temperature, 3)}</b>"
        if isinstance(fit, dict):
            fit_text += (f", fitted on {_esc(fit.get('split'))} ({_num(fit.get('n'))} examples, "
                         f"{_num(fit.get('iterations'))} iterations, "
                         f"converged: {_num(fit.get('converged'))})")
        fit_text += ".</p>"
        if isinstance(fit, dict) and fit.get("converged") is False:
            fit_text += _box("warn", "The temperature fit did not converge: "
                                     "treat the scaled numbers with care.")
    if data.get("note"):
        fit_text += _box("warn" if data.get("after_in_sample") else "note", _esc(data["note"]))
    elif not after:
        fit_text = _box("note", "No temperature scaling: no validation outputs to fit it on.")

    figure = ""
    if before.get("bins"):
        panels = [("before", before)] + ([("after temperature scaling", after)] if after else [])
        figure = _img(_reliability_figure(panels), "reliability diagram")
    return _how("calibration", n_bins=_num(data.get("n_bins"))) + _row(table + fit_text, figure)


def _reliability_figure(panels: list[tuple[str, dict[str, Any]]]) -> str:
    fig = _figure(3.6 * len(panels), 4.2)
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3, 1])
    for col, (title, cal) in enumerate(panels):
        bins = cal.get("bins") or []
        top = fig.add_subplot(grid[0, col])
        bottom = fig.add_subplot(grid[1, col], sharex=top)
        lowers = [float(b.get("lower", 0.0)) for b in bins]
        widths = [float(b.get("upper", 0.0)) - float(b.get("lower", 0.0)) for b in bins]
        counts = [int(b.get("count") or 0) for b in bins]
        filled = [(lo, w, b) for lo, w, b in zip(lowers, widths, bins, strict=True)
                  if b.get("count") and b.get("accuracy") is not None]
        top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
        if filled:
            top.bar([lo for lo, _, _ in filled], [b["accuracy"] for _, _, b in filled],
                    width=[w for _, w, _ in filled], align="edge", color="#4c8bd6", edgecolor="#1f4e8c",
                    linewidth=0.6, label="accuracy in bin")
            means = [(b["confidence"], b["accuracy"]) for _, _, b in filled
                     if b.get("confidence") is not None]
            if means:
                top.plot(*zip(*means, strict=True), "o", color="#d64545", markersize=3,
                         label="mean confidence")
        top.set_xlim(0, 1)
        top.set_ylim(0, 1)
        top.set_ylabel("accuracy")
        top.set_title(f"{_mpl_text(title)} (ECE {_num(cal.get('ece'))})")
        top.legend(loc="upper left", frameon=False)
        top.tick_params(labelbottom=False)
        bottom.bar(lowers, counts, width=widths, align="edge", color="#9fb3c8", edgecolor="#627d98",
                   linewidth=0.5)
        bottom.set_xlabel("confidence")
        bottom.set_ylabel("count")
    return _png_uri(fig)


# ---------------------------------------------------------------------------------------------- attributions


def _attributions(data: dict[str, Any]) -> str:
    modality = data.get("modality")
    examples = data.get("examples") or []
    notes = "".join(_box("note", _esc(note)) for note in data.get("notes") or [])
    count = f"{len(examples)} example{'' if len(examples) == 1 else 's'}"
    meta = (f'<p class="meta">method: <code>{_esc(data.get("method"))}</code> · {count} · '
            f"{_num(data.get('seconds'), 2)} s</p>")
    if modality == "image":
        how = _how("attributions_image")
    else:
        legend = (f'<span class="legend"><span style="background:{_rgba(POSITIVE_RGB, 0.6)}">toward the '
                  f'prediction</span><span style="background:{_rgba(NEGATIVE_RGB, 0.6)}">against it</span>'
                  "</span>")
        how = _how("attributions_text", legend=legend)
    cards = [_example_card(example, modality) for example in examples] or [_box("note", "No examples.")]
    return how + meta + notes + "".join(cards)


def _example_card(example: dict[str, Any], modality: Any) -> str:
    label, pred, kind = example.get("label"), example.get("pred"), example.get("kind")
    verdict = '<span class="right">correct</span>' if label == pred else '<span class="wrong">wrong</span>'
    head = (f'<div class="head"><b>{_esc(KIND_TITLES.get(kind, kind))}</b> · '
            f"example #{_num(example.get('index'))} · label <b>{_esc(label)}</b> · "
            f"predicted <b>{_esc(pred)}</b> ({verdict}) · confidence {_num(example.get('confidence'))}</div>")
    body = _image_example(example) if modality == "image" else _text_example(example)
    return f'<div class="card">{head}{body}</div>'


def _rgba(rgb: tuple[int, int, int], alpha: float) -> str:
    return f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{alpha:.3f})"


def _is_special(token: str) -> bool:
    return (token.startswith("[") and token.endswith("]")) or token in SPECIAL_TOKENS


def _text_example(example: dict[str, Any]) -> str:
    tokens = [str(t) for t in example.get("tokens") or []]
    scores = list(example.get("scores") or [])
    scores += [None] * (len(tokens) - len(scores))
    scale = max((abs(s) for s in scores if _is_num(s)), default=0.0)
    # SentencePiece/BPE mark word starts ("▁", "Ġ"); WordPiece marks continuations ("##").
    word_start_marks = any(t.startswith(("▁", "Ġ")) for t in tokens)
    pieces = []
    for i, (token, score) in enumerate(zip(tokens, scores, strict=False)):
        if token.startswith("##") and len(token) > 2:
            text, space = token[2:], False
        elif word_start_marks and not _is_special(token):
            text, space = token.lstrip("▁Ġ") or token, token.startswith(("▁", "Ġ"))
        else:
            text, space = token, True
        style = ""
        if _is_num(score) and scale > 0:
            rgb = POSITIVE_RGB if score >= 0 else NEGATIVE_RGB
            style = f' style="background:{_rgba(rgb, 0.85 * abs(score) / scale)}"'
        value = f"{score:+.4f}" if _is_num(score) else "no score"
        css = "tok special" if _is_special(token) else "tok"
        span = f'<span class="{css}"{style} title="{_esc(token)}: {value}">{_esc(text)}</span>'
        pieces.append((" " if space and i > 0 else "") + span)
    delta = example.get("delta")
    # Significant digits, not decimals: a small model's scores can all be below 1e-4.
    footer = (f'<div class="meta">strongest |score| {_sig(scale)} · delta '
              f"{'n/a' if delta is None else _sig(delta)}</div>")
    return f'<div class="tokens">{"".join(pieces)}</div>{footer}'


def _decode_png(data: Any) -> tuple[str, Any] | None:
    """(data URI, HxWx3 uint8 array) of a base64 PNG, or None when it is not one."""
    import numpy as np
    from PIL import Image

    if not isinstance(data, str) or not data or not _BASE64.match(data):
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (binascii.Error, OSError, ValueError):
        return None
    return "data:image/png;base64," + "".join(data.split()), pixels


def _image_example(example: dict[str, Any]) -> str:
    import numpy as np
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    heatmap = example.get("heatmap")
    image = _decode_png(example.get("_image_png"))
    parts = []
    if heatmap:
        heat = np.asarray(heatmap, dtype=float)
        fig = _figure(3.3, 2.8)
        ax = fig.add_subplot()
        if image is not None:
            h, w = image[1].shape[:2]
            ax.imshow(image[1], interpolation="nearest")
            # The heatmap may be coarser than the image (Grad-CAM): stretch it over the whole image.
            ax.imshow(heat, cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear",
                      extent=(-0.5, w - 0.5, h - 0.5, -0.5))
        else:
            ax.imshow(heat, cmap="jet", vmin=0, vmax=1)
        # An opaque colourbar: the overlay's alpha would wash its colours out.
        fig.colorbar(ScalarMappable(norm=Normalize(vmin=0, vmax=1), cmap="jet"), ax=ax,
                     label="attribution (scaled)", shrink=0.85)
        ax.set_axis_off()
        ax.set_title("attribution over the input")
        parts.append(_img(_png_uri(fig), "attribution heatmap"))
    if image is not None:
        caption = '<div class="meta">input as the model sees it</div>'
        parts.append(_img(image[0], "input image", "thumb") + caption)
    elif not heatmap:
        parts.append(_box("note", "No heatmap or image stored for this example."))
    return _row(*parts)


# ---------------------------------------------------------------------------------------------- faithfulness


def _faithfulness(data: dict[str, Any]) -> str:
    comp, suff = data.get("comprehensiveness") or {}, data.get("sufficiency") or {}

    def score_row(name: str, scores: dict[str, Any], higher_is_better: bool) -> list[str]:
        a, r = scores.get("attribution"), scores.get("random")
        better = MISSING
        if _is_num(a) and _is_num(r):
            better = "yes" if (a > r if higher_is_better else a < r) else "no"
        return [name, _num(a), _num(r), better]

    table = _table(["score", "attribution", "random", "attribution better?"], [
        score_row("comprehensiveness (higher is better)", comp, higher_is_better=True),
        score_row("sufficiency (lower is better)", suff, higher_is_better=False),
    ])
    unit = str(data.get("unit") or "unit")
    curves = [(name, data[name]) for name in ("deletion", "insertion") if isinstance(data.get(name), dict)]
    figure = _img(_curves_figure(curves, unit), "deletion and insertion curves") if curves else ""
    fractions = ", ".join(_num(f, 2) for f in data.get("fractions") or [])
    verdict = data.get("verdict")
    meta = (f'<p class="meta">method: <code>{_esc(data.get("method"))}</code> · {_num(data.get("n"))} '
            f"examples · unit: {_esc(unit)}</p>")
    return (_how("faithfulness", unit=_esc(unit), fractions=fractions) + meta
            + (f"<p><b>{_esc(verdict)}</b></p>" if verdict else "") + _row(table, figure))


def _curves_figure(curves: list[tuple[str, dict[str, Any]]], unit: str) -> str:
    fig = _figure(3.4 * len(curves), 2.9)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, (name, curve) in zip(axes, curves, strict=True):
        fractions = _floats(curve.get("fractions"))
        for key, color, style in (("attribution", "#d64545", "-"), ("random", "#7b8794", "--")):
            values = _floats(curve.get(key))
            if values and len(values) == len(fractions):
                ax.plot(fractions, values, style, color=color, marker="o", markersize=3,
                        label=f"{key} (AUC {_num(curve.get(f'auc_{key}'))})")
        verb = "removed" if name == "deletion" else "inserted"
        ax.set_xlabel(f"fraction of {_mpl_text(unit)}s {verb}")
        ax.set_ylabel("score of the original prediction")
        ax.set_title(f"{name} ({'lower' if name == 'deletion' else 'higher'} is better)")
        ax.legend(frameon=False)
    return _png_uri(fig)


# ---------------------------------------------------------------------------------------------- robustness


def _robustness(data: dict[str, Any]) -> str:
    clean = data.get("clean_accuracy")
    rows = [["clean (no perturbation)", MISSING, _num(clean), MISSING, MISSING]]
    for p in data.get("perturbations") or []:
        acc = p.get("accuracy")
        change = f"{acc - clean:+.3f}" if _is_num(acc) and _is_num(clean) else MISSING
        rows.append([_esc(p.get("name")), _num(p.get("strength")), _num(acc), change,
                     _num(p.get("flip_rate"))])
    table = _table(["perturbation", "strength", "accuracy", "change vs clean", "flip rate"], rows)
    return _how("robustness", n=_num(data.get("n")), seed=_num(data.get("seed"))) + table


# --------------------------------------------------------------------------------------------- representation


def _representation(data: dict[str, Any]) -> str:
    labels = [str(label) for label in data.get("labels") or []]
    point_labels = [int(i) for i in data.get("point_labels") or []]
    kinds = (("pretrained", "pretrained"), ("fine_tuned", "fine-tuned"))
    panels = [(title, data[key]) for key, title in kinds
              if isinstance(data.get(key), dict) and data[key].get("points")]
    figure = _img(_scatter_figure(panels, labels, point_labels), "feature scatter plots") if panels else ""
    note = data.get("note")
    if not note and data.get("pretrained") is None:
        note = "No pretrained model to compare with."
    rows = [[_esc(title), _num(rep.get("silhouette")), _num(rep.get("knn_accuracy")),
             " + ".join(_num(v) for v in rep.get("explained_variance") or [])] for title, rep in panels]
    table = _table(["features", "silhouette", "kNN accuracy", "explained variance (PC1 + PC2)"], rows)
    return (_how("representation", method=_esc(data.get("method")))
            + (_box("note", _esc(note)) if note else "") + (table if rows else "") + figure)


def _scatter_figure(panels: list[tuple[str, dict[str, Any]]], labels: list[str],
                    point_labels: list[int]) -> str:
    import numpy as np
    from matplotlib.lines import Line2D

    n_labels = max(len(labels), max(point_labels, default=-1) + 1)
    names = labels + [str(i) for i in range(len(labels), n_labels)]
    colors = _label_colors(n_labels)
    fig = _figure(3.4 * len(panels) + (1.2 if n_labels <= 20 else 0), 3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (title, rep) in zip(axes, panels, strict=True):
        points = np.asarray(rep.get("points"), dtype=float).reshape(-1, 2)
        owners = np.asarray(point_labels[: len(points)] + [0] * (len(points) - len(point_labels)), dtype=int)
        for k in range(n_labels):
            mask = owners == k
            if mask.any():
                ax.scatter(points[mask, 0], points[mask, 1], s=9, color=colors[k], alpha=0.8, linewidths=0)
        variance = rep.get("explained_variance") or []
        if len(variance) == 2 and all(_is_num(v) for v in variance):
            ax.set_xlabel(f"PC1 ({100 * variance[0]:.0f} % of variance)")
            ax.set_ylabel(f"PC2 ({100 * variance[1]:.0f} % of variance)")
        ax.set_title(f"{title}\nsilhouette {_num(rep.get('silhouette'))} · "
                     f"kNN acc. {_num(rep.get('knn_accuracy'))}")
        ax.set_xticks([])
        ax.set_yticks([])
    if n_labels <= 20:
        # Explicit handles and labels: legend() would silently drop labels that start with "_".
        handles = [Line2D([], [], marker="o", linestyle="", color=colors[k], markersize=5)
                   for k in range(n_labels)]
        fig.legend(handles, [_mpl_text(name) for name in names], loc="outside right center", frameon=False,
                   title="true label")
    return _png_uri(fig)


# ---------------------------------------------------------------------------------------------- stability


def _stability(data: dict[str, Any]) -> str:
    runs = data.get("runs") or []
    metric_names = sorted({name for run in runs for name in (run.get("metrics") or {})})
    run_rows = [[_esc(run.get("name")), _num(run.get("seed")),
                 *(_num((run.get("metrics") or {}).get(m)) for m in metric_names),
                 '<span class="wrong">yes</span>' if run.get("degenerate") else "no"] for run in runs]
    run_table = _table(["run", "seed", *metric_names, "degenerate"], run_rows)
    summary_rows = [[_esc(name), f"{_num(s.get('mean'))} ± {_num(s.get('std'))}", _num(s.get("min")),
                     _num(s.get("max"))]
                    for name, s in (data.get("metrics") or {}).items() if isinstance(s, dict)]
    summary_table = _table(["metric", "mean ± std", "min", "max"], summary_rows)

    agreement = data.get("agreement")
    if isinstance(agreement, dict):
        agreement_text = (f"<p>Per-example agreement over {_num(agreement.get('n_examples'))} test examples: "
                          f"all runs predict the same class on <b>{_num(agreement.get('all_agree'))}</b> of "
                          f"them; two runs agree on <b>{_num(agreement.get('pairwise_mean'))}</b> on "
                          "average.</p>")
    else:
        agreement_text = _box("note", "No per-example agreement: the runs have no comparable predictions.")
    degenerate = data.get("degenerate_runs") or 0
    degenerate_box = ""
    if degenerate:
        degenerate_box = _box("warn", f"<b>{_num(degenerate)}</b> run(s) are degenerate (marked in the runs "
                                      "table): leave them out before trusting the mean.")
    differences_box = ""
    if data.get("differs_only_in_seed") is False:
        items = "".join(f"<li>{_esc(d)}</li>" for d in data.get("differences") or [])
        differences_box = _box("warn", "<b>These runs differ in more than the seed</b>, so the spread mixes "
                                       f"seed noise with the effect of other settings:<ul>{items}</ul>")

    accuracies = [((run.get("metrics") or {}).get("test/acc"), bool(run.get("degenerate"))) for run in runs]
    accuracies = [(acc, bad) for acc, bad in accuracies if _is_num(acc)]
    figure = ""
    if accuracies:
        figure = _img(_runs_figure(accuracies, data.get("majority_baseline")), "test accuracy per run")
    return (_how("stability", n_runs=_num(data.get("n_runs"))) + differences_box + degenerate_box
            + _row(summary_table + agreement_text, figure) + "<h3>Runs</h3>" + run_table)


def _runs_figure(accuracies: list[tuple[float, bool]], baseline: Any) -> str:
    import numpy as np

    values = np.asarray([acc for acc, _ in accuracies], dtype=float)
    bad = np.asarray([b for _, b in accuracies], dtype=bool)
    fig = _figure(3.6, 3.4)
    ax = fig.add_subplot()
    ax.boxplot(values, positions=[0], widths=0.5, showfliers=False, medianprops={"color": "#1f4e8c"})
    # Deterministic spread of the dots so equal accuracies stay visible side by side.
    offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else np.zeros(1)
    if (~bad).any():
        ax.scatter(offsets[~bad], values[~bad], s=22, color="#2f6fbf", zorder=3, label="run")
    if bad.any():
        ax.scatter(offsets[bad], values[bad], s=30, marker="x", color="#cf1124", zorder=3,
                   label="degenerate run")
    if _is_num(baseline):
        ax.axhline(baseline, color="#d64545", linestyle="--", linewidth=1,
                   label=f"majority baseline {baseline:.3f}")
    ax.set_xticks([0], ["test/acc"])
    ax.set_xlim(-0.6, 0.6)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"test accuracy of {len(values)} runs")
    fig.legend(loc="outside lower center", ncols=2, frameon=False)  # below the plot: never over the dots
    return _png_uri(fig)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "performance": _performance,
    "calibration": _calibration,
    "attributions": _attributions,
    "faithfulness": _faithfulness,
    "robustness": _robustness,
    "representation": _representation,
    "stability": _stability,
}
