"""Models: the classification LightningModule and backbone loading."""


def __getattr__(name: str):
    # Lazy, so composing configs (which names sft.models.TextClassifier) does not import torch.
    if name == "TextClassifier":
        from sft.models.classifier import TextClassifier

        return TextClassifier
    raise AttributeError(name)


__all__ = ["TextClassifier"]
