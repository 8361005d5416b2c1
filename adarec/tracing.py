"""Find a block's sublayers from one recorded dry run, instead of guessing from names or from the
order modules were registered in (which is not the order they run in).

One forward pass on a tiny input runs with forward hooks on the projections inside each block
(``nn.Linear``, transformers' ``Conv1D``, ``nn.MultiheadAttention``) and a `TorchFunctionMode`
that follows, for every tensor computed inside a block, which projection outputs it was computed
from (its *front*: the most recent projection calls on each path back, or the block's own input).
From that record:

- the **exits** are the projections whose output reaches the block's output: each ends one
  sublayer (the residual add comes after it);
- a sublayer is the exit and every projection it was computed from, back to the block input or
  an earlier exit; its **entries** read the sublayer's input;
- it is an **attention** sublayer when an attention op (softmax, scaled-dot-product attention)
  lies between its entries and its exit, a **cross**-attention when its keys come from outside
  the block (an encoder's states), else a **feed-forward** sublayer;
- **q, k, v** are the projections whose outputs the attention op takes as query, key and value
  (``scaled_dot_product_attention``'s arguments, or the two products around the softmax); one
  module in all three is a fused projection, whose part widths are known only when the value
  tensor is verified to be the last contiguous slice of its output.

Anything the record does not settle (no exit, no attention op, two candidates for one role) is
left unresolved, and a method that needs it is refused with what was seen (`TraceError`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from .adapters.base import ADAPTERS_ATTR, is_adapter
from .errors import TargetNotFoundError
from .sites import ROLES, BlockSites, SublayerSites

IN, EXT = -1, -2
"""Fronts of a block's hidden-state input and of its other tensor inputs (masks, encoder states)."""

_ATTENTION_OPS = ("softmax", "scaled_dot_product", "flash_attn", "flex_attention",
                  "multi_head_attention")
_PRODUCTS = ("matmul", "bmm", "baddbmm", "einsum", "__matmul__", "__rmatmul__")


class TraceError(TargetNotFoundError):
    """The dry run could not run, or did not settle where a sublayer or role is."""


def is_traced_unit(module: nn.Module) -> bool:
    """The modules a trace records as one call: linear-like projections and torch's MHA."""
    return (isinstance(module, (nn.Linear, nn.MultiheadAttention))
            or type(module).__name__ == "Conv1D")


# ------------------------------------------------------------------------------------ the record
@dataclass(frozen=True)
class Call:
    """One projection call inside a block, in call order."""

    order: int
    module: str
    type: str
    d_in: int
    d_out: int
    reads: frozenset[int]
    """The front of its input: earlier calls, `IN` or `EXT`."""
    after_attention: bool
    """An attention op lies between the previous projections and this call's input."""

    def describe_reads(self) -> str:
        parts = [{IN: "block input", EXT: "other block input"}.get(i, f"#{i}")
                 for i in sorted(self.reads, key=lambda r: (r < 0, r))]
        text = ", ".join(parts) or "constants"
        return text + (" (after attention)" if self.after_attention else "")


@dataclass(frozen=True)
class AttentionOp:
    """An attention op and the fronts of its query, key and value."""

    q: frozenset[int]
    k: frozenset[int]
    v: frozenset[int]
    shapes: tuple[tuple[int, ...], ...] = ()


@dataclass(frozen=True)
class Sublayer:
    kind: str
    """``mha`` (self-attention), ``cross`` (attention over another sequence) or ``ffn``."""
    calls: tuple[int, ...]
    entries: tuple[int, ...]
    exit: int
    op: AttentionOp | None = None


