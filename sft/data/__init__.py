"""Data: sources (files, GLUE, the packaged sample) and the text LightningDataModule."""

from sft.data.glue import Glue
from sft.data.sources import PackagedSample, TextFiles, TextSplits

__all__ = ["Glue", "PackagedSample", "TextDataModule", "TextFiles", "TextSplits"]


def __getattr__(name: str):
    # Lazy: importing sft.data for its sources must not pull in torch / lightning.
    if name == "TextDataModule":
        from sft.data.text import TextDataModule

        return TextDataModule
    raise AttributeError(name)
