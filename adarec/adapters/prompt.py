"""Prompt tuning (Lester et al. 2021): ``n`` trainable soft tokens before the real input.

Text models that take ``inputs_embeds`` get the prompt in word-embedding space, as Lester et al.
did: a forward pre-hook on the model embeds ``input_ids`` itself and passes
``inputs_embeds = [prompt; embed(input_ids)]``, so the model adds positions, token types and
norms to the prompt as to any token. Other models (vision encoders, CLIP's text tower) get the
prompt prepended to the output of their embeddings module (the module whose output enters the
block stack). Either way every real token is kept (the paper's research code cut the item title
to make room for the prompt), ``attention_mask`` (and ``token_type_ids``) are extended by ``n``,
and the ``n`` prompt positions are stripped again from the block stack's output (before any
pooler) and from the model's outputs, so ``last_hidden_state`` and ``hidden_states`` keep their
shapes and CLS/mean pooling is unchanged.

Not an identity at initialisation: the real tokens attend to the prompt from the first step.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from ..calls import arg_locator, positional_names
from ..errors import AdapterStateError, UnsupportedModuleError
from ..registry import (
    AttachContext,
    BuildContext,
    MethodDef,
    PlaceContext,
    Placement,
    register_method,
)
from ..sites import Site
from ..spec import MAX_WIDTH, SpecField, int_in
from ..stacks import StackInfo, ancestors, input_embeddings
from .base import AdapterLayer

INITS = ("random", "vocab")
PROMPT_LENGTH = SpecField("prompt_length", 10, int_in(1, MAX_WIDTH),
                          f"must be an integer in [1, {MAX_WIDTH}]", "number of soft tokens")
PROMPT_INIT = SpecField("prompt_init", "random", lambda x: x in INITS,
                        f"must be one of {list(INITS)}", "initialisation of the soft tokens")


class PromptAdapter(AdapterLayer):
    """Holds the soft prompt ``[n, hidden]``.

    ``embeds_input``: prepend in `prepare` through ``inputs_embeds``; otherwise `forward` does it
    as the hook of the embeddings module. ``arg_names`` are the model forward's positional
    parameters, so positional calls are handled too.
    """

    mixed_batch_refusal = (
        "it prepends soft tokens to the whole batch's input (every row's length and mask "
        "change); serve its sets one per call (group rows by set)"
    )

    def __init__(self, init: torch.Tensor) -> None:
        super().__init__()
        self.prompt = nn.Parameter(init.clone())
        self.n = init.shape[0]
        self.embeds_input = False
        self.arg_names: tuple[str, ...] = ()
        self._full: int | None = None  # sequence length with the prompt, during a forward

    def _prepend(self, y: torch.Tensor) -> torch.Tensor:
        self._full = y.size(1) + self.n
        return torch.cat([self.prompt.to(y.dtype).expand(y.size(0), -1, -1), y], dim=1)

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        return y if self.embeds_input else self._prepend(y)

    def prepare(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """Forward pre-hook on the model: prompt into ``inputs_embeds``, masks extended."""
        self._full = None
        if not self.active:
            return None
        if len(args) > len(self.arg_names):
            raise AdapterStateError(
                f"prompt tuning cannot rewrite a call of {type(module).__name__} with "
                f"{len(args)} positional arguments; pass them by keyword"
            )
        call = {**dict(zip(self.arg_names, args, strict=False)), **kwargs}
        if self.embeds_input:
            embeds = call.get("inputs_embeds")
            if embeds is None:
                embeds = cast(Any, module).get_input_embeddings()(call["input_ids"])  # HF model
            if call.get("position_ids") is not None:
                raise AdapterStateError(
                    "prompt tuning prepends tokens, so explicit position_ids no longer fit; "
                    "let the model derive positions"
                )
            call["input_ids"], call["inputs_embeds"] = None, self._prepend(embeds)
            if isinstance(call.get("token_type_ids"), torch.Tensor):
                call["token_type_ids"] = self._pad(call["token_type_ids"], 0)
        if isinstance(call.get("attention_mask"), torch.Tensor):
            call["attention_mask"] = self._pad(call["attention_mask"], 1)
        return (), call

    def _pad(self, t: torch.Tensor, value: int) -> torch.Tensor:
        if t.dim() != 2:
            raise AdapterStateError(
                f"prompt tuning extends [batch, length] masks; got shape {tuple(t.shape)}"
            )
        return torch.cat([t.new_full((t.size(0), self.n), value), t], dim=1)

    def strip(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook: drop the prompt positions from every hidden-state tensor still carrying
        them (``[batch, n + length, hidden]``); attention maps and caches keep them."""
        if self._full is None:
            return None
        return _strip(output, self._full, self.n)

    def finish(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        """Forward hook on the model itself: strip, then forget this forward's length."""
        out = self.strip(module, args, output)
        self._full = None
        return out

    def extra_repr(self) -> str:
        return f"n={self.n}, via={'inputs_embeds' if self.embeds_input else 'embeddings hook'}"


def _strip(value: Any, full: int, n: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[:, n:] if value.dim() == 3 and value.size(1) == full else value
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_strip(v, full, n) for v in value)
    if isinstance(value, dict):  # transformers' ModelOutput is an OrderedDict
        for key in list(value.keys()):
            value[key] = _strip(value[key], full, n)
        return value
    return value


def prompt_init(spec: Any, hidden: int, embedding: nn.Module | None) -> torch.Tensor:
    """``random``: N(0, s^2) with ``s`` the word embeddings' std (0.02 without them). ``vocab``:
    the mean word embedding plus that noise at 1/10 scale (identical tokens would stay identical
    in models that give the prompt no positions)."""
    weight = getattr(embedding, "weight", None)
    if not (isinstance(weight, torch.Tensor) and not weight.is_meta and weight.dim() == 2
            and weight.size(1) == hidden):
        weight = None  # unusable for the statistics
    std = float(weight.detach().float().std()) if weight is not None else 0.02
    noise = torch.randn(spec.prompt_length, hidden) * std
    if spec.prompt_init == "vocab" and weight is not None:
        return weight.detach().float().mean(0, keepdim=True) + 0.1 * noise
    return noise


def place(ctx: PlaceContext) -> list[Site]:
    """Through ``inputs_embeds`` when the model takes them and has a word embedding (the host is
    that embedding), else on the output of the embeddings module."""
    if len(ctx.stacks) != 1:
        raise UnsupportedModuleError(
            f"prompt tuning needs a model with one block stack; {type(ctx.model).__name__} has "
            f"{[s.name for s in ctx.stacks]}: inject into the submodel that encodes the input"
        )
    stack = ctx.stacks[0]
    block = ctx.model.get_submodule(stack.blocks[-1])
    if arg_locator(block, ("src_key_padding_mask",)) is not None or not stack.batch_first:
        raise UnsupportedModuleError(
            f"prompt tuning extends a model's [batch, length] attention_mask and prepends along "
            f"dim 1; the blocks of {type(ctx.model).__name__} ({type(block).__name__}) take "
            "torch's src_mask/src_key_padding_mask, sized to the input, which it does not rewrite"
            + ("" if stack.batch_first else ", and are not batch first")
        )
    root = ctx.model.get_submodule(stack.root)
    emb = input_embeddings(root)
    takes = all(arg_locator(root, (a,)) for a in ("input_ids", "inputs_embeds"))
    if isinstance(emb, nn.Embedding) and takes:
        host = next(n for n, m in ctx.model.named_modules() if m is emb)
        return [Site(host, stack.root, "input_embeddings", stack=stack.name)]
    host = _embeddings_module(ctx.model, stack, emb)
    return [Site(host, stack.root, "embeddings_output", stack=stack.name)]


def _embeddings_module(model: nn.Module, stack: StackInfo, emb: nn.Module | None) -> str:
    """The module whose output enters the block stack: the outermost module around the input
    (word or patch) embedding that does not also contain the blocks (ViT's ``embeddings``)."""
    root = stack.root
    name = next((n for n, m in model.named_modules() if m is emb), None) if emb else None
    if name is None:  # no get_input_embeddings(): a child of the model called "*embed*"
        prefix = f"{root}." if root else ""
        kids = [f"{prefix}{n}" for n, _ in model.get_submodule(root).named_children()
                if "embed" in n.lower()]
        name = kids[0] if len(kids) == 1 else None
    if name is None:
        raise UnsupportedModuleError(
            f"prompt tuning cannot find the embeddings of "
            f"{type(model.get_submodule(root)).__name__}: it has no get_input_embeddings() and "
            "no single child module named '*embed*'"
        )
    while True:
        parent = ancestors(name)[0]
        if parent == root or stack.name.startswith(parent + ".") or parent == "":
            return name
        name = parent


def build(ctx: BuildContext) -> PromptAdapter:
    assert ctx.model is not None and ctx.stack is not None
    host = ctx.model.get_submodule(ctx.site.target)
    embeds_input = ctx.site.role == "input_embeddings"
    width = cast(nn.Embedding, host).embedding_dim if embeds_input else ctx.d_out
    emb = input_embeddings(ctx.model.get_submodule(ctx.stack.root))
    adapter = PromptAdapter(prompt_init(ctx.spec, width, emb))
    adapter.embeds_input = embeds_input
    return adapter


def attach(adapter: AdapterLayer, ctx: AttachContext) -> None:
    """Rewrite the call (first, so other pre-hooks on the model, K-Adapter's, see the extended
    mask); strip the prompt positions from the stack's and the model's outputs."""
    assert isinstance(adapter, PromptAdapter) and ctx.stack is not None
    root = ctx.submodule(ctx.stack.root)
    adapter.arg_names = positional_names(root)
    ctx.pre_hook(root, adapter.prepare, with_kwargs=True, prepend=True)
    owner = ctx.submodule(ctx.stack.owner)
    if owner is not root:
        ctx.forward_hook(owner, adapter.strip)
    ctx.forward_hook(root, adapter.finish)


PROMPT = register_method(MethodDef(
    name="prompt",
    placement=Placement.MODEL,
    build=build,
    fields=(PROMPT_LENGTH, PROMPT_INIT),
    place=place,
    attach=attach,
    merge_note="it adds input positions, which no weight change reproduces",
    summary="trainable soft tokens before the input",
))
