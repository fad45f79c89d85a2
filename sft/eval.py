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

from sft.errors import ConfigError, command_line


def evaluate(model_path: str | Path, split: str = "test", overrides: list[str] | None = None,
             batch_size: int = 64) -> dict[str, float]:
    from sft.config import data_config
    from sft.inference import label_names, load_model, outputs
    from sft.pipeline.build import build_datamodule

    model, data_inputs = load_model(model_path)
    names = label_names(model)
    data_cfg = data_config(Path(model_path).expanduser(), overrides or [])
    datamodule = build_datamodule(data_cfg, **data_inputs, label_names=names, eval_batch_size=batch_size)
    datamodule.prepare_data()
    splits = getattr(datamodule, "split_names", ("train", "val", "test"))
    if split not in splits:
        raise ConfigError(f"--split {split!r}: choose one of {', '.join(splits)}.")
    if datamodule.task.kind != model.task.kind:
        raise ConfigError(f"The model is a {model.task.kind} model but the data is a {datamodule.task.kind} task: "
                          "evaluate it on data of its own task (e.g. data.test=<file> with the run's data settings).")
    datamodule.setup("test")
    result = outputs(model, datamodule.eval_dataloader(split))  # sequential: the split's own order
    metrics = model.split_metrics(result.logits, result.labels, split)
    metrics[f"{split}/samples"] = float(len(result.labels))
    return dict(sorted(metrics.items()))


@command_line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sft.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="run folder, export/ folder or .ckpt file")
    parser.add_argument("overrides", nargs="*", help="data overrides, e.g. data=sst2 data.path=...")
    parser.add_argument("--split", default="test", help="train, val or test (default: test)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", help="also write the metrics to this JSON file")
    args = parser.parse_args(argv)
    metrics = evaluate(args.model, args.split, args.overrides, args.batch_size)
    text = json.dumps(metrics, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