@dataclass
class BlockTrace:
    """What one block did in the dry run."""

    name: str
    type: str
    width: int
    calls: list[Call] = field(default_factory=list)
    output: frozenset[int] = frozenset()
    ops: list[AttentionOp] = field(default_factory=list)
    fused_widths: dict[int, tuple[int, ...]] = field(default_factory=dict)
    """Verified part widths (q, k, v) of fused projections, by call."""
    functional: set[str] = field(default_factory=set)
    """Projections whose weights were used without calling them (``F.linear`` on ``.weight``):
    the trace cannot see what they compute."""

    def describe(self) -> str:
        """The calls as a table, for error messages."""
        lines = [f"block {self.name} ({self.type}), residual width {self.width}; projection "
                 "calls in the dry run:"]
        for c in self.calls:
            lines.append(f"  #{c.order:<3} {c.module}  {c.type}  {c.d_in} -> {c.d_out}  "
                         f"reads: {c.describe_reads()}")
        exits = sorted(i for i in self.output if i >= 0)
        lines.append(f"  block output computed from: {', '.join(f'#{i}' for i in exits) or '-'}")
        if self.functional:
            lines.append(f"  weights used without calling their module: {sorted(self.functional)}")
        return "\n".join(lines)

    def sublayers(self) -> list[Sublayer]:
        """The sublayers, in call order of their exits."""
        exits = sorted(i for i in self.output if i >= 0)
        by_order = {c.order: c for c in self.calls}
        done: set[int] = set()
        out = []
        for e in exits:
            members, todo = {e}, [e]
            while todo:
                for r in by_order[todo.pop()].reads:
                    if r >= 0 and r not in members and r not in exits and r not in done:
                        members.add(r)
                        todo.append(r)
            done |= members
            calls = tuple(sorted(members))
            entries = tuple(i for i in calls if not (by_order[i].reads & members))
            out.append(Sublayer(self._kind(e, members), calls, entries, e, self._op(members)))
        return out

    def _op(self, members: set[int]) -> AttentionOp | None:
        found = [op for op in self.ops if op.v & members]
        return found[0] if len(found) == 1 else None

    def _kind(self, exit: int, members: set[int]) -> str:
        call = next(c for c in self.calls if c.order == exit)
        if call.type == "MultiheadAttention":
            return "mha"
        if not call.after_attention:
            return "ffn"
        op = self._op(members)
        calls = {c.order: c for c in self.calls}
        if op is not None and op.k and all(
            i >= 0 and calls[i].reads <= {EXT} for i in op.k
        ):
            return "cross"
        return "mha"


# ------------------------------------------------------------------------------------ recording
@dataclass
class _Info:
    front: frozenset[int]
    attn: bool = False
    qk: tuple[frozenset[int], frozenset[int]] | None = None
    probs: tuple[frozenset[int], frozenset[int]] | None = None


