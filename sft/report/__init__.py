"""The trust report: how good, how calibrated, why, how stable a fine-tuned classifier is.

:mod:`sft.report.make` (called by the pipeline after training and by ``sft.explain`` on a run folder) builds
a :class:`~sft.report.context.ReportContext` (the model in eval mode, its data module, the val/test logits)
and runs the sections named in the ``report`` config. Each section is one
module (``sft.report.registry.SECTIONS`` maps names to modules, in page order) with
``section(ctx, settings) -> dict`` (JSON-able; keys starting with ``_`` hold rendering assets, PNG
thumbnails as base64, that go into ``report.html`` but not ``report.json``), optional ``check_settings``,
and for the page its ``TITLE``, ``HOW`` (how to read it), ``render(data) -> str`` (its HTML) and optionally
``summary(data)`` (its headline numbers in the strip at the top).
``sft.report.page.render`` assembles the whole report dict into one self-contained HTML page;
``sft.report.figures`` draws the figures and ``sft.report.htmlparts`` holds the shared HTML pieces.

Sections (name: what it holds):
    performance:    per-class P/R/F1/support, confusion matrix, majority baseline
    calibration:    ECE/MCE/NLL/Brier, reliability bins, temperature scaling (val -> test)
    attributions:   token / pixel attributions for selected test examples
    faithfulness:   deletion/insertion curves, ERASER comprehensiveness/sufficiency vs random
    robustness:     flip rate and accuracy under small perturbations
    representation: 2-D projection of pretrained vs fine-tuned test features
Multirun folders get ``stability`` (mean +- std over seeds, per-example agreement, degenerate runs), made by
``sft.explain`` from the run folders (``registry.MULTIRUN_SECTIONS``: not a ``report.sections`` choice).
"""
