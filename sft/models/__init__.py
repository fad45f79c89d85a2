"""Models: the classification LightningModule and backbone loading."""


def __getattr__(name: str):
    # The `_target_` of run folders written before the configs named sft.models.classifier.TextClassifier;
    # lazy, so importing sft.models does not import torch.
    if name == "TextClassifier":
        from sft.models.classifier import TextClassifier

        return TextClassifier
    raise AttributeError(name)


__all__ = ["TextClassifier"]
