"""GLUE's nine tasks from a local GLUE folder (the TSVs as GLUE wrote them) or the HF hub (nyu-mll/glue): one
text or a sentence pair, a class or (STS-B) a score. Torch-free, like every source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sft.data.sources import (
    Example,
    TextSplits,
    _require_file,
    carve_val,
    hub_dataset,
    read_table,
)
from sft.errors import ConfigError, DataError


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out: local TSV columns, hub columns, label names (index = GLUE / HF label id)."""

    text: str  # local column of the (first) text
    pair: str | None  # local column of the second text, for sentence-pair tasks
    label: str  # local label column
    names: tuple[str, ...]
    hub_text: str
    hub_pair: str | None = None
    task: str = "single_label"
    positive_label: str | None = None
    ids: bool = True  # local labels are ids (0, 1, ...) rather than names
    dev: tuple[str, ...] = ("dev",)  # local evaluation files (.tsv); the first becomes the test split
    columns: tuple[str, ...] | None = None  # columns of GLUE's files that have no header row


GLUE_TASKS = {
    "cola": GlueTask("sentence", None, "label", ("unacceptable", "acceptable"), "sentence",
                     columns=("source", "label", "mark", "sentence")),
    "sst2": GlueTask("sentence", None, "label", ("negative", "positive"), "sentence"),
    "mrpc": GlueTask("#1 String", "#2 String", "Quality", ("not_equivalent", "equivalent"), "sentence1",
                     "sentence2", positive_label="equivalent"),
    "qqp": GlueTask("question1", "question2", "is_duplicate", ("not_duplicate", "duplicate"), "question1",
                    "question2", positive_label="duplicate"),
    "stsb": GlueTask("sentence1", "sentence2", "score", ("score",), "sentence1", "sentence2", task="regression",
                     ids=False),
    "mnli": GlueTask("sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"), "premise",
                     "hypothesis", ids=False, dev=("dev_matched", "dev_mismatched")),
    "qnli": GlueTask("question", "sentence", "label", ("entailment", "not_entailment"), "question", "sentence",
                     ids=False),
    "rte": GlueTask("sentence1", "sentence2", "label", ("entailment", "not_entailment"), "sentence1", "sentence2",
                    ids=False),
    "wnli": GlueTask("sentence1", "sentence2", "label", ("not_entailment", "entailment"), "sentence1", "sentence2"),
}
MNLI_HUB_SPLITS = {"dev_matched": "validation_matched", "dev_mismatched": "validation_mismatched"}


