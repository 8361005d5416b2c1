"""Prefix tuning (Li & Liang, ACL 2021): ``P`` trainable key and value positions in every
attention layer, which every query attends to beside the real keys.

Per attention module the prefix is ``P x kv_width`` for the keys and for the values (``kv_width``
is the key projection's width: the hidden size, or ``kv_heads * head_dim`` under grouped-query
attention), split over the heads as the module splits its own keys. With ``prefix_projection``
(the paper's reparametrisation, used for training) each layer computes its prefix as
``MLP(E)``, ``E`` a ``P x hidden`` embedding and ``MLP = Linear(hidden, prefix_hidden) -> tanh ->
Linear(prefix_hidden, 2 * kv_width)``; `fold_prefix` replaces the MLP by its output for
inference (same outputs to rounding) and the set becomes ``prefix_projection=False``.

The prefix enters at the attention kernel (`adarec.attention`), after rotary positions and the KV
cache, so it carries no position (as in peft's prefix tuning), the cache never stores it, and
the input, the mask the user passes and every output keep their shapes. Prefix positions are
attended by every query (on causal stacks too); padding stays masked.

Not an identity at initialisation, even with a zero prefix: the extra keys take softmax mass
from the real ones (a zero key scores 0, a zero value adds nothing, so every attention output
shrinks by ``Z / (Z + P)`` with ``Z`` the real keys' summed ``exp(score)``).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..attention import AttentionCall, check_attention_module
from ..checkpoint import PathLike, atomic_folder, write_json, write_weights
from ..errors import AdapterStateError, UnsupportedModuleError
from ..inject import iter_adapters
from ..planning import module_widths
from ..registry import (
    AttachContext,
    BuildContext,
    MethodDef,
    PlaceContext,
    Placement,
    register_method,
)
from ..sites import BlockSites, Site
from ..spec import MAX_WIDTH, SpecField, int_in
from ..stacks import ancestors
from .base import AdapterLayer

PREFIX_LENGTH = SpecField("prefix_length", 10, int_in(1, MAX_WIDTH),
                          f"must be an integer in [1, {MAX_WIDTH}]",
                          "key/value positions per attention layer")
PREFIX_PROJECTION = SpecField("prefix_projection", True, lambda x: isinstance(x, bool),
                              "must be True or False",
                              "reparametrise the prefix through an MLP (for training)")
PREFIX_HIDDEN = SpecField("prefix_hidden", 512, int_in(1, MAX_WIDTH),
                          f"must be an integer in [1, {MAX_WIDTH}]",
                          "hidden width of the reparametrisation MLP")
KERNELS = ("eager", "sdpa")
"""The attention implementations whose [batch, heads, q, kv] masks the prefix extends."""


class PrefixAdapter(AdapterLayer):
    """The prefix of one attention module: ``prefix_key``/``prefix_value`` (folded) or
    ``embedding`` + ``mlp`` (reparametrised)."""

    mixed_batch_refusal = (
        "it extends the keys, values and attention mask of the whole batch inside the "
        "attention call, not a per-row output; serve its sets one per call (group rows by set)"
    )

    def __init__(self, length: int, k_width: int, v_width: int, hidden: int,
                 mlp_hidden: int | None, causal: bool) -> None:
        super().__init__()
        self.length, self.k_width, self.v_width, self.causal = length, k_width, v_width, causal
        if mlp_hidden is None:
            self.prefix_key = nn.Parameter(torch.randn(length, k_width))
            self.prefix_value = nn.Parameter(torch.randn(length, v_width))
        else:
            self.embedding = nn.Parameter(torch.randn(length, hidden))
            self.mlp = nn.Sequential(nn.Linear(hidden, mlp_hidden), nn.Tanh(),
                                     nn.Linear(mlp_hidden, k_width + v_width))

    @property
    def folded(self) -> bool:
        return "prefix_key" in self._parameters

    def key_value(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The prefix keys ``[P, k_width]`` and values ``[P, v_width]``."""
        if self.folded:
            return self.prefix_key, self.prefix_value
        out = self.mlp(self.embedding)
        return out[:, :self.k_width], out[:, self.k_width:]

    @torch.no_grad()
    def fold(self) -> None:
        """Replace the MLP by its output (the prefix it computes now)."""
        if self.folded:
            raise AdapterStateError(f"prefix set {self.set_name!r} is already folded")
        key, value = (t.detach().clone() for t in self.key_value())
        trainable = self.embedding.requires_grad
        del self.embedding, self.mlp
        self.prefix_key = nn.Parameter(key, requires_grad=trainable)
        self.prefix_value = nn.Parameter(value, requires_grad=trainable)

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        return y  # the prefix acts inside attention (rewrite_attention)

    def rewrite_attention(self, module: nn.Module, call: AttentionCall) -> None:
        """Prepend the prefix to the keys and values and ``P`` attended columns to the mask."""
        if call.implementation not in KERNELS:
            raise AdapterStateError(
                f"prefix tuning extends [batch, heads, q, kv] attention masks, which the "
                f"{call.implementation!r} attention implementation does not take; load the model "
                f"with attn_implementation in {list(KERNELS)}"
            )
        q_len, kv_len = call.query.size(2), call.key.size(2)
        key, value = self.key_value()
        call.key = self._heads(key, call.key, "key")
        call.value = self._heads(value, call.value, "value")
        call.mask = self._mask(call.mask, call, q_len, kv_len)
        bias = call.kwargs.get("position_bias")
        if isinstance(bias, torch.Tensor):  # T5: the prefix has no position, so no bias
            zeros = bias.new_zeros(*bias.shape[:-1], self.length)
            call.kwargs["position_bias"] = torch.cat([zeros, bias[..., :kv_len]], dim=-1)

    def _heads(self, prefix: torch.Tensor, real: torch.Tensor, what: str) -> torch.Tensor:
        batch, heads, _, dim = real.shape
        if heads * dim != prefix.size(1):
            raise AdapterStateError(
                f"{type(self).__name__} holds {what} prefixes of width {prefix.size(1)}, but the "
                f"attention module splits its {what}s into {heads} heads of {dim}"
            )
        split = prefix.to(real.dtype).view(self.length, heads, dim).transpose(0, 1)
        return torch.cat([split.unsqueeze(0).expand(batch, -1, -1, -1), real], dim=2)

    def _mask(self, mask: torch.Tensor | None, call: AttentionCall, q_len: int,
              kv_len: int) -> torch.Tensor:
        device = call.query.device
        if mask is None:  # no padding: the real keys' own pattern, made explicit
            keep = torch.ones(q_len, kv_len, dtype=torch.bool, device=device)
            if self.causal:  # bottom-right aligned: with a cache, query i is position kv-q+i
                keep = keep.tril(kv_len - q_len)
            mask = keep[None, None]
            if call.implementation == "eager":
                mask = _additive(mask, call.query.dtype)
        if mask.dim() != 4:
            raise AdapterStateError(
                f"prefix tuning extends 4-d attention masks; got shape {tuple(mask.shape)}"
            )
        mask = mask[..., :kv_len]
        if mask.dtype == torch.bool:
            pad = torch.ones(*mask.shape[:-1], self.length, dtype=torch.bool, device=device)
        else:
            pad = torch.zeros(*mask.shape[:-1], self.length, dtype=mask.dtype, device=device)
        return torch.cat([pad, mask], dim=-1)

    def extra_repr(self) -> str:
        how = "folded" if self.folded else "through an MLP"
        return f"length={self.length}, k={self.k_width}, v={self.v_width}, {how}"


