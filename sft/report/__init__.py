"""The trust report: how good, how calibrated, why, how stable a fine-tuned classifier is.

``sft.explain`` builds a :class:`~sft.report.context.ReportContext` (the model in eval mode, its data
module, the val/test logits) and runs the sections named in the ``report`` config. Each section is a
plain function ``section(ctx, settings) -> dict`` whose result is JSON-able; keys starting with ``_``
hold rendering assets (PNG thumbnails as base64) that go into ``report.html`` but not ``report.json``.
``sft.report.html.render`` turns the whole report dict into one self-contained HTML page.

Sections (module: function):
    performance:    per-class P/R/F1/support, confusion matrix, majority baseline
    calibration:    ECE/MCE/NLL/Brier, reliability bins, temperature scaling (val -> test)
    attributions:   token / pixel attributions for selected test examples
    faithfulness:   deletion/insertion curves, ERASER comprehensiveness/sufficiency vs random
    robustness:     flip rate and accuracy under small perturbations
    representation: 2-D projection of pretrained vs fine-tuned test features
Multirun folders get ``stability`` (mean +- std over seeds, per-example agreement, degenerate runs).
"""
