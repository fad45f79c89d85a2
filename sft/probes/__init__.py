"""Probes over a frozen backbone: its features computed once and cached (``feature_cache``), and a
scikit-learn head fitted on them (``sklearn_head``: fit -> (estimator, metrics), no run-folder I/O)."""
