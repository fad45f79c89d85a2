"""``render(report) -> str``: the trust report as one self-contained HTML page; ``write`` also saves JSON.

The page needs nothing from the network: styles are inline, there is no JavaScript, and every figure is a
base64 PNG (:mod:`sft.report.figures`). Tokens and labels come from user data: every text is escaped.

The page is the header (run, how to read the page, summary strip, links), the skipped sections, one
``<section>`` per section and the time per section. The sections come in the order of
:func:`sft.report.registry.page_sections`; each section's module gives its ``TITLE`` and ``render(data) ->
str`` (its HTML, help text included). A section without a module or without ``render`` shows its data as
JSON. Any subset of sections renders; a section whose data cannot be drawn shows an error box instead of
taking the whole page down (the report is written after a training run that may have taken hours).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sft.cache import atomic_write_text
from sft.report.figures import STYLE
from sft.report.htmlparts import MISSING, box, esc, how, is_num, num, table
from sft.report.registry import page_sections, section_module

log = logging.getLogger(__name__)

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

# How to read the page (HTML; whitespace collapses). Each section module has its own HOW.
HOW = """How good the model is, how far its confidence can be trusted, what it looks at, how robust
    and how stable it is. Each section says how to read it; all numbers are on the split above."""


# ---------------------------------------------------------------------------------------------- public


def render(report: dict[str, Any]) -> str:
    """The whole report as one HTML page (text). Renders whatever sections ``report["sections"]`` holds."""
    import matplotlib

    report = _jsonable(report, drop_private=False)
    sections = report.get("sections") or {}
    timings = report.get("timings") or {}
    skipped = report.get("skipped") or {}
    known = list(page_sections())
    names = [n for n in known if n in sections] + [n for n in sections if n not in known]

    with matplotlib.rc_context(STYLE):
        bodies = [_render_section(name, sections[name], timings.get(name)) for name in names]

    run = report.get("run") or {}
    title = f"Trust report: {run.get('model') or run.get('dir') or 'run'}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>",
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
    atomic_write_text(json_path, json_text + "\n")
    atomic_write_text(html_path, html_text)
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


# ---------------------------------------------------------------------------------------------- sections


def _title(name: str) -> str:
    return getattr(section_module(name), "TITLE", name)


def _renderer(name: str) -> Callable[[dict[str, Any]], str]:
    return getattr(section_module(name), "render", _generic)


# ---------------------------------------------------------------------------------------------- html pieces


def _header(report: dict[str, Any], names: list[str]) -> str:
    run = report.get("run") or {}
    fields = [("dir", "run"), ("model", "model"), ("data", "data"), ("split", "split"), ("created", "date")]
    meta = " · ".join(f"{label}: <code>{esc(run.get(key) or MISSING)}</code>" for key, label in fields)
    nav = [f'<a href="#{esc(n)}">{esc(_title(n))}</a>' for n in names]
    nav += [f'<span class="skip">{esc(_title(n))} (skipped)</span>'
            for n in report.get("skipped") or {}]
    return (f'<h1>Trust report</h1><p class="meta">{meta}</p>' + how(HOW)
            + _summary_strip(report.get("sections") or {})
            + (f"<nav>{''.join(nav)}</nav>" if nav else ""))


def _summary_strip(sections: dict[str, Any]) -> str:
    """The headline numbers: each section's ``summary(data) -> [(label, html)]``, in page order."""
    stats: list[tuple[str, str]] = []
    for name in page_sections():
        summary = getattr(section_module(name), "summary", None) if isinstance(sections.get(name), dict) else None
        if summary is not None:
            stats += summary(sections[name])
    if not stats:
        return ""
    cells = "".join(f'<div class="stat"><div class="k">{esc(k)}</div><div class="v">{v}</div></div>'
                    for k, v in stats)
    return f'<div class="strip">{cells}</div>'


def _skipped_box(skipped: dict[str, Any]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li><b>{esc(name)}</b>: {esc(reason)}</li>" for name, reason in skipped.items())
    return box("note", f"<b>Skipped sections</b><ul>{items}</ul>")


def _timings_table(timings: dict[str, Any], skipped: dict[str, Any]) -> str:
    if not timings:
        return ""
    rows = [[esc(name) + (" (skipped)" if name in skipped else ""), num(seconds, 2)]
            for name, seconds in timings.items()]
    total = sum(s for s in timings.values() if is_num(s))
    rows.append(["<b>total</b>", f"<b>{total:.2f}</b>"])
    seconds_table = table(["section", "seconds"], rows)
    return f'<section id="timings"><h2>Time per section</h2>{seconds_table}</section>'


def _render_section(name: str, data: Any, seconds: Any) -> str:
    timing = f'<span class="timing">{num(seconds, 2)} s</span>' if is_num(seconds) else ""
    head = f'<section id="{esc(name)}"><h2>{esc(_title(name))}{timing}</h2>'
    renderer = _renderer(name)
    try:
        if not isinstance(data, dict):
            raise TypeError(f"section data is a {type(data).__name__}, expected a dict")
        body = renderer(data)
    except Exception as e:  # one malformed section must not lose the rest of the report
        log.warning("report: could not render section %s: %s: %s", name, type(e).__name__, e)
        body = box("err", f"Could not render this section: {esc(type(e).__name__)}: {esc(e)}")
    return head + body + "</section>"


def _generic(data: dict[str, Any]) -> str:
    """A section with no module or no ``render``: its data as JSON, so nothing is hidden."""
    return f"<pre>{esc(json.dumps(_jsonable(data, drop_private=True), indent=2))}</pre>"
