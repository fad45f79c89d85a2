"""The pipeline: config -> build (data module, model, trainer) -> fit -> finish (export, report, metrics.json).

``sft.pipeline.train.train(cfg)`` runs it; the command-line edges call it.
"""
