"""K-Adapter (Wang et al. 2021) as used by Fu et al.: a side network over the frozen model.

The side network reads the outputs of chosen blocks (``kadapter_layers``). Adapter layer ``j``
takes ``t_j + o_{j-1}`` (the j-th tapped hidden state plus the previous adapter layer's output,
``o_0 = 0``) and computes ``o_j = h + up(enc(down(h)))`` with ``enc`` a few post-LN transformer
encoder layers of width ``k``. The model's final hidden state ``y`` (the last block's output) is
replaced by ``fuse([y; o_last])``, a linear map initialised to ``[I, 0]`` with zero bias, so the
model is exactly unchanged at initialisation.

The side network's attention obeys the model's masking: padded keys are never attended to, and in
a causal model (SASRec, GPT-2) no position sees a later one. (The paper's code let the side
network of the causal user encoder see future items.) Every query may see itself, so the rows of
padded queries are never empty and never produce NaN.

Where the masks come from depends on the blocks. Hugging Face models and SASRec take a
``[batch, length]`` padding mask (1 on real tokens) where the user calls them. torch's
``nn.TransformerEncoderLayer`` takes ``src_mask`` (an ``[L, L]`` attention mask),
``src_key_padding_mask`` (``[batch, L]``) and ``is_causal``, in torch's convention (True or -inf
where attention is blocked): those are read from the last block's own call, so whatever its
encoder (or a user's loop) passes is what the side network obeys; and a ``batch_first=False``
stack is transposed for the side network, which must attend along the sequence, never across
users. A mask it cannot follow (per-head, or an additive bias other than 0/-inf) is refused.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
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
    REDUCTION_FACTOR,
    AdapterSpec,
    SpecField,
    block_indices,
    exactly_one,
    int_in,
    normalise_layers,
)
from ..stacks import MASK_ARGS, TORCH_LAYER_ARGS
from .base import AdapterLayer

KADAPTER_LAYERS = SpecField(
    "kadapter_layers", (0, -1), block_indices(allow_none=False),
    "must be a non-empty sequence of distinct block indices", "blocks the side network reads",
    sequence=True,
)
KADAPTER_DEPTH = SpecField("kadapter_depth", 2, int_in(1, 64), "must be an integer in [1, 64]",
                           "side-network encoder layers per adapter layer")
KADAPTER_HEADS = SpecField("kadapter_heads", 4, int_in(1, 1024),
                           "must be an integer in [1, 1024]", "side-network attention heads")
KADAPTER_CAUSAL = SpecField(
    "kadapter_causal", None, lambda x: x is None or isinstance(x, bool),
    "must be None (detect), True or False", "causal side attention (None: detect)",
)


class SideEncoderLayer(nn.Module):
    """A small post-LN transformer encoder layer that takes a boolean attention mask."""

    def __init__(self, k: int, heads: int, activation: str, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(k, 3 * k)
        self.out = nn.Linear(k, k)
        self.ln1 = nn.LayerNorm(k)
        self.fc1 = nn.Linear(k, 4 * k)
        self.act = ACT2FN[activation]
        self.fc2 = nn.Linear(4 * k, k)
        self.ln2 = nn.LayerNorm(k)

    def forward(self, h: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        b, t, k = h.shape
        q, key, v = self.qkv(h).view(b, t, 3, self.heads, k // self.heads).permute(2, 0, 3, 1, 4)
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, key, v, attn_mask=allowed, dropout_p=p)
        h = self.ln1(h + F.dropout(self.out(a.transpose(1, 2).reshape(b, t, k)), p, self.training))
        ff = self.fc2(F.dropout(self.act(self.fc1(h)), p, self.training))
        return self.ln2(h + F.dropout(ff, p, self.training))


class KAdapterLayer(nn.Module):
    """``h + up(enc(down(h)))``."""

    def __init__(self, hidden: int, k: int, depth: int, heads: int, act: str, drop: float) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, k)
        self.encoder = nn.ModuleList(SideEncoderLayer(k, heads, act, drop) for _ in range(depth))
        self.up = nn.Linear(k, hidden)

    def forward(self, h: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
        z = self.down(h)
        for layer in self.encoder:
            z = layer(z, allowed)
        return h + self.up(z)


class KAdapter(AdapterLayer):
    """The side network plus the fusion; attached to the last block, whose output it replaces.

    ``slots`` are the tapped block indices in order; blocks other than the host report their
    output through `tap` (a forward hook), and `start` (a forward pre-hook on the module the user
    calls) clears what an interrupted forward may have left and reads the padding mask there
    (``mask_arg``); for torch-style blocks `read_layer_call` (a pre-hook on the host block) reads
    its masks instead (``layer_args``).
    """

    mixed_batch_refusal = (
        "its side network taps the blocks of the whole batch and replaces the last block's "
        "output; serve its sets one per call (group rows by set)"
    )

    def __init__(
        self, hidden: int, k: int, slots: list[int], host: int, depth: int, heads: int,
        activation: str, dropout: float, causal: bool, batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            KAdapterLayer(hidden, k, depth, heads, activation, dropout) for _ in slots
        )
        self.fuse = nn.Linear(2 * hidden, hidden)
        with torch.no_grad():
            self.fuse.weight.zero_()
            self.fuse.weight[:, :hidden].copy_(torch.eye(hidden))
            self.fuse.bias.zero_()
        self.slots, self.host, self.causal = list(slots), host, causal
        self.batch_first = batch_first
        self.mask_arg: tuple[str, int | None] | None = None
        self.layer_args: dict[str, tuple[str, int | None] | None] = {}
        self._taps: dict[int, torch.Tensor] = {}
        self._clear()

    def _clear(self) -> None:
        self._real: torch.Tensor | None = None  # [B, L] bool, True on real positions
        self._attn: torch.Tensor | None = None  # [L, L] bool, True where a query may attend
        self._causal_call = False

    def start(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._taps = {}
        self._clear()
        if self.active and self.mask_arg is not None:
            mask = read_arg(self.mask_arg, args, kwargs)
            if mask is not None:
                self._real = mask != 0

    def read_layer_call(
        self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        """Pre-hook on a torch-style host block: its ``src_mask``, ``src_key_padding_mask`` and
        ``is_causal`` (True or -inf where attention is blocked)."""
        if not self.active:
            return
        attn = read_arg(self.layer_args.get("src_mask"), args, kwargs)
        pad = read_arg(self.layer_args.get("src_key_padding_mask"), args, kwargs)
        self._attn = None if attn is None else ~_blocked(attn, "src_mask")
        self._real = None if pad is None else ~_blocked(pad, "src_key_padding_mask")
        self._causal_call = read_arg(self.layer_args.get("is_causal"), args, kwargs) is True

    def tap(self, slot: int, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.active:
            self._taps[slot] = output[0] if isinstance(output, tuple) else output

    def allowed(self, t: int, device: torch.device) -> torch.Tensor | None:
        """``[B|1, 1, t, t]`` bool, True where a query may attend; ``None`` when all may."""
        real, attn, causal = self._real, self._attn, self.causal or self._causal_call
        self._clear()
        if real is None and attn is None and not causal:
            return None
        ok = torch.ones(1, t, t, dtype=torch.bool, device=device)
        if causal:
            ok = ok.tril()
        if attn is not None:
            if tuple(attn.shape) != (t, t):
                raise AdapterStateError(
                    f"K-Adapter got an attention mask of shape {tuple(attn.shape)} for a sequence "
                    f"of length {t}; it follows [{t}, {t}] masks (not per-head ones)"
                )
            ok = ok & attn.to(device)
        if real is not None:
            if real.dim() != 2 or real.size(1) != t:
                raise AdapterStateError(
                    f"K-Adapter got a padding mask of shape {tuple(real.shape)} for a sequence of "
                    f"length {t}; it needs a [batch, {t}] mask"
                )
            ok = ok & real.to(device)[:, None, :]
        return (ok | torch.eye(t, dtype=torch.bool, device=device)).unsqueeze(1)

    def forward(self, x: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        taps = {**self._taps, self.host: y}
        self._taps = {}  # never keep activations (deepcopy, memory) past this forward
        missing = [s for s in self.slots if s not in taps]
        if missing:
            raise AdapterStateError(
                f"K-Adapter set {self.set_name!r} has no output of block(s) {missing} in this "
                "forward; its blocks must run once each, in order, within one call of the model"
            )
        if any(t.is_nested for t in taps.values()):
            raise AdapterStateError(
                f"K-Adapter set {self.set_name!r} got a nested (ragged) tensor from its blocks "
                "(torch's TransformerEncoder fast path); inject into the encoder itself, which "
                "then takes the padded path"
            )
        if not self.batch_first:  # [L, B, H]: the side network attends along L, per user
            taps = {k: v.transpose(0, 1) for k, v in taps.items()}
            y = taps[self.host]
        allowed = self.allowed(y.size(1), y.device)
        o = torch.zeros_like(y)
        for slot, layer in zip(self.slots, self.layers, strict=True):
            o = layer(taps[slot] + o, allowed)
        fused = self.fuse(torch.cat([y, o], dim=-1))
        return fused if self.batch_first else fused.transpose(0, 1)

    @property
    def reads_blocks(self) -> tuple[int, ...]:
        """Blocks whose outputs this adapter reads: a frozen-prefix cache must start below them."""
        return tuple(self.slots)

    def extra_repr(self) -> str:
        return f"taps={self.slots}, causal={self.causal}, batch_first={self.batch_first}"


def _blocked(mask: torch.Tensor, what: str) -> torch.Tensor:
    """Where a torch-convention mask blocks attention: True (bool) or -inf (float; the most
    negative finite value is read as -inf too). Anything but 0 elsewhere is an attention bias,
    which a boolean side-network mask cannot reproduce: refused."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        blocked = torch.isneginf(mask) | (mask == torch.finfo(mask.dtype).min)
        if not bool((blocked | (mask == 0)).all()):
            raise AdapterStateError(
                f"K-Adapter follows {what} masks that allow (0) or block (-inf, True) positions; "
                "this one adds other values (an attention bias), which its side network cannot "
                "reproduce"
            )
        return blocked
    raise AdapterStateError(f"K-Adapter cannot read a {mask.dtype} {what}; use bool or float")


