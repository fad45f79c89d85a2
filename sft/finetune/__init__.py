"""Fine-tuning strategies: which parts of a pretrained model train.

``none`` trains everything; ``backbone`` trains the head only (a linear probe with the pretrained
encoder as a fixed feature extractor). Kept torch-free so config checks stay fast.
"""

FREEZE_STRATEGIES = ("none", "backbone")
