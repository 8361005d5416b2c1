"""What a model's block stacks look like from the outside, for the methods that act on a whole
model (a network beside the blocks, soft prompts before them): the blocks, the module the user
calls, the module that returns the stack's output, the residual width and whether it is causal.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_MAPPING_NAMES,
)

from .calls import arg_locator
from .errors import UnsupportedModuleError
from .layouts import module_widths
from .sites import BlockSites

MASK_ARGS = ("attention_mask", "mask")
"""Forward parameters of a model a padding mask is read from (1/True on real tokens)."""
TORCH_LAYER_ARGS = ("src_mask", "src_key_padding_mask", "is_causal")
"""The masking parameters of torch's ``nn.TransformerEncoderLayer.forward``, in torch's own
convention (True or -inf where attention is *blocked*); a block taking
``src_key_padding_mask`` is read with it (by the whole-model methods that need a mask)."""

_CAUSAL_MODEL_TYPES = {"clip_text_model"}
"""Causal models whose attention modules do not say so (CLIP's text tower builds a causal mask)."""


def is_causal_architecture(module: nn.Module) -> bool:
    """Whether ``module`` is the base model or the causal-LM model of an architecture that
    Transformers knows only as a causal LM (Bloom, whose attention carries no ``is_causal``).
    Types that are also masked LMs (BERT as a decoder) are left to ``config.is_decoder``; the
    parts of encoder-decoder models (Whisper's encoder) match neither class name."""
    config = getattr(module, "config", None)
    kind = getattr(config, "model_type", None)
    if not isinstance(kind, str) or kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return False
    if getattr(config, "is_encoder_decoder", False) is True:
        return False
    names = {MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[kind], MODEL_MAPPING_NAMES.get(kind)}
    return type(module).__name__ in names


@dataclass(frozen=True)
class StackInfo:
    """One block stack of a model, with names relative to the injection root.

    ``root`` is the module a user calls (where a padding mask is read or extended), ``owner`` the
    module returning the stack's output, ``runs`` how many block calls one forward makes
    (``None`` when unknown; more than ``len(blocks)`` when blocks are shared, as in ALBERT),
    ``n_stacks`` how many stacks the model has.
    """

    name: str
    blocks: tuple[str, ...]
    root: str
    owner: str
    hidden: int
    causal: bool
    runs: int | None
    n_stacks: int
    sites: tuple[BlockSites, ...] = ()
    batch_first: bool = True
    """False when the blocks take ``[length, batch, hidden]`` (torch's ``batch_first=False``)."""


def ancestors(name: str) -> list[str]:
    """Names of the modules containing ``name``, nearest first, ending with the root ``""``."""
    parts = name.split(".") if name else []
    return [".".join(parts[:i]) for i in range(len(parts) - 1, -1, -1)]


def call_root(model: nn.Module, stack: str) -> str:
    """The module a user calls for this stack: the outermost enclosing Hugging Face model (some,
    like DINOv2's encoder, are PreTrainedModels inside one), else the nearest enclosing module
    whose forward takes a mask (SASRec's ``mask``), else the root."""
    from transformers import PreTrainedModel

    found = ancestors(stack)
    for name in reversed(found):
        if isinstance(model.get_submodule(name), PreTrainedModel):
            return name
    for name in found:
        if arg_locator(model.get_submodule(name), MASK_ARGS) is not None:
            return name
    return ""


def detect_causal(model: nn.Module, stack: str) -> bool:
    """A model is causal when a module on the way to its blocks, or in them, has
    ``is_causal=True`` (HF decoders; give SASRec-like encoders that attribute), its config
    says it is a decoder, or it is a causal-LM-only architecture (`is_causal_architecture`)."""
    path = [model.get_submodule(n) for n in ancestors(stack)]
    for m in [*path, *model.get_submodule(stack).modules()]:
        if getattr(m, "is_causal", None) is True:
            return True
        config = getattr(m, "config", None)
        if getattr(config, "is_decoder", False) is True:
            return True
        if getattr(config, "model_type", None) in _CAUSAL_MODEL_TYPES:
            return True
        if is_causal_architecture(m):
            return True
    return False


def is_batch_first(model: nn.Module, blocks: tuple[str, ...]) -> bool:
    """Whether the blocks take batch-first tensors: torch's attention says so
    (``nn.MultiheadAttention.batch_first``, False by default); every other block adarec knows
    (Hugging Face, SASRec) is batch first. Blocks that disagree are refused."""
    seen = {m.batch_first for b in blocks for m in model.get_submodule(b).modules()
            if isinstance(m, nn.MultiheadAttention)}
    if len(seen) > 1:
        raise UnsupportedModuleError(
            f"the blocks {blocks[0]}..{blocks[-1]} mix batch_first=True and False attention"
        )
    return seen.pop() if seen else True


def stack_owner(model: nn.Module, stack: str) -> str:
    """The module that returns the stack's output: the nearest ancestor that is neither a
    ModuleList nor an element of one (ALBERT calls its layer *group* once per layer)."""
    def listed(name: str) -> bool:
        parent = ancestors(name)[0] if name else None
        return parent is not None and isinstance(model.get_submodule(parent), nn.ModuleList)

    return next(a for a in ancestors(stack)
                if not isinstance(model.get_submodule(a), nn.ModuleList) and not listed(a))


def input_embeddings(module: nn.Module) -> nn.Module | None:
    """``module.get_input_embeddings()`` when it has one."""
    getter = getattr(module, "get_input_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except NotImplementedError:  # transformers' default for models without a word embedding
        return None


def stack_infos(model: nn.Module, blocks: dict[str, list[BlockSites]]) -> list[StackInfo]:
    """`StackInfo` of every stack, given the blocks found in each."""
    out = []
    for stack, sites in blocks.items():
        root = call_root(model, stack)
        config = getattr(model.get_submodule(root), "config", None)
        runs = getattr(config, "num_hidden_layers", None)
        width = sites[-1].width
        if width is None:
            ffn_out = sites[-1].names.get("ffn_out")
            module = model.get_submodule(ffn_out) if ffn_out else None
            if module is not None:
                dims = module_widths(module)
                width = dims[1] if dims else None
        if width is None:
            raise UnsupportedModuleError(
                f"cannot tell the hidden size of {type(model).__name__}'s stack {stack!r}"
            )
        out.append(StackInfo(
            name=stack, blocks=tuple(s.name for s in sites), root=root,
            owner=stack_owner(model, stack), hidden=int(width),
            causal=detect_causal(model, stack), runs=runs if isinstance(runs, int) else None,
            n_stacks=len(blocks), sites=tuple(sites),
            batch_first=is_batch_first(model, tuple(s.name for s in sites)),
        ))
    return out
