"""The layering promises that a test can check: below the pipeline's build step nothing needs Hydra, and the
import graph of sft/ has no cycle (import-linter checks the full layer contract in `make lint`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO, python

WITHOUT_HYDRA = """
import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch

from sft.data.sources import PackagedSample
from sft.data.text import TextDataModule
from sft.inference import split_outputs
from sft.models.classifier import TextClassifier
from sft.report.make import build_context, make_report

tiny, out = sys.argv[1], Path(sys.argv[2])
dm = TextDataModule(PackagedSample(), tokenizer=tiny, batch_size=16, max_length=32, train_size=48)
dm.prepare_data()
model = TextClassifier(tiny, num_labels=len(dm.label_names), id2label=dm.id2label,
                       optimizer=partial(torch.optim.AdamW, lr=1e-3))
L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
          enable_model_summary=False).fit(model, datamodule=dm)
dm.setup("test")
test = split_outputs(model, dm, "test")
report = make_report(build_context(model, dm), {"sections": ["performance", "calibration"]}, out,
                     {"model": tiny, "data": "sample", "split": "test"})
assert report["sections"]["performance"]["accuracy"] == model.split_metrics(test.logits, test.labels, "test")["test/acc"]
print("hydra" in sys.modules, (out / "report.html").is_file())
"""


@pytest.mark.subprocess
def test_datamodule_model_trainer_and_report_run_without_hydra(tiny_bert, tmp_path):
    out = python(["-c", WITHOUT_HYDRA, tiny_bert, str(tmp_path / "report")], cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    hydra_imported, report_written = out.stdout.split()[-2:]
    assert hydra_imported == "False", "a module below sft.pipeline.build imported Hydra"
    assert report_written == "True"


def _internal_imports(module: Path) -> set[str]:
    """The sft modules ``module`` imports (top level or deferred), as dotted names."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("sft"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sft"))
    return found


def test_the_import_graph_of_sft_has_no_cycle():
    package = REPO / "sft"
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for p in package.rglob("*.py")}
    graph = {name: {m for m in _internal_imports(path) if m in modules and m != name}
             for name, path in modules.items()}
    # A package's __init__ re-exporting its own modules is not a cycle between modules.
    graph = {name: {m for m in deps if not name.startswith(m + ".") and not m.startswith(name + ".")}
             for name, deps in graph.items()}
    state: dict[str, int] = {}

    def cycle_from(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep] if dep in path else [name, dep]
            if dep not in state:
                found = cycle_from(dep, [*path, dep])
                if found:
                    return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = cycle_from(name, [name])
            assert cycle is None, " -> ".join(cycle)


def test_train_leaves_the_callers_config_alone(tiny_cfg):
    """train(cfg) works on its own copy: a step budget (max_epochs -> -1) and the launcher's resources are
    recorded in the run folder's config.yaml, not written into the caller's config."""
    from omegaconf import OmegaConf

    from sft.pipeline.train import train

    cfg = tiny_cfg("trainer.max_steps=2", "trainer.max_epochs=3")
    before = OmegaConf.to_yaml(cfg)
    metrics = train(cfg)
    assert OmegaConf.to_yaml(cfg) == before
    saved = OmegaConf.load(Path(cfg.output_dir) / "config.yaml")
    assert saved.trainer.max_epochs == -1 and saved.trainer.max_steps == 2 and metrics["fit/global_step"] == 2
