"""sft: supervised fine-tuning of pretrained models for classification.

Importing the package is cheap (no torch / lightning); the heavy libraries load on first use.
"""

__version__ = "0.1.0"
