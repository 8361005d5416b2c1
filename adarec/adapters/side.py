"""Decoupled side network (``"side"``): a small network beside a frozen encoder, not inside it.

Why: adapters inside the blocks save parameters, not time. Every step still runs the whole
encoder forward and an input-gradient backward through every block above the lowest adapter.
A *side* network reads the frozen encoder's hidden states through shortcuts ("ladders", Sung et
al., Ladder Side-Tuning, NeurIPS 2022) and is the only thing gradients flow through, so the
backbone runs once without autograd, and, because it never changes, its states can be computed
once per item and cached: training then never runs the backbone at all (Fu et al., IISAN,
SIGIR 2024, which caches the per-layer [CLS] states of BERT and ViT).

The computation (``k`` tapped blocks ``t_1 < ... < t_k``, side width ``r``, hidden width ``H``)::

    s_0 = 0
    s_i = block_i( g_i * down_i(h_{t_i}) + (1 - g_i) * s_{i-1} ),  g_i = sigmoid(a_i / tau)
    correction = up(norm(s_k))                      # [.., H]
    item representation = pool(h_final) + correction

``down_i`` (H -> r) narrows each tapped state into the side stream as in LST; the scalar gates
``g_i`` (LST's and IISAN's learnable gates, ``tau = 0.1``) mix it with the stream so far;
``block_i`` is a pre-LN residual block of width ``r`` (an MLP of width ``expansion * r``; in
``"tokens"`` mode also a small self-attention over the item's tokens); ``up`` (r -> H) maps back.

States (``"pooled"`` or ``"tokens"``): ``"pooled"`` pools every tapped state first (as the item
encoder pools: [CLS], masked mean or, on a causal model, the last real token), so the side
network works on one vector per item and layer and a cache holds ``(n_items + 1) * (k + 1) * H``
numbers (IISAN's choice); ``"tokens"`` keeps every token, lets the side blocks attend across
them and pools at the end, at ``T`` times the cache memory and compute. adarec measured both
(docs/benchmarks.md) and defaults to ``"pooled"``.

Initialisation: gates at 0.5; ``down``/blocks with torch's default Linear init; ``up`` is zero,
so at initialisation the representation is exactly the frozen encoder's pooled output (the strong
linear-probe starting point) and training learns a correction to it.

Placement: the set lives on the module the user calls (the Hugging Face model); forward hooks on
the tapped blocks record their outputs, a pre-hook reads ``attention_mask``. Called directly, the
model returns ``last_hidden_state + correction`` (broadcast over tokens, pooled with
``options.pooling``), so a pooled read-out of the output is ``pool(h_final) + correction``.
Item encoders do not use that path: they ask for the states (`capture`) with the backbone in
eval mode and without autograd, or read them from their hidden-state cache, and call
`SideNetwork.correction` themselves with their own pooling.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from ..calls import arg_locator, read_arg
from ..errors import AdapterStateError, SpecError, UnsupportedModuleError
from ..registry import (
    AttachContext,
    BuildContext,
    MethodDef,
    PlaceContext,
    Placement,
    register_method,
)
from ..sites import Site
from ..spec import (
    ACTIVATION,
    BOTTLENECK,
    DROPOUT,
    LAYERS,
    REDUCTION_FACTOR,
    AdapterSpec,
    SpecField,
    exactly_one,
    int_in,
    normalise_layers,
    number_in,
)
from ..stacks import MASK_ARGS
from .base import AdapterLayer

STATE_MODES = ("pooled", "tokens")
POOLINGS = ("cls", "mean", "last")
Pool = Callable[[Tensor, Tensor | None], Tensor]
"""``pool(hidden [B, T, d], mask [B, T] | None) -> [B, d]``."""


SIDE_STATES = SpecField("side_states", "pooled", lambda x: x in STATE_MODES,
                        f"must be one of {list(STATE_MODES)}",
                        "pooled per-block states, or every token (attention in the side blocks)")
SIDE_POOLING = SpecField("side_pooling", "cls", lambda x: x in POOLINGS,
                         f"must be one of {list(POOLINGS)}",
                         "pooling when the model is called directly (item encoders use theirs)")
SIDE_STRIDE = SpecField("side_stride", 2, int_in(1, 1024), "must be an integer in [1, 1024]",
                        "with layers=None: tap every side_stride-th block, from the last down")
SIDE_EXPANSION = SpecField("side_expansion", 2, int_in(1, 64), "must be an integer in [1, 64]",
                           "MLP width of the side blocks, in multiples of the side width")
SIDE_HEADS = SpecField("side_heads", 4, int_in(1, 1024), "must be an integer in [1, 1024]",
                       "attention heads of the side blocks (token states)")
SIDE_GATE_TEMPERATURE = SpecField("side_gate_temperature", 0.1,
                                  number_in(0.0, 1e3, low_open=True),
                                  "must be a number in (0, 1000]",
                                  "temperature of the ladder gates sigmoid(a / t)")
SIDE_OUTPUT_SCALE = SpecField("side_output_scale", False, lambda x: isinstance(x, bool),
                              "must be a bool",
                              "ReZero-style: a zero scalar times a random up-projection "
                              "(instead of a zero up-projection)")
SIDE_FIELDS = (SIDE_STATES, SIDE_POOLING, SIDE_STRIDE, SIDE_EXPANSION, SIDE_HEADS,
               SIDE_GATE_TEMPERATURE, SIDE_OUTPUT_SCALE)


@dataclass(frozen=True)
class SideOptions:
    """The side network's own settings, read from the spec's ``side_*`` fields.

    The generic spec fields keep their meaning: ``bottleneck`` (or ``reduction_factor``) is the
    side width ``r``, ``layers`` the tapped blocks (``None``: every ``side_stride``-th block
    counted down from the last one), ``activation`` and ``dropout`` those of the side blocks.
    """

    states: str = "pooled"
    pooling: str = "cls"
    stride: int = 2
    expansion: int = 2
    heads: int = 4
    gate_temperature: float = 0.1
    output_scale: bool = False

    @classmethod
    def from_spec(cls, spec: Any) -> SideOptions:
        return cls(**{f.name: getattr(spec, f"side_{f.name}") for f in fields(cls)})


def side_taps(layers: Sequence[int] | None, n_blocks: int, stride: int) -> list[int]:
    """Tapped block indices: ``layers`` resolved, or every ``stride``-th block ending at the last
    (6 blocks, stride 2: blocks 1, 3, 5)."""
    if layers is None:
        return sorted(range(n_blocks - 1, -1, -stride))
    return normalise_layers(layers, n_blocks)


def pool_hidden(hidden: Tensor, mask: Tensor | None, pooling: str) -> Tensor:
    """The one pooling of adarec (item encoders and side networks call it): ``"cls"`` the first
    real token (the first position unless the row is left-padded), ``"mean"`` the mean over real
    tokens (``mask`` 1 on them), ``"last"`` the last real token, found from the mask whatever
    side the row is padded on (a causal model's only state that has read the whole text). A row
    with no real token pools position 0 (``"cls"``, ``"last"``)."""
    if pooling in ("cls", "last"):
        if mask is None:
            return hidden[:, 0 if pooling == "cls" else -1]
        real = mask.to(device=hidden.device, dtype=torch.long)
        if pooling == "cls":
            at = real.argmax(1)  # first maximum: the first real position
        else:  # the largest position holding a real token; 0 for an empty row
            at = (real * torch.arange(1, real.size(1) + 1, device=real.device)).argmax(1)
        return hidden[torch.arange(hidden.size(0), device=hidden.device), at]
    if pooling != "mean":
        raise SpecError(f"pooling={pooling!r} is not one of {list(POOLINGS)}")
    if mask is None:
        return hidden.mean(1)
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class SideBlock(nn.Module):
    """Pre-LN residual block of width ``r``: an MLP, and with ``heads`` a self-attention over
    the tokens first. Reusable outside adarec's adapters (the multimodal fusion uses it)."""

    def __init__(self, r: int, expansion: int, activation: str, dropout: float,
                 heads: int | None = None) -> None:
        super().__init__()
        if heads is not None and r % heads:
            raise SpecError(f"side width {r} must be divisible by the side heads ({heads})")
        self.heads, self.dropout = heads, dropout
        if heads is not None:
            self.ln_attn = nn.LayerNorm(r)
            self.qkv = nn.Linear(r, 3 * r)
            self.out = nn.Linear(r, r)
        self.ln = nn.LayerNorm(r)
        self.fc1 = nn.Linear(r, expansion * r)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(expansion * r, r)

    def forward(self, s: Tensor, allowed: Tensor | None = None) -> Tensor:
        p = self.dropout if self.training else 0.0
        if self.heads is not None:
            b, t, r = s.shape
            q, k, v = self.qkv(self.ln_attn(s)).view(b, t, 3, self.heads, r // self.heads).permute(
                2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=p)
            s = s + F.dropout(self.out(a.transpose(1, 2).reshape(b, t, r)), p, self.training)
        return s + F.dropout(self.fc2(self.act(self.fc1(self.ln(s)))), p, self.training)


def attention_allowed(mask: Tensor | None, t: int, device: torch.device) -> Tensor | None:
    """``[B, 1, t, t]`` bool: a query may attend to real keys and always to itself (no empty
    rows, no NaN on padded queries); ``None`` when every key is real."""
    if mask is None:
        return None
    keys = mask.to(device=device, dtype=torch.bool)[:, None, :]
    return (keys | torch.eye(t, dtype=torch.bool, device=device)).unsqueeze(1)


class SideNetwork(AdapterLayer):
    """The side network of one adapter set (see the module docstring)."""

    mixed_batch_refusal = (
        "its side network taps the blocks of the whole batch and replaces the model's output; "
        "serve its sets one per call (group rows by set)"
    )

    decoupled = True
    """Trains beside the backbone, never inside it: policies must not unfreeze backbone norms
    for it, and item encoders run the backbone without autograd and may cache its states."""

    def __init__(self, hidden: int, width: int, slots: Sequence[int], options: SideOptions,
                 activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        if not slots:
            raise SpecError("a side network needs at least one tapped block")
        self.hidden, self.width, self.options = hidden, width, options
        self.slots = list(slots)
        self.tokens = options.states == "tokens"
        heads = options.heads if self.tokens else None
        self.downs = nn.ModuleList(nn.Linear(hidden, width) for _ in self.slots)
        self.gates = nn.Parameter(torch.zeros(len(self.slots)))
        self.blocks = nn.ModuleList(
            SideBlock(width, options.expansion, activation, dropout, heads) for _ in self.slots)
        self.norm = nn.LayerNorm(width)
        self.up = nn.Linear(width, hidden)
        if options.output_scale:  # ReZero-style: a zero scalar, a random ``up``
            self.scale = nn.Parameter(torch.zeros(()))
        else:
            self.register_parameter("scale", None)
            nn.init.zeros_(self.up.weight)
            nn.init.zeros_(self.up.bias)
        self.mask_arg: tuple[str, int | None] | None = None
        self._taps: dict[int, Tensor] = {}
        self._mask: Tensor | None = None
        self._capturing = False

    # ---------------------------------------------------------------------- the computation
    def stream(self, states: Sequence[Tensor], allowed: Tensor | None = None) -> Tensor:
        """The side stream after the last tapped block: ``[B, r]`` (pooled) or ``[B, T, r]``."""
        if len(states) != len(self.slots):
            raise AdapterStateError(
                f"side network {self.set_name!r} reads {len(self.slots)} states (blocks "
                f"{self.slots}), got {len(states)}")
        dtype = self.up.weight.dtype
        gates = torch.sigmoid(self.gates / self.options.gate_temperature)
        s: Tensor | None = None
        for i, (h, down, block) in enumerate(zip(states, self.downs, self.blocks, strict=True)):
            x = gates[i] * down(h.to(dtype))
            s = x if s is None else x + (1 - gates[i]) * s
            s = block(s, allowed)
        assert s is not None
        return s

    def correction(self, states: Sequence[Tensor], mask: Tensor | None = None,
                   pool: Pool | None = None) -> Tensor:
        """``[B, H]`` to add to the pooled final state. Pooled mode: ``states`` are ``[B, H]``
        pooled tapped states. Tokens mode: ``[B, T, H]`` token states with ``mask`` ``[B, T]``,
        pooled at the end with ``pool`` (default: ``options.pooling``)."""
        if not self.tokens:
            return self._out(self.stream(states))
        t = states[0].size(1)
        s = self.stream(states, attention_allowed(mask, t, states[0].device))
        pooled = (pool or self._default_pool)(s, mask)
        return self._out(pooled)

    def _out(self, s: Tensor) -> Tensor:
        out = self.up(self.norm(s))
        return out if self.scale is None else self.scale * out

    def _default_pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        return pool_hidden(hidden, mask, self.options.pooling)

    # ---------------------------------------------------------------------- hooks
    def start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Forward pre-hook on the model: forget an interrupted forward, read the mask."""
        self._taps, self._mask = {}, None
        if self.active or self._capturing:
            self._mask = read_arg(self.mask_arg, args, kwargs)

    def tap(self, slot: int, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        """Forward hook on a tapped block: keep its output (no autograd history: the backbone
        is frozen, and a side network never back-propagates into it)."""
        if self.active or self._capturing:
            h = output[0] if isinstance(output, tuple) else output
            self._taps[slot] = h.detach()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Within the block the tapped states are recorded (`take`) but the model's output is
        left unchanged, whether the set is active or not."""
        self._capturing, self._taps = True, {}
        try:
            yield
        finally:
            self._capturing = False

    def take(self) -> tuple[list[Tensor], Tensor | None]:
        """The states recorded in the last forward, in tap order, and its mask; then forgets
        them (activations are never kept past one forward)."""
        taps, mask = self._taps, self._mask
        self._taps, self._mask = {}, None
        missing = [s for s in self.slots if s not in taps]
        if missing:
            raise AdapterStateError(
                f"side network {self.set_name!r} saw no output of block(s) {missing} in this "
                "forward; its blocks must run once each within one call of the model")
        return [taps[s] for s in self.slots], mask

    def forward(self, x: Tensor | None, y: Any) -> Any:
        """Hook of the model: its output with ``correction`` added to ``last_hidden_state``."""
        if self._capturing:
            return y
        states, mask = self.take()
        if not self.tokens:
            states = [pool_hidden(h, mask, self.options.pooling) for h in states]
        hidden = y if isinstance(y, Tensor) else y[0]
        new = hidden + self.correction(states, mask).unsqueeze(1).to(hidden.dtype)
        if isinstance(y, Tensor):
            return new
        y["last_hidden_state"] = new  # a transformers ModelOutput (an OrderedDict)
        return y

    def extra_repr(self) -> str:
        return (f"taps={self.slots}, states={self.options.states!r}, width={self.width}, "
                f"hidden={self.hidden}")


def validate(spec: AdapterSpec) -> None:
    exactly_one(spec, "bottleneck", "reduction_factor")
    if (spec.side_states == "tokens" and spec.bottleneck is not None
            and spec.bottleneck % spec.side_heads):
        raise SpecError(f"AdapterSpec.bottleneck={spec.bottleneck} is invalid: must be divisible "
                        f"by side_heads={spec.side_heads} for token states")


def place(ctx: PlaceContext) -> list[Site]:
    """One side network, hosted by the module the user calls (its output gets the correction);
    a model with one block stack, called once per block. On a causal model (a decoder LLM as an
    item encoder) it reads the last real token's (or the mean) state of each tapped block;
    ``side_pooling='cls'`` is refused there. Its direct-call output adds one per-sequence
    correction to every position: a pooled read-out, not next-token states."""
    name = type(ctx.model).__name__
    if len(ctx.stacks) != 1:
        raise UnsupportedModuleError(
            f"a side network needs a model with one block stack; {name} has "
            f"{[s.name for s in ctx.stacks]}: inject into the submodel that encodes the input")
    (stack,) = ctx.stacks
    n = len(stack.blocks)
    if stack.runs is not None and stack.runs != n:
        raise UnsupportedModuleError(
            f"{name} runs its {n} block module(s) {stack.runs} times (shared layers, as in "
            "ALBERT); a side network taps each block's one output")
    block = ctx.model.get_submodule(stack.blocks[-1])
    if arg_locator(block, ("src_key_padding_mask",)) is not None or not stack.batch_first:
        raise UnsupportedModuleError(
            f"a side network reads a Hugging Face [batch, length] attention_mask; the blocks of "
            f"{name} ({type(block).__name__}) take torch's src_mask/src_key_padding_mask, which "
            "it does not read: use it on a Hugging Face encoder (as the item encoders do)"
        )
    if stack.causal and ctx.spec.side_pooling == "cls":
        raise UnsupportedModuleError(
            f"{name} is causal: its first token has seen nothing, so side_pooling='cls' would "
            "read an empty state; use side_pooling='last' (the last real token, IISAN-Versa "
            "style) or 'mean'")
    side_taps(ctx.spec.layers, n, ctx.spec.side_stride)  # refuse bad layers early
    return [Site(stack.root, stack.root, "side", None, stack.name)]


def build(ctx: BuildContext) -> SideNetwork:
    spec, stack = ctx.spec, ctx.stack
    assert stack is not None
    slots = side_taps(spec.layers, len(stack.blocks), spec.side_stride)
    return SideNetwork(ctx.d_out, spec.bottleneck_for(ctx.d_out), slots,
                       SideOptions.from_spec(spec), spec.activation, spec.dropout)


def attach(adapter: AdapterLayer, ctx: AttachContext) -> None:
    """Read the padding mask where the user calls the model; record the tapped blocks."""
    assert isinstance(adapter, SideNetwork) and ctx.stack is not None
    root = ctx.submodule(ctx.stack.root)
    adapter.mask_arg = arg_locator(root, MASK_ARGS)
    ctx.pre_hook(root, adapter.start, with_kwargs=True)
    for slot in adapter.slots:
        ctx.forward_hook(ctx.stack.blocks[slot], functools.partial(adapter.tap, slot))


SIDE = register_method(MethodDef(
    name="side",
    placement=Placement.MODEL,
    build=build,
    fields=(BOTTLENECK, REDUCTION_FACTOR, LAYERS, ACTIVATION, DROPOUT, *SIDE_FIELDS),
    defaults={"bottleneck": 64},
    place=place,
    attach=attach,
    validate=validate,
    hints={"positions": "layers", "kadapter_layers": "layers"},
    merge_note="a non-linear network beside the model: there is no weight to fold it into",
    summary="decoupled side network: gated ladders from every other block into a narrow "
            "stream; no gradient enters the backbone, whose states can be cached",
))


def side_networks(model: nn.Module, active_only: bool = True) -> list[SideNetwork]:
    """The side networks in ``model`` (active ones by default), in injection order."""
    found = [m for m in model.modules() if isinstance(m, SideNetwork)
             and (m.active or not active_only)]
    return sorted(found, key=lambda m: getattr(m, "injection_order", 0))


__all__ = [
    "POOLINGS",
    "SIDE",
    "SIDE_FIELDS",
    "STATE_MODES",
    "SideBlock",
    "SideNetwork",
    "SideOptions",
    "attention_allowed",
    "pool_hidden",
    "side_networks",
    "side_taps",
]
