"""CSV metrics that survive a resumed run and DDP: rows are appended to ``logs/metrics.csv``.

Lightning's CSVLogger deletes an existing metrics.csv whenever a new writer starts in the same folder: when a
killed run resumes from its checkpoint (the curve before the kill is lost), and under ``trainer=ddp`` with
forked ranks, where fit, validate and test each start in fresh processes (only the test rows would be left).
A run that starts fresh in a used folder discards the old file (:func:`discard_previous_metrics`); a resumed
run appends, so steps logged after its last checkpoint and before the kill appear twice.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingExperimentWriter(ExperimentWriter):
    """Continues an existing metrics.csv: its header's columns are known, new columns rewrite the header."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = list(next(csv.reader(file), []))


def discard_previous_metrics(loggers: list[object]) -> None:
    """Remove metrics.csv of sft's CSV loggers: called when a run starts fresh (not resumed) in a used folder."""
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            path = Path(logger.log_dir) / AppendingExperimentWriter.NAME_METRICS_FILE
            path.unlink(missing_ok=True)


class CSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger with :class:`AppendingExperimentWriter`."""

    @property
    @rank_zero_experiment
    def experiment(self) -> AppendingExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment



