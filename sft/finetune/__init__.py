"""Fine-tuning strategies: which parts of a pretrained model train, and at which learning rate.

``none`` trains everything; ``backbone`` trains the head only (a linear probe with the pretrained
encoder as a fixed feature extractor); ``bottom_k`` freezes the stem and the bottom k blocks;
``gradual`` starts with the head and unfreezes one block group from the top at each milestone; ``lora``
freezes the pretrained weights and trains low-rank adapters (peft) and the head (:mod:`sft.finetune.lora`).
Layer-wise learning-rate decay and a separate head learning rate combine with any of them. Blocks
are real blocks (:mod:`sft.finetune.blocks`). Kept torch-free so config checks stay fast.
"""

FREEZE_STRATEGIES = ("none", "backbone", "bottom_k", "gradual", "lora")
