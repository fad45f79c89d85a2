"""``python -m sft.eval MODEL [--split test] [data overrides]``: metrics of a trained model on a split.

MODEL: a run folder, its export/ folder or a .ckpt file. The data is the run's own (from its
config.yaml) unless Hydra-style overrides are given, e.g. ``data=sst2 data.path=../shared/data/sst2``.

    python -m sft.eval outputs/runs/2026-01-01_12-00-00
    python -m sft.eval outputs/runs/.../export --split val data=text_file data.train=my.csv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sft.errors import ConfigError, SftError


def compose_config(overrides: list[str]) -> Any:
    """The full config composed from sft's config folder, as ``sft.run`` would (outside a Hydra run)."""
    from hydra import compose, initialize_config_dir

    from sft.run import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=[*overrides, "output_dir=."])


def run_dir_of(model_path: Path) -> Path | None:
    for candidate in (model_path, model_path.parent, model_path.parent.parent):
        if (candidate / "config.yaml").is_file() and (candidate / "run.json").is_file():
            return candidate
    return None


def data_config(model_path: Path, overrides: list[str]) -> Any:
    """The data node: composed from overrides, else the run's saved config."""
    from omegaconf import OmegaConf

    run_dir = run_dir_of(model_path)
    if not overrides and run_dir is not None:
        return OmegaConf.load(run_dir / "config.yaml").data
    if not overrides:
        raise ConfigError(
            f"{model_path} is not inside an sft run folder, so say which data to use, e.g. "
            "`data=sst2 data.path=../shared/data/sst2`."
        )
    return compose_config(overrides).data


def evaluate(model_path: str | Path, split: str = "test", overrides: list[str] | None = None,
             batch_size: int = 64) -> dict[str, float]:
    import torch

    from sft.inference import label_names, load_model
    from sft.models.classifier import stage_metrics
    from sft.train import build

    if split not in ("train", "val", "test"):
        raise ConfigError(f"--split {split!r}: choose train, val or test.")
    model, data_inputs = load_model(model_path)
    names = label_names(model)
    data_cfg = data_config(Path(model_path).expanduser(), overrides or [])
    datamodule = build(data_cfg, **data_inputs, label_names=names, eval_batch_size=batch_size)
    datamodule.prepare_data()
    datamodule.setup("test")
    loader = datamodule.eval_dataloader(split)
    metrics = stage_metrics(len(names), split)
    loss_sum, count = 0.0, 0
    with torch.inference_mode():
        for batch in loader:  # sequential: the split's own order
            logits = model.logits(batch).float()
            loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
            count += len(batch["labels"])
            metrics.update(logits, batch["labels"])
    result = {k: float(v) for k, v in metrics.compute().items()}
    result[f"{split}/loss"] = loss_sum / max(count, 1)
    result[f"{split}/samples"] = float(count)
    return dict(sorted(result.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder, export/ folder or .ckpt file")
    parser.add_argument("overrides", nargs="*", help="data overrides, e.g. data=sst2 data.path=...")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    try:
        metrics = evaluate(args.model, args.split, args.overrides, args.batch_size)
    except SftError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
