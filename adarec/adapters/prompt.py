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

from ..errors import AdapterStateError
from .base import AdapterLayer


class PromptAdapter(AdapterLayer):
    """Holds the soft prompt ``[n, hidden]``.

    ``embeds_input``: prepend in `prepare` through ``inputs_embeds``; otherwise `forward` does it
    as the hook of the embeddings module. ``arg_names`` are the model forward's positional
    parameters, so positional calls are handled too.
    """

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


def build_prompt(spec: Any, d_in: int, d_out: int, shared: dict[str, Any]) -> PromptAdapter:
    """``shared["word_embeddings"]`` is the model's input embedding (for the init statistics)."""
    return PromptAdapter(prompt_init(spec, d_out, shared.get("word_embeddings")))
