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
encoder pools: [CLS] or masked mean), so the side network works on one vector per item and layer
and a cache holds ``(n_items + 1) * (k + 1) * H`` numbers (IISAN's choice); ``"tokens"`` keeps
every token, lets the side blocks attend across them and pools at the end, at ``T`` times the
cache memory and compute. adarec measured both (docs/benchmarks.md) and defaults to ``"pooled"``.

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.activations import ACT2FN

from ..errors import AdapterStateError, SpecError
from .base import AdapterLayer, read_arg

STATE_MODES = ("pooled", "tokens")
POOLINGS = ("cls", "mean")
Pool = Callable[[Tensor, Tensor | None], Tensor]
"""``pool(hidden [B, T, d], mask [B, T] | None) -> [B, d]``."""


@dataclass(frozen=True)
class SideOptions:
    """The side network's own settings (``AdapterSpec.extra["side"]``, a dict of these fields).

    The generic spec fields keep their meaning: ``bottleneck`` (or ``reduction_factor``) is the
    side width ``r``, ``layers`` the tapped blocks (``None``: every ``stride``-th block counted
    down from the last one), ``activation`` and ``dropout`` those of the side blocks.
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
        raw = (getattr(spec, "extra", None) or {}).get("side", {})
        if not isinstance(raw, dict):
            raise SpecError(f"AdapterSpec.extra['side'] must be a dict, got {raw!r}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise SpecError(f"unknown side option(s) {unknown}; options: {sorted(known)}")
        opts = cls(**raw)
        opts.validate()
        return opts

    def validate(self) -> None:
        def bad(name: str, allowed: str) -> SpecError:
            return SpecError(f"side option {name}={getattr(self, name)!r} is invalid: {allowed}")

        if self.states not in STATE_MODES:
            raise bad("states", f"must be one of {list(STATE_MODES)}")
        if self.pooling not in POOLINGS:
            raise bad("pooling", f"must be one of {list(POOLINGS)}")
        for name in ("stride", "expansion", "heads"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise bad(name, "must be an integer >= 1")
        t = self.gate_temperature
        if not (isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0):
            raise bad("gate_temperature", "must be a number > 0")


def side_taps(layers: Sequence[int] | None, n_blocks: int, stride: int) -> list[int]:
    """Tapped block indices: ``layers`` resolved, or every ``stride``-th block ending at the last
    (6 blocks, stride 2: blocks 1, 3, 5)."""
    if layers is None:
        return sorted(range(n_blocks - 1, -1, -stride))
    from ..spec import normalise_layers

    return normalise_layers(layers, n_blocks)


def pool_hidden(hidden: Tensor, mask: Tensor | None, pooling: str) -> Tensor:
    """[CLS] (first token) or the mean over real tokens (``mask`` 1 on them)."""
    if pooling == "cls":
        return hidden[:, 0]
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


def build_side(spec: Any, d_in: int, d_out: int, shared: dict[str, Any]) -> SideNetwork:
    """``shared["slots"]`` holds the resolved tapped blocks."""
    options = SideOptions.from_spec(spec)
    return SideNetwork(d_out, spec.bottleneck_for(d_out), shared["slots"], options,
                       spec.activation, spec.dropout)


def side_networks(model: nn.Module, active_only: bool = True) -> list[SideNetwork]:
    """The side networks in ``model`` (active ones by default), in injection order."""
    found = [m for m in model.modules() if isinstance(m, SideNetwork)
             and (m.active or not active_only)]
    return sorted(found, key=lambda m: getattr(m, "injection_order", 0))


__all__ = [
    "POOLINGS",
    "STATE_MODES",
    "SideBlock",
    "SideNetwork",
    "SideOptions",
    "attention_allowed",
    "build_side",
    "pool_hidden",
    "side_networks",
    "side_taps",
]