def validate(spec: AdapterSpec) -> None:
    exactly_one(spec, "bottleneck", "reduction_factor")
    if spec.bottleneck is not None and spec.bottleneck % spec.kadapter_heads:
        raise SpecError(f"AdapterSpec.bottleneck={spec.bottleneck} is invalid: must be divisible "
                        f"by kadapter_heads={spec.kadapter_heads} for K-Adapter")


def place(ctx: PlaceContext) -> list[Site]:
    """One side network per block stack, hosted by the last block (whose output it replaces)."""
    sites = []
    for stack in ctx.stacks:
        n = len(stack.blocks)
        if stack.runs is not None and stack.runs != n:
            raise UnsupportedModuleError(
                f"{type(ctx.model).__name__} runs its {n} block module(s) {stack.runs} times "
                "(shared layers, as in ALBERT); K-Adapter needs one call per block"
            )
        if len({id(ctx.model.get_submodule(b)) for b in stack.blocks}) != n:
            raise UnsupportedModuleError(
                f"{type(ctx.model).__name__}'s stack {stack.name!r} lists the same block module "
                "more than once; K-Adapter taps each block once per forward"
            )
        normalise_layers(ctx.spec.kadapter_layers, n, "kadapter_layers")  # refuse early
        sites.append(Site(stack.blocks[-1], stack.root, "stack_output", n - 1, stack.name))
    return sites