class _Recorder(TorchFunctionMode):
    """Labels every tensor computed inside a traced block with its `_Info`."""

    def __init__(self, names: dict[nn.Module, str]) -> None:
        super().__init__()
        self.names = names
        self.info: dict[int, tuple[torch.Tensor, _Info]] = {}
        self.block: BlockTrace | None = None
        self.traces: dict[str, BlockTrace] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.op_tensors: dict[str, list[tuple[torch.Tensor, ...]]] = {}
        self.depth = 0  # > 0 inside a traced unit (its inner ops are the unit's business)
        self.weights: dict[int, str] = {}
        """id of a traced unit's parameter -> the unit's name (to catch functional use)."""
        self.pending: tuple[frozenset[int], bool, int] = (frozenset(), False, 0)
        """What the outermost traced unit now running reads: front, after attention, width."""

    # -- labels
    def get(self, t: Any) -> _Info | None:
        if not isinstance(t, torch.Tensor):
            return None
        hit = self.info.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def set(self, t: torch.Tensor, info: _Info) -> None:
        self.info[id(t)] = (t, info)  # the tensor is kept alive, so its id is not reused

    def front(self, values: Sequence[Any]) -> frozenset[int]:
        out: frozenset[int] = frozenset()
        for v in values:
            info = self.get(v)
            if info is not None:
                out |= info.front
        return out

    # -- the mode
    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.block is None or self.depth:
            return result
        name = getattr(func, "__name__", "")
        leaves = [x for x in tree_flatten((args, kwargs))[0] if isinstance(x, torch.Tensor)]
        used = [self.weights[id(x)] for x in leaves if id(x) in self.weights]
        if used and any(isinstance(t, torch.Tensor) for t in tree_flatten(result)[0]):
            self.block.functional.update(used)  # computing with a projection's weight, uncalled
        infos = [i for i in map(self.get, leaves) if i is not None]
        out = _Info(self.front(leaves), any(i.attn for i in infos))
        out.qk = next((i.qk for i in infos if i.qk is not None), None)
        out.probs = next((i.probs for i in infos if i.probs is not None), None)
        if any(k in name for k in _ATTENTION_OPS):
            out.attn = True
            if "softmax" in name:
                out.probs, out.qk = out.qk, None
            elif "scaled_dot_product" in name and len(leaves) >= 3:
                qkv = [args[i] if i < len(args) else kwargs.get(n)
                       for i, n in enumerate(("query", "key", "value"))]
                self._op(*qkv)
                out.qk = out.probs = None
        elif any(name == p or name.endswith(p) for p in _PRODUCTS) and len(leaves) >= 2:
            a, b = leaves[-2], leaves[-1]  # baddbmm(input, b1, b2); einsum(eq, x, y)
            ia = self.get(a)
            if ia is not None and ia.probs is not None:
                self._op(None, None, b, probs=ia.probs)
                out.qk = out.probs = None
            else:
                out.qk, out.probs = (self.front([a]), self.front([b])), None
        for t in tree_flatten(result)[0]:
            if isinstance(t, torch.Tensor):
                self.set(t, out)
        return result

    def _op(self, q: Any, k: Any, v: Any,
            probs: tuple[frozenset[int], frozenset[int]] | None = None) -> None:
        assert self.block is not None
        fq, fk = probs if probs is not None else (self.front([q]), self.front([k]))
        shapes = tuple(tuple(t.shape) for t in (q, k, v) if isinstance(t, torch.Tensor))
        self.block.ops.append(AttentionOp(fq, fk, self.front([v]), shapes))
        self.op_tensors.setdefault(self.block.name, []).append(
            tuple(t for t in (q, k, v) if isinstance(t, torch.Tensor)))

    # -- module hooks
    def block_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        name = self.names[module]
        if name in self.traces or self.block is not None:
            return  # a shared block (ALBERT) is recorded on its first call
        tensors = [v for v in kwargs.values() if isinstance(v, torch.Tensor)]
        hidden = args[0] if args and isinstance(args[0], torch.Tensor) else kwargs.get(
            "hidden_states", tensors[0] if tensors else None)
        if not isinstance(hidden, torch.Tensor):
            return
        self.block = BlockTrace(name, type(module).__name__, int(hidden.shape[-1]))
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor):
                self.set(t, _Info(frozenset({EXT})))
        self.set(hidden, _Info(frozenset({IN})))

    def block_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.block is None or self.names[module] != self.block.name:
            return
        hidden = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(hidden, torch.Tensor):
            self.block.output = self.front([hidden])
            self.traces[self.block.name] = self.block
        self.block = None

    def unit_pre(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self.block is None:
            return
        if self.depth == 0:
            x = args[0] if args else next(iter(kwargs.values()), None)
            info = self.get(x)
            self.pending = (info.front if info else frozenset(), bool(info and info.attn),
                            int(x.shape[-1]) if isinstance(x, torch.Tensor) else 0)
        self.depth += 1

    def unit_post(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self.block is None:
            return
        self.depth -= 1
        if self.depth:
            return
        reads, attn, d_in = self.pending
        y = output[0] if isinstance(output, tuple) else output
        if not isinstance(y, torch.Tensor):
            return
        order = len(self.block.calls)
        self.block.calls.append(Call(order, self.names[module], type(module).__name__, d_in,
                                     int(y.shape[-1]), reads, attn))
        self.set(y, _Info(frozenset({order})))
        self.outputs[(self.block.name, order)] = y
        if isinstance(output, tuple):
            for t in output[1:]:
                if isinstance(t, torch.Tensor):
                    self.set(t, _Info(frozenset({order})))


# ------------------------------------------------------------------------------- running it
@contextmanager
def _quiet(model: nn.Module) -> Iterator[None]:
    """Eval mode, no grad, adapters off and the RNG untouched, all restored afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    adapters = [(m, bool(m.active)) for m in model.modules() if is_adapter(m)]
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"][:1]
    try:
        model.eval()
        for m, _ in adapters:
            m.active = False
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            yield
    finally:
        for module, flag in modes:
            module.training = flag
        for adapter, on in adapters:
            adapter.active = on


def trace_blocks(model: nn.Module, blocks: Sequence[str], inputs: Any = None
                 ) -> dict[str, BlockTrace]:
    """Run ``model`` once on ``inputs`` (default: `dry_run_inputs`) and return the record of each
    block in ``blocks`` (full module names)."""
    names = {m: n for n, m in model.named_modules(remove_duplicate=False)
             if ADAPTERS_ATTR not in n.split(".")}
    wanted = set(blocks)
    recorder = _Recorder({m: n for m, n in names.items()})
    with ExitStack() as stack:
        handles = []
        for m, n in names.items():
            if n in wanted:
                handles.append(m.register_forward_pre_hook(recorder.block_pre, with_kwargs=True))
                handles.append(m.register_forward_hook(recorder.block_post))
            elif is_traced_unit(m) and any(n.startswith(b + ".") for b in wanted):
                handles.append(m.register_forward_pre_hook(recorder.unit_pre, with_kwargs=True))
                handles.append(m.register_forward_hook(recorder.unit_post))
                recorder.weights.update({id(p): n for p in m.parameters(recurse=False)})
        stack.callback(lambda: [h.remove() for h in handles])
        stack.enter_context(_quiet(model))
        if inputs is None:
            inputs = dry_run_inputs(model)
        stack.enter_context(recorder)
        try:
            if isinstance(inputs, dict):
                model(**inputs)
            elif isinstance(inputs, (tuple, list)):
                model(*inputs)
            else:
                model(inputs)
        except Exception as exc:
            meta = any(p.is_meta for p in model.parameters())
            hint = ("The model is on the meta device, where data-dependent code cannot run: "
                    "materialise it first, or pass" if meta else "Pass")
            raise TraceError(
                f"adarec could not run {type(model).__name__} once to find its sublayers "
                f"({type(exc).__name__}: {exc}). {hint} example_inputs=... (a batch the model "
                "accepts), name the modules with AdapterSpec(target_modules=...), or register "
                "the family with adarec.register_layout(...)"
            ) from exc
    for trace in recorder.traces.values():
        _verify_fused(trace, recorder)
    missing = [b for b in blocks if b not in recorder.traces]
    if missing:
        raise TraceError(
            f"the dry run of {type(model).__name__} did not run block(s) {missing[:5]}; pass "
            "example_inputs=... that run every block, or AdapterSpec(target_modules=...)"
        )
    return recorder.traces


def _verify_fused(trace: BlockTrace, recorder: _Recorder) -> None:
    """Part widths of a projection that is query, key and value at once, when its output's last
    slice is verifiably the value tensor the attention op got (keys are as wide as values, the
    query as wide as the op's query; values repeated per head group are compared once per
    group). Interleaved layouts (heads first) fail the check and stay unknown."""
    for op, tensors in zip(trace.ops, recorder.op_tensors.get(trace.name, []), strict=True):
        q, k, v = ({i for i in f if i >= 0} for f in (op.q, op.k, op.v))
        if not (len(q) == 1 and q == k == v) or not tensors:
            continue
        (call,) = q
        out, value = recorder.outputs.get((trace.name, call)), tensors[-1]
        if out is None or out.is_meta or value.is_meta:
            continue
        width = int(out.shape[-1])
        hq = _width(tensors[0]) if len(tensors) == 3 else width - 2 * _width(value)
        hv = (width - hq) // 2
        if hq <= 0 or hv <= 0 or hq + 2 * hv != width or _width(value) % hv:
            continue
        rep = _width(value) // hv  # grouped-query attention: keys and values repeated per group
        if rep > 1:
            if value.dim() != 4:
                continue
            value = value[:, ::rep]
        if _is_slice(value, out, hq + hv):
            trace.fused_widths[call] = (hq, hv, hv)


def _width(t: torch.Tensor) -> int:
    """Channels per position of an attention operand: [B, heads, T, d] or [B, T, C]."""
    return int(t.shape[1] * t.shape[3]) if t.dim() == 4 else int(t.shape[-1])


def _is_slice(v: torch.Tensor, out: torch.Tensor, start: int) -> bool:
    part = out[..., start:]
    try:
        if v.dim() == 4:
            b, h, t, d = v.shape
            return bool(torch.equal(part.reshape(b, t, h, d).transpose(1, 2), v))
        return bool(torch.equal(part.reshape(v.shape), v))
    except RuntimeError:
        return False


# ------------------------------------------------------------------------------ dummy inputs
def dry_run_inputs(model: nn.Module) -> Any:
    """A tiny batch for a Hugging Face model, from its ``main_input_name`` and config; for any
    other module, a float tensor ``[2, 4, width]`` (width: the first projection's input)."""
    from transformers import PreTrainedModel

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    if not isinstance(model, PreTrainedModel):
        first = next((m for m in model.modules() if is_traced_unit(m)), None)
        width = getattr(first, "in_features", None) or getattr(first, "embed_dim", None)
        if width is None and first is not None and type(first).__name__ == "Conv1D":
            width = int(first.weight.shape[0])  # type: ignore[index]
        if width is None:
            raise TraceError(f"adarec cannot make an input for {type(model).__name__}; pass "
                             "example_inputs=...")
        return torch.randn(2, 4, int(width), generator=g).to(device)
    config = model.config
    main = getattr(model, "main_input_name", "input_ids")
    batch: dict[str, torch.Tensor] = {}
    if main == "input_ids":
        vocab = int(getattr(config, "vocab_size", 100) or 100)
        batch["input_ids"] = torch.randint(min(4, vocab - 1), min(vocab, 100), (2, 6),
                                           generator=g)
        batch["attention_mask"] = torch.ones(2, 6, dtype=torch.long)
    elif main == "pixel_values":
        size = getattr(config, "image_size", 32)
        h, w = (size, size) if isinstance(size, int) else tuple(size)[-2:]
        batch[main] = torch.randn(2, getattr(config, "num_channels", 3), h, w, generator=g)
    elif main == "input_values" and getattr(config, "max_length", None) and getattr(
            config, "num_mel_bins", None):  # AST: [B, frames, mel bins] of a fixed length
        batch[main] = torch.randn(2, int(config.max_length), int(config.num_mel_bins),
                                  generator=g)
    elif main == "input_values":
        batch[main] = torch.randn(2, 1600, generator=g)
    elif main == "input_features" and getattr(config, "num_mel_bins", None):
        frames = 2 * (getattr(config, "max_source_positions", None) or 8)  # Whisper: exact
        batch[main] = torch.randn(2, int(config.num_mel_bins), int(frames), generator=g)
    elif main == "input_features" and getattr(config, "input_feat_per_channel", None):
        feats = config.input_feat_per_channel * getattr(config, "input_channels", 1)
        batch[main] = torch.randn(2, 16, int(feats), generator=g)  # Speech2Text: [B, T, F]
    else:
        raise TraceError(f"adarec cannot make a {main!r} input for {type(model).__name__}; "
                         "pass example_inputs=...")
    if getattr(config, "is_encoder_decoder", False):
        start = getattr(config, "decoder_start_token_id", None) or 0
        batch["decoder_input_ids"] = torch.full((2, 3), int(start), dtype=torch.long)
    return {k: v.to(device) for k, v in batch.items()}


# -------------------------------------------------------------------------------------- cache
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[Any, dict[str, BlockTrace]]] = (
    weakref.WeakKeyDictionary()
)


def structure_key(model: nn.Module) -> tuple[Any, ...]:
    """What a trace depends on: the modules (adapters excepted), which objects they are, their
    types and weight shapes. Adding, removing or replacing a module changes it."""
    return tuple(
        (n, id(m), type(m), tuple(tuple(p.shape) for p in m.parameters(recurse=False)))
        for n, m in model.named_modules() if ADAPTERS_ATTR not in n.split(".")
    )


def cached_trace(model: nn.Module, blocks: Sequence[str], inputs: Any = None
                 ) -> dict[str, BlockTrace]:
    """`trace_blocks`, remembered per model as long as its structure does not change (only for
    generated inputs: a user's example may run the model differently)."""
    if inputs is not None:
        return trace_blocks(model, blocks, inputs)
    key = (tuple(blocks), structure_key(model))
    hit = _CACHE.get(model)
    if hit is not None and hit[0] == key:
        return hit[1]
    traces = trace_blocks(model, blocks)
    _CACHE[model] = (key, traces)
    return traces


# ------------------------------------------------------------------------- record -> roles
def block_sites(stack: str, index: int, trace: BlockTrace) -> BlockSites:
    """The roles of one block as the dry run settled them."""
    calls = {c.order: c for c in trace.calls}
    names: dict[str, str | None] = dict.fromkeys(ROLES)
    if trace.functional:
        why = (f"projection(s) {sorted(trace.functional)} are applied through their weights "
               "(F.linear), not called, so the dry run cannot see what they compute")
        return BlockSites(stack, index, names, trace.width, "trace", (), (), (),
                          dict.fromkeys(ROLES, why), trace.describe())
    subs = trace.sublayers()
    unresolved: dict[str, str] = {}
    ffn_inputs = [calls[s.entries[0]].reads for s in subs if s.kind == "ffn" and s.entries]
    if len(ffn_inputs) != len(set(ffn_inputs)):
        why = ("feed-forward branches read the same input in parallel (a mixture of experts?), "
               "so no one of them is the block's feed-forward sublayer")
        return BlockSites(stack, index, names, trace.width, "trace", (), (), (),
                          dict.fromkeys(ROLES, why), trace.describe() + "\n  " + why)

    def entry_of(s: Sublayer) -> str:
        inner = [e for e in s.entries if calls[e].reads != frozenset({EXT})]
        return calls[(inner or list(s.entries) or [s.exit])[0]].module

    sub_sites = tuple(
        SublayerSites(s.kind, entry_of(s), calls[s.exit].module,
                      tuple(calls[e].module for e in s.entries))
        for s in subs
    )
    for kind, roles in (("mha", ("mha_in", "mha_out", "q", "k", "v")),
                        ("ffn", ("ffn_in", "ffn_out"))):
        found = [s for s in subs if s.kind == kind]
        if len(found) != 1:
            why = (f"the dry run found {len(found)} {kind} sublayers"
                   if found else f"the dry run found no {kind} sublayer")
            unresolved.update(dict.fromkeys(roles, why))
            continue
        s = found[0]
        names[roles[0]], names[roles[1]] = entry_of(s), calls[s.exit].module
        if kind == "ffn" and len(s.entries) > 1:
            names["ffn_in"] = None
            unresolved["ffn_in"] = ("the feed-forward sublayer has several entry projections ("
                                    + ", ".join(calls[e].module for e in s.entries) + ")")
        if kind != "mha":
            continue
        if calls[s.exit].type == "MultiheadAttention":
            unresolved.update(dict.fromkeys("qkv", "nn.MultiheadAttention computes q, k and v "
                                            "through F.linear on its in_proj_weight"))
            continue
        if s.op is None:
            unresolved.update(dict.fromkeys("qkv", "no single attention op (softmax or "
                                            "scaled-dot-product attention) was seen"))
            continue
        for role, front in zip("qkv", (s.op.q, s.op.k, s.op.v), strict=True):
            ids = [i for i in front if i >= 0]
            if len(ids) == 1:
                names[role] = calls[ids[0]].module
            else:
                unresolved[role] = (f"the attention's {role} is computed from "
                                    f"{[calls[i].module for i in ids] or 'no projection'}")
    fused: tuple[str, ...] = ()
    widths: tuple[int, ...] = ()
    q, k, v = names["q"], names["k"], names["v"]
    if q is not None and q == k == v:
        fused = ("q", "k", "v")
        order = next(c.order for c in trace.calls if c.module == q)
        widths = trace.fused_widths.get(order, ())
    elif k is not None and k == v:
        fused = ("k", "v")
    return BlockSites(stack, index, names, trace.width, "trace", sub_sites, fused, widths,
                      unresolved, trace.describe())
