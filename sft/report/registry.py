"""Which report sections exist (in page order) and the check of the ``report`` settings (before any work).

A section is one module with ``section(ctx, settings) -> dict`` (the work; optional ``check_settings``) and,
for the page, ``TITLE``, ``HOW`` and ``render(data) -> str``. Adding a section is that module and one line
in :data:`SECTIONS`."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from sft.errors import ConfigError

SECTIONS = {  # report section (``report.sections``) -> its module; the report page shows them in this order
    "performance": "sft.report.performance",
    "calibration": "sft.report.calibration",
    "attributions": "sft.report.attribution",
    "faithfulness": "sft.report.faithfulness",
    "robustness": "sft.report.robustness",
    "representation": "sft.report.representation",
}
# Sections the page shows that no run makes (so not in report.sections): ``sft.explain`` builds them from a
# multirun folder. Their modules have TITLE, HOW and render but no ``section(ctx, settings)``.
MULTIRUN_SECTIONS = {"stability": "sft.report.stability"}
SPLITS = ("val", "test")


def section_module(name: str) -> ModuleType | None:
    """The module of a section the page knows (imported only when asked for); None for an unknown name."""
    path = page_sections().get(name)
    return importlib.import_module(path) if path else None


def page_sections() -> dict[str, str]:
    """Every section the report page knows -> its module, in page order (a run's sections, then multirun)."""
    return {**SECTIONS, **MULTIRUN_SECTIONS}


def report_enabled(report: Any) -> bool:
    """The report is off when there is no ``report`` node or it names no sections (``report=none``)."""
    return bool(report) and bool(report.get("sections"))


def check_report_settings(report: Any) -> None:
    """Unknown sections and bad section settings fail before any work (not after training)."""
    if not report_enabled(report):
        return
    sections = report.get("sections") or []
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"report.sections has unknown section(s) {unknown}; choose from {sorted(SECTIONS)}.")
    if report.get("split", "test") not in SPLITS:
        raise ConfigError(f"report.split={report.get('split')!r}: choose val or test.")
    for name in sections:
        check = getattr(section_module(name), "check_settings", None)
        if check is not None:
            check(dict(report.get(name) or {}))
