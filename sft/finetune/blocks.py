"""Block maps: which parameters form the stem (embeddings), each real block, and the head of a model.

Freezing the bottom k blocks, gradual unfreezing and layer-wise learning rates are all defined on
these groups, never on leaf modules (counting leaves, as Flash does, splits a BERT layer into a dozen
"layers"). A map names parameter prefixes relative to the wrapped model (``Classifier.model``):

    stem:   embeddings, or the CNN stem (conv1 + bn1)
    blocks: bottom to top: BERT ``encoder.layer.i``, ResNet ``layer1..4``, EfficientNet stages, ViT layers
    head:   everything else (pooler, final norm, classifier)

Add a map for another architecture with :func:`register_block_map`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from sft.errors import ConfigError

STEM, HEAD = "stem", "head"


@dataclass(frozen=True)
class BlockMap:
    stem: tuple[str, ...]                 # parameter / module prefixes of the stem
    blocks: tuple[tuple[str, ...], ...]   # per block (bottom to top), its prefixes

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def block_names(self) -> list[str]:
        return [f"block{i}" for i in range(self.depth)]

    def group_names(self) -> list[str]:
        """Bottom to top: stem, block0 .. block{n-1}, head."""
        return [STEM, *self.block_names(), HEAD]

    def group_of(self, param_name: str) -> str:
        def under(prefixes: tuple[str, ...]) -> bool:
            return any(param_name == p or param_name.startswith(p + ".") for p in prefixes)

        if under(self.stem):
            return STEM
        for i, prefixes in enumerate(self.blocks):
            if under(prefixes):
                return f"block{i}"
        return HEAD

    def prefixes(self, group: str) -> tuple[str, ...]:
        if group == STEM:
            return self.stem
        if group.startswith("block"):
            return self.blocks[int(group[5:])]
        return ()


BlockMapper = Callable[[nn.Module], "BlockMap | None"]
_MAPPERS: list[BlockMapper] = []


def register_block_map(mapper: BlockMapper) -> BlockMapper:
    """Register ``mapper(model) -> BlockMap | None`` (None: not my architecture). Later ones win."""
    _MAPPERS.insert(0, mapper)
    return mapper


def _indexed(prefix: str, count: int) -> tuple[tuple[str, ...], ...]:
    return tuple((f"{prefix}.{i}",) for i in range(count))


@register_block_map
def _hf_encoders(model: nn.Module) -> BlockMap | None:
    config = getattr(model, "config", None)
    prefix = getattr(model, "base_model_prefix", None)
    if config is None or prefix is None or not hasattr(model, prefix):
        return None
    base = getattr(model, prefix)
    if hasattr(base, "encoder") and hasattr(base.encoder, "layer"):  # BERT, RoBERTa, XLM-R, ELECTRA, MiniLM
        return BlockMap((f"{prefix}.embeddings",), _indexed(f"{prefix}.encoder.layer", len(base.encoder.layer)))
    if hasattr(base, "transformer") and hasattr(base.transformer, "layer"):  # DistilBERT
        return BlockMap((f"{prefix}.embeddings",), _indexed(f"{prefix}.transformer.layer", len(base.transformer.layer)))
    return None


@register_block_map
def _torchvision_and_timm(model: nn.Module) -> BlockMap | None:
    kind = type(model).__name__
    module = type(model).__module__
    if kind == "ResNet":  # torchvision and timm share these names
        return BlockMap(("conv1", "bn1"), (("layer1",), ("layer2",), ("layer3",), ("layer4",)))
    if kind == "EfficientNet" and module.startswith("torchvision"):
        # features.0 is the stem conv; features.1..7 the MBConv stages; the last, the 1x1 head conv.
        return BlockMap(("features.0",), _indexed("features", len(model.features))[1:])
    if kind == "EfficientNet" and module.startswith("timm"):
        stages = _indexed("blocks", len(model.blocks))
        return BlockMap(("conv_stem", "bn1"), (*stages, ("conv_head", "bn2")))
    if kind == "VisionTransformer" and module.startswith("torchvision"):
        layers = tuple((f"encoder.layers.{name}",) for name, _ in model.encoder.layers.named_children())
        return BlockMap(("conv_proj", "class_token", "encoder.pos_embedding"), layers)
    return None


def block_map(model: nn.Module) -> BlockMap:
    """The model's block map, checked against its parameters; a clear error for unknown architectures."""
    for mapper in _MAPPERS:
        found = mapper(model)
        if found is not None:
            names = [n for n, _ in model.named_parameters()]
            for group in found.group_names()[:-1]:
                if not any(found.group_of(n) == group for n in names):
                    raise ConfigError(f"Block map of {type(model).__name__}: group {group} "
                                      f"{found.prefixes(group)} matches no parameter; the map is out of date.")
            return found
    raise ConfigError(
        f"No block map for {type(model).__name__}: freeze=bottom_k / gradual and layer-wise learning rates need "
        "to know its stem and blocks. Add one with sft.finetune.blocks.register_block_map (see the maps in "
        "sft/finetune/blocks.py), or use freeze=none / freeze=backbone, which need none."
    )


def group_modules(model: nn.Module, bmap: BlockMap, group: str) -> list[nn.Module]:
    """The submodules making up a stem / block group (prefixes naming bare parameters are skipped)."""
    modules = []
    for prefix in bmap.prefixes(group):
        try:
            modules.append(model.get_submodule(prefix))
        except AttributeError:
            continue
    return modules


def fsdp_block_classes() -> set[type[nn.Module]]:
    """The block classes of the supported backbones: FSDP's wrap unit and activation-checkpointing unit
    (``conf/trainer/fsdp.yaml``), the same blocks the freeze strategies use."""
    from torchvision.models.resnet import BasicBlock, Bottleneck
    from torchvision.models.vision_transformer import EncoderBlock
    from transformers.models.bert.modeling_bert import BertLayer
    from transformers.models.distilbert.modeling_distilbert import TransformerBlock
    from transformers.models.roberta.modeling_roberta import RobertaLayer

    return {BertLayer, RobertaLayer, TransformerBlock, EncoderBlock, BasicBlock, Bottleneck}
