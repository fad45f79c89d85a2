"""Shared fixtures: a tiny BERT saved to disk (so from_pretrained really runs), Hydra compose helpers."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
SST2_DIR = SHARED_DATA / "sst2"

# Fast, quiet defaults for every in-process run.
FAST = [
    "trainer.max_epochs=1",
    "++trainer.enable_progress_bar=false",
    "++trainer.enable_model_summary=false",
    "callbacks.progress_bar=null",
    "torch_threads=2",
    "report=none",  # the report has its own tests (tests/test_report_*.py, tests/test_explain.py)
]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    # Tokenization cache in a temp folder: tests never read or pollute ~/.cache/sft.
    os.environ["SFT_CACHE"] = str(tmp_path_factory.mktemp("sft_cache"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from sft.models.backbones import packaged_minilm_path

    return packaged_minilm_path()


def save_small_bert(folder: Path, minilm_path: str, hidden_size: int = 32, num_hidden_layers: int = 2) -> str:
    """A small random BERT with MiniLM's real WordPiece tokenizer (vocabulary 30522), saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden_size, num_hidden_layers=num_hidden_layers,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, minilm_path: str) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's real WordPiece tokenizer, saved with save_pretrained."""
    return save_small_bert(tmp_path_factory.mktemp("tiny_bert"), minilm_path)


@pytest.fixture(scope="package")
def compose_cfg():
    """compose(overrides) -> DictConfig, through the real Hydra config search path of sft.run."""
    from hydra import compose, initialize_config_dir

    from sft.config import CONFIG_DIR

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=list(overrides))

    return _compose


@pytest.fixture
def tiny_cfg(compose_cfg, tiny_bert: str, tmp_path: Path):
    """A fast config on the tiny BERT and the packaged sample, writing into tmp_path."""

    def _cfg(*overrides: str):
        return compose_cfg(f"model.name_or_path={tiny_bert}", f"output_dir={tmp_path / 'run'}", *FAST,
                           "optimizer.lr=1e-3", *overrides)

    return _cfg


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two easily separable classes (reddish vs bluish noise), train and val, with a grayscale and an RGBA file."""
    import torch
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 24), ("val", 8)):
        for label, channel in (("blue", 2), ("red", 0)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(48, 48, 3, generator=gen) * 80).to(torch.uint8)
                pixels[..., channel] += 150
                img = Image.fromarray(pixels.numpy())
                if i == 0:
                    img = img.convert("RGBA")
                img.save(folder / f"{i}.png")
    Image.new("L", (48, 48), 128).save(root / "train" / "red" / "gray.png")
    return root


# Both precision paths on any machine: bf16 detection forced on (bf16-mixed autocast, as on AMX / AVX512-BF16
# CPUs; emulated and slower on AVX2-only ones) and forced off (fp32). One of the two is the machine's own.
CPU_BF16 = {"bf16": "1", "fp32": "0"}
CPU_PRECISION = {"bf16": "bf16-mixed", "fp32": "32-true"}


@contextlib.contextmanager
def cpu_bf16(kind: str):
    """Runs the body with sft's CPU bf16 detection forced to ``kind`` ("bf16" or "fp32")."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_CPU_BF16", CPU_BF16[kind])
        yield


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def needs_sst2() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SST2_DIR / "train.tsv").is_file(),
                              reason=f"real SST-2 not found at {SST2_DIR} (the ../shared/data folder is absent)")
