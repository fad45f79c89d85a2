"""Small HTML pieces the report page and its sections share: escaping, number formats, tables, boxes, images.

Every text from user data goes through :func:`esc`; :func:`table` escapes its header, its cells must already
be HTML (built with :func:`esc` / :func:`num`).
"""

from __future__ import annotations

import html
from typing import Any

MISSING = "—"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals (ints as they are, bools as yes/no, None as a dash), as HTML."""
    if value is None:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return esc(value)


def sig(value: Any, digits: int = 3) -> str:
    """Significant digits, not decimals (for values that may all be tiny)."""
    return f"{value:.{digits}g}" if isinstance(value, float) else num(value)


def is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def table(header: list[str], rows: list[list[str]], left_columns: int = 1) -> str:
    """A table; header cells are escaped here, row cells must already be HTML (use esc / num)."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag} class="l">{v}</{tag}>' if i < left_columns else f"<{tag}>{v}</{tag}>"
                       for i, v in enumerate(values))

    body = "".join(f"<tr>{cells('td', row)}</tr>" for row in rows)
    head = cells("th", [esc(h) for h in header])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def how(text: str, **values: str) -> str:
    """The "how to read this" paragraph: ``text`` (HTML; whitespace collapses) with its {placeholders} filled
    by ``values`` (already HTML: escape user values)."""
    return f'<p class="how">{" ".join(text.split()).format(**values)}</p>'


def box(kind: str, inner: str) -> str:
    """A coloured box: kind is ``note``, ``warn`` or ``err``; ``inner`` is HTML."""
    return f'<div class="box {kind}">{inner}</div>'


def img(uri: str, alt: str, css_class: str = "fig") -> str:
    return f'<img class="{css_class}" src="{uri}" alt="{esc(alt)}">'


def side_by_side(*columns: str) -> str:
    """HTML blocks side by side (wrapping on narrow screens)."""
    return '<div class="row">' + "".join(f"<div>{c}</div>" for c in columns) + "</div>"


def get_in(data: Any, *keys: str) -> Any:
    """``data[k1][k2]...``, or None where a level is missing or not a dict (report data may be partial)."""
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