def _additive(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attended, the dtype's minimum where blocked (eager kernels add the mask)."""
    zero = torch.zeros((), dtype=dtype, device=keep.device)
    return torch.where(keep, zero, torch.finfo(dtype).min)


def fold_prefix(model: nn.Module, name: str | None = None) -> nn.Module:
    """Fold the reparametrisation MLP of prefix set ``name`` (every unfolded prefix set when
    ``None``) into the prefixes it computes, for inference; the set's spec becomes
    ``prefix_projection=False``, so `adarec.save_adapters` writes, and `adarec.load_adapters`
    rebuilds, the folded form."""
    found = [a for _, _, a in iter_adapters(model) if isinstance(a, PrefixAdapter)
             and (a.set_name == name if name is not None else not a.folded)]
    if name is not None and not found:
        raise AdapterStateError(f"no prefix tuning set named {name!r} in {type(model).__name__}")
    for adapter in found:
        adapter.fold()
        adapter.spec = adapter.spec.replace(prefix_projection=False)
    return model


def _attention_module(model: nn.Module, block: BlockSites) -> str:
    """The module holding the block's q/k/v projections (the one that calls the kernel)."""
    names = [block.names.get(r) for r in ("q", "k", "v")]
    if not all(names):
        raise UnsupportedModuleError(
            f"prefix tuning needs a Hugging Face attention module (query, key and value "
            f"projections, dispatching through transformers' AttentionInterface) in block "
            f"{block.name}; adarec found {dict(zip(('q', 'k', 'v'), names, strict=True))} in "
            f"{type(model.get_submodule(block.name)).__name__}"
        )
    parents = {ancestors(str(n))[0] for n in names}
    while len(parents) > 1:  # BERT-like q/k/v in one module, or in sibling wrappers
        parents = {ancestors(p)[0] if p else p for p in parents}
    return parents.pop()


def _kv_widths(model: nn.Module, block: BlockSites) -> tuple[int, int]:
    if block.fused and block.fused_widths and {"k", "v"} <= set(block.fused):
        widths = dict(zip(block.fused, block.fused_widths, strict=True))
        return widths["k"], widths["v"]
    out = []
    for role in ("k", "v"):
        name = block.names.get(role)
        dims = module_widths(model.get_submodule(name)) if name else None
        if dims is None or (block.fused and role in block.fused):
            raise UnsupportedModuleError(
                f"prefix tuning cannot tell the {role} width of block {block.name} ({name})"
            )
        out.append(dims[1])
    return out[0], out[1]


def place(ctx: PlaceContext) -> list[Site]:
    """One site per attention module of every block, hosted by that module."""
    sites = []
    for stack in ctx.stacks:
        if not stack.sites:
            raise UnsupportedModuleError(
                f"prefix tuning needs the attention modules of stack {stack.name!r}"
            )
        for block in stack.sites:
            attn = _attention_module(ctx.model, block)
            check_attention_module(ctx.model.get_submodule(attn), "prefix tuning")
            sites.append(Site(attn, attn, "attention", block.index, stack.name))
    return sites


def build(ctx: BuildContext) -> PrefixAdapter:
    assert ctx.stack is not None and ctx.model is not None
    block = next(b for b in ctx.stack.sites if b.index == ctx.site.block)
    k_width, v_width = _kv_widths(ctx.model, block)
    spec = ctx.spec
    return PrefixAdapter(spec.prefix_length, k_width, v_width, ctx.stack.hidden,
                         spec.prefix_hidden if spec.prefix_projection else None,
                         ctx.stack.causal)


def attach(adapter: AdapterLayer, ctx: AttachContext) -> None:
    assert isinstance(adapter, PrefixAdapter)
    ctx.attention(ctx.module, adapter.rewrite_attention)


def parameter_count(length: int, k_width: int, v_width: int, hidden: int,
                    mlp_hidden: int | None) -> int:
    """Trainable parameters of one attention module's prefix (folded when ``mlp_hidden`` is
    ``None``)."""
    if mlp_hidden is None:
        return length * (k_width + v_width)
    return (length * hidden + hidden * mlp_hidden + mlp_hidden
            + mlp_hidden * (k_width + v_width) + k_width + v_width)


def _peft_layout(model: nn.Module, name: str) -> tuple[torch.Tensor, dict[str, Any]]:
    """``prompt_embeddings`` ``[P, L * 2 * token_dim]`` (per layer its keys then its values, as
    peft reads them) and the peft config fields of a folded set; refused (with the reason) where
    peft's format does not hold the set exactly."""
    adapters = [a for _, _, a in iter_adapters(model) if a.set_name == name]
    if not adapters or not all(isinstance(a, PrefixAdapter) for a in adapters):
        raise AdapterStateError(f"set {name!r} is not a prefix tuning set")
    prefixes = [a for a in adapters if isinstance(a, PrefixAdapter)]
    reasons = []
    if not all(a.folded for a in prefixes):
        reasons.append("it is not folded (peft loads flattened prefixes only with "
                       "prefix_projection=False); call fold_prefix(model) first")
    if len({a.site.stack for a in prefixes}) != 1:
        reasons.append("it spans several block stacks; peft prefixes one")
    if len({(a.k_width, a.v_width) for a in prefixes}) != 1 or prefixes[0].k_width != \
            prefixes[0].v_width:
        reasons.append("its layers differ in key/value width; peft uses one token_dim")
    if reasons:
        raise AdapterStateError(f"prefix set {name!r} cannot be written in peft's "
                                "PREFIX_TUNING format: " + "; ".join(reasons))
    prefixes.sort(key=lambda a: a.site.block if a.site.block is not None else -1)
    parts = [t.detach() for a in prefixes for t in a.key_value()]
    fields = {"num_virtual_tokens": prefixes[0].length, "num_layers": len(prefixes),
              "token_dim": prefixes[0].k_width, "prefix_projection": False}
    return torch.cat(parts, dim=1), fields


PREFIX = register_method(MethodDef(
    name="prefix",
    placement=Placement.MODEL,
    build=build,
    fields=(PREFIX_LENGTH, PREFIX_PROJECTION, PREFIX_HIDDEN),
    place=place,
    attach=attach,
    hints={"prompt_length": "prefix_length", "bottleneck": "prefix_hidden"},
    merge_note="it adds key/value positions, which no weight change reproduces; fold_prefix "
               "folds its reparametrisation MLP into the prefixes instead",
    summary="trainable key/value positions in every attention layer",
))


def export_peft_prefix(model: nn.Module, path: PathLike, name: str = "default") -> Path:
    """Write folded prefix set ``name`` as a peft PREFIX_TUNING folder (``prompt_embeddings``,
    ``prefix_projection=False``) that ``peft.PeftModel.from_pretrained(base, path)`` loads.

    The prefixes are carried exactly, but peft feeds them as ``past_key_values``, so the model
    numbers the real tokens from ``P`` (absolute positions shift; rotary queries turn by ``P``
    more), where adarec's real tokens keep positions ``0..T-1``: peft's outputs equal adarec's
    with ``position_ids = P + arange(T)``, not adarec's own (a warning says so). Only models
    that take a cache (decoders) can load it in peft. Refused, with the reason, where the
    format cannot hold the set."""
    embeddings, fields = _peft_layout(model, name)
    warnings.warn(
        f"peft places the real tokens after the {fields['num_virtual_tokens']} prefix "
        "positions (position ids start at the prefix length); adarec's prefix has no position, "
        "so peft's outputs match adarec's only with position_ids shifted by the prefix length",
        stacklevel=2,
    )
    config = getattr(model, "config", None)
    heads = getattr(config, "num_key_value_heads", None) or getattr(
        config, "num_attention_heads", None)
    if not isinstance(heads, int):
        raise AdapterStateError(f"{type(model).__name__} has no config.num_attention_heads")
    peft_config = {
        "peft_type": "PREFIX_TUNING", "task_type": "FEATURE_EXTRACTION",
        "base_model_name_or_path": getattr(config, "_name_or_path", None) or None,
        "inference_mode": True, "num_transformer_submodules": 1, "num_attention_heads": heads,
        "encoder_hidden_size": fields["token_dim"], **fields,
    }
    with atomic_folder(path, "adapter_config.json") as tmp:
        write_weights(tmp, "adapter_model.safetensors",
                      {"prompt_embeddings": embeddings.contiguous()})
        write_json(tmp / "adapter_config.json", peft_config)
    return Path(path)