def build(ctx: BuildContext) -> KAdapter:
    spec, stack = ctx.spec, ctx.stack
    assert stack is not None
    k = spec.bottleneck_for(ctx.d_out)
    if k % spec.kadapter_heads:
        raise SpecError(
            f"K-Adapter width {k} must be divisible by AdapterSpec.kadapter_heads="
            f"{spec.kadapter_heads}"
        )
    slots = normalise_layers(spec.kadapter_layers, len(stack.blocks), "kadapter_layers")
    causal = stack.causal if spec.kadapter_causal is None else spec.kadapter_causal
    return KAdapter(ctx.d_out, k, slots, len(stack.blocks) - 1, spec.kadapter_depth,
                    spec.kadapter_heads, spec.activation, spec.dropout, causal, stack.batch_first)


def attach(adapter: AdapterLayer, ctx: AttachContext) -> None:
    """Read the masks (where the user calls the model, or, for torch-style blocks, from the host
    block's own call); tap the other read blocks."""
    assert isinstance(adapter, KAdapter) and ctx.stack is not None
    root = ctx.submodule(ctx.stack.root)
    host = ctx.module
    if arg_locator(host, ("src_key_padding_mask",)) is not None:  # torch's encoder layer
        adapter.layer_args = {a: arg_locator(host, (a,)) for a in TORCH_LAYER_ARGS}
        ctx.pre_hook(host, adapter.read_layer_call, with_kwargs=True)
    else:
        adapter.mask_arg = arg_locator(root, MASK_ARGS)
    ctx.pre_hook(root, adapter.start, with_kwargs=True)
    for slot in adapter.slots:
        block = ctx.stack.blocks[slot]
        if block != ctx.site.target:
            ctx.forward_hook(block, functools.partial(adapter.tap, slot))


KADAPTER = register_method(MethodDef(
    name="kadapter",
    placement=Placement.MODEL,
    build=build,
    fields=(BOTTLENECK, REDUCTION_FACTOR, ACTIVATION, DROPOUT, KADAPTER_LAYERS, KADAPTER_DEPTH,
            KADAPTER_HEADS, KADAPTER_CAUSAL),
    defaults={"bottleneck": 64},
    place=place,
    attach=attach,
    validate=validate,
    hints={"layers": "kadapter_layers", "positions": "kadapter_layers"},
    merge_note="its side network is non-linear and adds to the model output, not to a weight",
    summary="side network over tapped block outputs, fused into the final hidden state",
))
