"""The run folder is the unit of record: config, argv, git revision, metrics, checkpoints, export/."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sft.errors import ConfigError

PACKAGE_DIR = Path(__file__).resolve().parent
TIMESTAMP = "%Y-%m-%dT%H:%M:%S%z"  # run.json's start times, the report's creation time


def git_revision(path: Path = PACKAGE_DIR) -> dict[str, Any]:
    """Commit and dirty flag of the sft source tree (None when not installed from a git checkout)."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("sft", "torch", "lightning", "transformers", "torchmetrics", "hydra-core"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def write_run_info(output_dir: Path, cfg: DictConfig, **extra: Any) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    info = {
        "argv": sys.argv,
        "cwd": str(Path.cwd()),
        "git": git_revision(),
        "versions": versions(),
        "host": platform.node(),
        "started": time.strftime(TIMESTAMP),
        **extra,
    }
    # Appended, not overwritten: a resumed run keeps the record of every start.
    runs_file = output_dir / "run.json"
    history = json.loads(runs_file.read_text())["starts"] if runs_file.is_file() else []
    history.append(info)
    runs_file.write_text(json.dumps({**info, "starts": history}, indent=2))


# Metrics where smaller is better (val/loss, test/ece, fit/seconds...); everything else is maximised. The one
# rule for checkpoint selection, early stopping, Optuna's direction and the sweep summary's "best".
LOWER_IS_BETTER = ("loss", "nll", "ece", "brier", "error", "seconds", "mse")


def metric_mode(metric: str) -> str:
    """"min" or "max": which way ``metric`` improves."""
    return "min" if any(word in str(metric).lower() for word in LOWER_IS_BETTER) else "max"


def write_metrics(output_dir: Path, metrics: dict[str, float]) -> Path:
    path = output_dir / "metrics.json"
    path.write_text(json.dumps(dict(sorted(metrics.items())), indent=2))
    return path


# The files that mark a folder as what it is. Every entry point that reads a run folder asks these.
RUN_MARKERS = ("config.yaml", "run.json")
EXPORT_MARKERS = ("config.json", "model.json")  # text (save_pretrained) / image export folders
CALIBRATION_FILE = "calibration.json"  # the fitted temperature, beside the export (sft.predict --calibrated)
PRUNED_FILE = "pruned.json"  # in a pruned Optuna trial's run folder: where it stopped, instead of metrics.json
TRIAL_KEY = "optuna_trial"  # the job config node that tells an Optuna trial's job which trial it is (pruning only)


def run_dir_of(path: Path) -> Path | None:
    """The run folder ``path`` is, or is inside (its export/, a checkpoint in checkpoints/)."""
    for candidate in (path, path.parent, path.parent.parent):
        if all((candidate / marker).is_file() for marker in RUN_MARKERS):
            return candidate
    return None


DATA_PATH_KEYS = ("path", "train", "val", "test")  # the data settings that name files or folders


def saved_data_config(run_dir: Path) -> DictConfig:
    """The run's ``data`` node, with relative data paths made absolute against the folder the run was started
    from (run.json's ``cwd``): the run folder then works from any working directory."""
    data = OmegaConf.load(run_dir / "config.yaml").data
    runs_file = run_dir / "run.json"
    starts = json.loads(runs_file.read_text()).get("starts", []) if runs_file.is_file() else []
    started_in = Path(starts[0]["cwd"]) if starts and starts[0].get("cwd") else None
    # With a data folder (data=conll2003), its file names (train / val / test) are relative to it, not to cwd.
    keys = ("path",) if data.get("path") else DATA_PATH_KEYS
    for key in keys:
        value = data.get(key)
        if started_in is not None and isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            data[key] = str(started_in / value)
    return data


def is_export_dir(folder: Path) -> bool:
    return any((folder / marker).is_file() for marker in EXPORT_MARKERS)


def _checkpoint_number(path: Path) -> int:
    tail = path.stem.rpartition("_")[2]
    return int(tail) if tail.isdigit() else -1


def resume_checkpoint(ckpt_path: str | None, resume: Any, output_dir: Path) -> str | None:
    """The checkpoint to continue from: ``ckpt_path``, else (resume=auto / true) the run's newest one in
    ``output_dir`` (``checkpoints/last.ckpt``, or a newer SLURM requeue checkpoint)."""
    if ckpt_path:
        path = Path(ckpt_path).expanduser()
        if not path.is_file():
            raise ConfigError(f"ckpt_path={str(path)!r} does not exist. Give an existing .ckpt file, or drop ckpt_path.")
        return str(path)
    last = output_dir / "checkpoints" / "last.ckpt"
    if resume in ("auto", True):
        # Lightning's SLURM auto-requeue saves hpc_ckpt_<n>.ckpt into the run folder when the job is about to be
        # stopped (time limit, preemption): newer than last.ckpt, so it wins.
        hpc = sorted(output_dir.glob("hpc_ckpt_*.ckpt"), key=_checkpoint_number)
        candidates = [p for p in (last, *hpc[-1:]) if p.is_file()]
        if candidates:
            return str(max(candidates, key=lambda p: p.stat().st_mtime))
    if resume is True:
        raise ConfigError(
            f"resume=true but there is no checkpoint to resume from ({last} does not exist). Point "
            "hydra.run.dir (or output_dir) at the interrupted run's folder, or use resume=auto / false."
        )
    return None