class Glue:
    """A GLUE task (all nine). ``path``: a local GLUE task folder (train.tsv, dev.tsv; MNLI dev_matched.tsv and
    dev_mismatched.tsv); else the HF hub (nyu-mll/glue).

    GLUE's test labels are hidden, so dev becomes the test split (MNLI: dev_matched, with dev_mismatched as the
    extra ``test_mismatched`` split) and ``val_size`` rows are carved from train (stratified for classification,
    seeded random for STS-B; fixed seed) for validation and checkpoint selection; ``None``: 10% of train, at
    most 2,000 rows.
    """

    def __init__(self, task: str = "sst2", path: str | None = None, val_size: float | int | None = 872,
                 split_seed: int = 0, encoding: str = "utf-8"):
        if task not in GLUE_TASKS:
            raise ConfigError(f"data.task={task!r} is not a GLUE task; choose one of {list(GLUE_TASKS)}.")
        self.task, self.path, self.val_size, self.split_seed = task, path, val_size, split_seed
        self.encoding = encoding

    def load(self, seed: int = 0) -> TextSplits:
        spec = GLUE_TASKS[self.task]
        parts, origin = self._from_hub(spec) if self.path is None else self._from_folder(spec)
        # Fixed split seed (not the run seed): every run validates on the same rows.
        size = self.val_size if self.val_size is not None else min(round(0.1 * len(parts["train"])), 2000)
        train, val = carve_val(parts["train"], size, self.split_seed, spec.task)
        extra = {f"test_{name.removeprefix('dev_')}": parts[name] for name in spec.dev[1:]}
        return TextSplits(train, val, parts[spec.dev[0]], label_names=list(spec.names), origin=origin,
                          task=spec.task, positive_label=spec.positive_label, extra_test=extra).validate()

    def _from_folder(self, spec: GlueTask) -> tuple[dict[str, list[Example]], dict[str, str]]:
        folder = Path(self.path).expanduser()
        if not folder.is_dir():
            files = " and ".join(f"{s}.tsv" for s in ("train", *spec.dev))
            raise DataError(
                f"data.path={str(folder)!r} is not a folder. Point it at a GLUE {self.task} folder "
                f"holding {files} (or leave it null to download from the HF hub)."
            )
        folder = glue_task_folder(folder, self.task)
        files = {s: _require_file(folder / f"{s}.tsv", f"data.path ({s}.tsv)") for s in ("train", *spec.dev)}
        parts = {s: self._read(spec, file, f"data.path ({s}.tsv)") for s, file in files.items()}
        origin = {"train": str(files["train"]), "val": f"{files['train']} (carved)", "test": str(files[spec.dev[0]])}
        origin.update({f"test_{s.removeprefix('dev_')}": str(files[s]) for s in spec.dev[1:]})
        return parts, origin

    def _read(self, spec: GlueTask, file: Path, setting: str) -> list[Example]:
        # CoLA's GLUE files have no header; a copy whose first row names the columns is read by those names.
        columns = spec.columns if spec.columns and spec.text not in _first_fields(file) else None
        allowed = [str(i) for i in range(len(spec.names))] if spec.ids else list(spec.names)
        rows = read_table(file, spec.text, spec.label, setting, allowed_labels=None if spec.task == "regression"
                          else allowed, encoding=self.encoding, text_pair_column=spec.pair, task=spec.task,
                          columns=columns)
        if spec.ids:
            rows = [(x, spec.names[int(label)]) for x, label in rows]
        return rows

    def _from_hub(self, spec: GlueTask) -> tuple[dict[str, list[Example]], dict[str, str]]:
        ds = hub_dataset("nyu-mll/glue", self.task, f"GLUE {self.task}",
                         f"Set data.path to a local GLUE {self.task} folder with "
                         f"{' and '.join(f'{s}.tsv' for s in ('train', *spec.dev))}.")

        def rows(split: str) -> list[Example]:
            out = []
            for r in ds[split]:
                x = r[spec.hub_text].strip() if spec.hub_pair is None else \
                    (r[spec.hub_text].strip(), r[spec.hub_pair].strip())
                out.append((x, float(r["label"]) if spec.task == "regression" else spec.names[int(r["label"])]))
            return out

        hub = f"hf://nyu-mll/glue/{self.task}"
        names = {s: MNLI_HUB_SPLITS.get(s, "validation") for s in spec.dev}
        parts = {"train": rows("train"), **{s: rows(split) for s, split in names.items()}}
        origin = {"train": hub, "val": f"{hub} (carved)", "test": f"{hub}:{names[spec.dev[0]]}"}
        origin.update({f"test_{s.removeprefix('dev_')}": f"{hub}:{names[s]}" for s in spec.dev[1:]})
        return parts, origin


# The task folders of GLUE's own download (download_glue_data.py) and of ../shared/data.
GLUE_FOLDER_NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "mnli": "MNLI",
                     "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}


def glue_task_folder(folder: Path, task: str) -> Path:
    """``folder`` itself when it holds the task's files, else its ``<task>`` / GLUE-named subfolder (a GLUE root:
    one data.path for every task of a ``glue_all`` sweep)."""
    if (folder / "train.tsv").is_file():
        return folder
    for name in (task, GLUE_FOLDER_NAMES[task]):
        if (folder / name / "train.tsv").is_file():
            return folder / name
    return folder


def _first_fields(path: Path) -> list[str]:
    """The tab-separated fields of a file's first line (for telling a header from a data row)."""
    with path.open("rb") as f:
        first = f.readline().decode("utf-8", errors="replace")
    return [field.strip().lstrip("\ufeff") for field in first.split("\t")]
