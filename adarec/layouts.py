"""Where the MHA and FFN sublayers of a transformer are: a table of known layouts (the fast path)
and, for every other model, a traced dry run (`adarec.tracing`).

A `Layout` names, relative to one block, the modules that matter for adapters: the entry and exit
linear of the attention sublayer (``mha_in``/``mha_out``) and of the feed-forward sublayer
(``ffn_in``/``ffn_out``), and the q/k/v projections LoRA targets. Names may list alternatives
separated by ``|`` because Hugging Face renames modules between releases (ViT's
``attention.output.dense`` became ``attention.o_proj`` in transformers 5).

Models missing from the table: find the repeated block stack, then run the model once and read
each block's sublayers from what it computed (registration order is not call order, and names
differ between families). A fused q/k/v module named in the table is taken to hold q, k and v as
equal contiguous thirds, in that order (GPT-2, ModernBERT); the trace verifies such a split itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import nn

from .errors import TargetNotFoundError
from .sites import ROLES, BlockSites, SublayerSites
from .tracing import block_sites, cached_trace


@dataclass(frozen=True)
class Layout:
    """Relative module names inside one block; ``blocks`` is the suffix of the block ModuleList."""

    blocks: str
    mha_out: str
    ffn_out: str
    mha_in: str | None = None
    ffn_in: str | None = None
    q: str | None = None
    k: str | None = None
    v: str | None = None

    def role(self, role: str) -> str | None:
        if role == "o":
            return self.mha_out
        return getattr(self, role)


# ---------------------------------------------------------------------------------- the table
_BERT = Layout(
    blocks="encoder.layer",
    mha_in="attention.self.query|attention.attention.query|attention.q_proj",
    q="attention.self.query|attention.attention.query|attention.q_proj",
    k="attention.self.key|attention.attention.key|attention.k_proj",
    v="attention.self.value|attention.attention.value|attention.v_proj",
    mha_out="attention.output.dense|attention.o_proj",
    ffn_in="intermediate.dense|mlp.fc1",
    ffn_out="output.dense|mlp.fc2",
)
_VIT = Layout(
    blocks="encoder.layer|layers",
    mha_in=_BERT.mha_in, q=_BERT.q, k=_BERT.k, v=_BERT.v,
    mha_out=_BERT.mha_out, ffn_in=_BERT.ffn_in, ffn_out=_BERT.ffn_out,
)
_CLIP = Layout(
    blocks="encoder.layers",
    mha_in="self_attn.q_proj", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    mha_out="self_attn.out_proj", ffn_in="mlp.fc1", ffn_out="mlp.fc2",
)
_LLAMA = Layout(
    blocks="layers",
    mha_in="self_attn.q_proj", q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
    mha_out="self_attn.o_proj", ffn_in="mlp.up_proj", ffn_out="mlp.down_proj",
)

LAYOUTS: dict[str | type, Layout] = {
    **dict.fromkeys(("bert", "roberta", "xlm-roberta", "electra", "camembert"), _BERT),
    "deberta-v2": Layout(
        blocks="encoder.layer",
        mha_in="attention.self.query_proj", q="attention.self.query_proj",
        k="attention.self.key_proj", v="attention.self.value_proj",
        mha_out="attention.output.dense", ffn_in="intermediate.dense", ffn_out="output.dense",
    ),
    "distilbert": Layout(
        blocks="transformer.layer",
        mha_in="attention.q_lin", q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
        mha_out="attention.out_lin", ffn_in="ffn.lin1", ffn_out="ffn.lin2",
    ),
    "albert": Layout(
        blocks="albert_layers",
        mha_in="attention.query", q="attention.query", k="attention.key", v="attention.value",
        mha_out="attention.dense", ffn_in="ffn", ffn_out="ffn_output",
    ),
    "mpnet": Layout(
        blocks="encoder.layer",
        mha_in="attention.attn.q", q="attention.attn.q", k="attention.attn.k",
        v="attention.attn.v", mha_out="attention.attn.o",
        ffn_in="intermediate.dense", ffn_out="output.dense",
    ),
    "modernbert": Layout(
        blocks="layers", mha_in="attn.Wqkv", q="attn.Wqkv", k="attn.Wqkv", v="attn.Wqkv",
        mha_out="attn.Wo", ffn_in="mlp.Wi", ffn_out="mlp.Wo",
    ),
    **dict.fromkeys(("vit", "vit_mae", "deit", "beit", "dinov2"), _VIT),
    **dict.fromkeys(
        ("clip", "clip_text_model", "clip_vision_model", "siglip", "siglip_text_model",
         "siglip_vision_model"),
        _CLIP,
    ),
    "gpt2": Layout(
        blocks="h", mha_in="attn.c_attn", q="attn.c_attn", k="attn.c_attn", v="attn.c_attn",
        mha_out="attn.c_proj", ffn_in="mlp.c_fc", ffn_out="mlp.c_proj",
    ),
    **dict.fromkeys(("llama", "qwen2", "mistral", "qwen3", "gemma"), _LLAMA),
    "t5": Layout(
        blocks="block", mha_in="layer.0.SelfAttention.q", q="layer.0.SelfAttention.q",
        k="layer.0.SelfAttention.k", v="layer.0.SelfAttention.v",
        mha_out="layer.0.SelfAttention.o",
        ffn_in="layer.1.DenseReluDense.wi|layer.1.DenseReluDense.wi_0",
        ffn_out="layer.1.DenseReluDense.wo",
    ),
}


def register_layout(key: str | type, layout: Layout) -> None:
    """Teach adarec a model family: ``key`` is a config ``model_type`` or a model class."""
    LAYOUTS[key] = layout


# ----------------------------------------------------------------------------------- helpers
def is_linear_like(module: nn.Module) -> bool:
    """nn.Linear or transformers' Conv1D (GPT-2), the projections adapters attach to."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def module_widths(module: nn.Module) -> tuple[int, int] | None:
    """(input, output) width of a linear-like module (or an nn.MultiheadAttention)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        weight = module.weight
        assert isinstance(weight, nn.Parameter)
        return int(weight.shape[0]), int(weight.shape[1])
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim, module.embed_dim
    return None


def _has_linears(module: nn.Module, at_least: int = 2) -> bool:
    return sum(1 for m in module.modules() if is_linear_like(m)) >= at_least


def block_stacks(model: nn.Module, suffix: str | None = None) -> list[tuple[str, nn.ModuleList]]:
    """The ModuleLists holding repeated transformer blocks.

    With ``suffix`` (``a|b`` alternatives allowed) the lists whose name ends with it; otherwise
    every ModuleList of same-class children that each hold >= 2 linears and that contains no such
    list itself (so ALBERT's inner ``albert_layers`` wins over ``albert_layer_groups``).
    """
    lists = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if suffix is not None:
        alts = suffix.split("|")
        return [(n, m) for n, m in lists if any(n == a or n.endswith("." + a) for a in alts)]
    found = [
        (n, m)
        for n, m in lists
        if len({type(c) for c in m}) == 1 and all(_has_linears(c) for c in m)
    ]
    names = [n for n, _ in found]
    return [(n, m) for n, m in found if not any(o.startswith(n + ".") for o in names)]


def _resolve(block: nn.Module, rel: str | None) -> str | None:
    if rel is None:
        return None
    subs = dict(block.named_modules())
    for alt in rel.split("|"):
        if alt in subs:
            return alt
    return None


def layout_for(model: nn.Module) -> Layout | None:
    """The table entry for this model, by class first, then by ``config.model_type``."""
    for cls in type(model).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return LAYOUTS.get(model_type) if model_type else None


def iter_blocks(model: nn.Module, example_inputs: Any = None, *, table: bool = True
                ) -> Iterator[BlockSites]:
    """Every block of every block stack in ``model``, with its roles resolved.

    From the layout table when it lists the model (and its entries exist and have consistent
    widths), else from a traced dry run (`adarec.tracing`) on ``example_inputs`` (default: a
    generated tiny batch). ``table=False`` always traces (tests compare the two).
    """
    if example_inputs is None and layout_for(model) is None:
        inner = _inner_models(model)
        if inner:  # a wrapper (e.g. an item encoder) around models adarec can run by themselves
            for prefix, sub in inner:
                for b in iter_blocks(sub, table=table):
                    yield _prefixed(b, prefix)
            return
    layout = layout_for(model) if table else None
    stacks = block_stacks(model, layout.blocks) if layout else []
    if layout and stacks:
        found = [_table_sites(model, name, i, block, layout)
                 for name, stack in stacks for i, block in enumerate(stack)]
        if all(b is not None for b in found):
            yield from (b for b in found if b is not None)
            return
        # the entry does not fit (a decoder stack with cross-attention, a renamed module in a
        # newer transformers release): the trace finds the sublayers instead
    stacks = block_stacks(model)
    if not stacks:
        linears = [n for n, m in model.named_modules() if is_linear_like(m)][:20]
        raise TargetNotFoundError(
            f"no repeated transformer block stack found in {type(model).__name__}; linear "
            f"modules seen: {linears}. Pass AdapterSpec(target_modules=...) to choose modules "
            "by name, or adarec.register_layout(...)."
        )
    blocks = [(name, i, f"{name}.{i}" if name else str(i))
              for name, stack in stacks for i in range(len(stack))]
    traces = cached_trace(model, [full for _, _, full in blocks], example_inputs)
    for name, i, full in blocks:
        yield block_sites(name, i, traces[full])


def _width_of(module: nn.Module | None, side: int) -> int | None:
    if module is None:
        return None
    if isinstance(module, nn.Linear):
        return (module.in_features, module.out_features)[side]
    if isinstance(module, nn.MultiheadAttention):
        return module.embed_dim
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and isinstance(weight, torch.Tensor):
        return int(weight.shape[side])
    return None


def _table_sites(model: nn.Module, stack: str, i: int, block: nn.Module, layout: Layout
                 ) -> BlockSites | None:
    """A block's roles from the table, or ``None`` when the table does not fit it: a required
    module is missing, or the sublayer outputs do not have the residual width (the input width
    of the attention's entry projection)."""
    rel = {r: _resolve(block, layout.role(r)) for r in ROLES}
    if not (rel["mha_out"] and rel["ffn_out"]):
        return None
    subs = dict(block.named_modules())
    width = _width_of(subs.get(rel["mha_in"] or rel["q"] or rel["mha_out"] or ""), 0)
    outs = [_width_of(subs[rel[r] or ""], 1) for r in ("mha_out", "ffn_out")]
    if width is None or any(w != width for w in outs):
        return None
    names = _absolute(stack, i, rel)
    sublayers = tuple(
        SublayerSites(kind, names[f"{kind}_in"] or names[f"{kind}_out"] or "",
                      names[f"{kind}_out"] or "", (names[f"{kind}_in"] or "",))
        for kind in ("mha", "ffn")
    )
    q = names["q"]
    fused: tuple[str, ...] = ()
    widths: tuple[int, ...] = ()
    if q is not None and q == names["k"] == names["v"]:
        fused = ("q", "k", "v")  # a table entry naming one module for all three: equal thirds
        out = _width_of(subs[rel["q"] or ""], 1)
        widths = (out // 3,) * 3 if out and out % 3 == 0 else ()
    return BlockSites(stack, i, names, width, "layout table", sublayers, fused, widths)


def _absolute(stack: str, i: int, rel: dict[str, str | None]) -> dict[str, str | None]:
    prefix = f"{stack}.{i}." if stack else f"{i}."
    return {r: (prefix + n if n else None) for r, n in rel.items()}


def layout_fields() -> list[str]:
    return [f.name for f in fields(Layout)]


def _inner_models(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The outermost Hugging Face models inside a wrapper that is not one, when they hold every
    block stack of the wrapper (so each can be run, or read from the table, on its own); else
    ``[]``. A wrapper's own forward may take inputs a generated batch cannot imitate."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return []
    inner: list[tuple[str, nn.Module]] = []
    for n, m in model.named_modules():
        if n and isinstance(m, PreTrainedModel) and not any(
            n.startswith(p + ".") for p, _ in inner
        ):
            inner.append((n, m))
    stacks = [name for name, _ in block_stacks(model)]
    if not inner or not stacks or not all(
        any(s.startswith(p + ".") for p, _ in inner) for s in stacks
    ):
        return []
    return inner


def _prefixed(b: BlockSites, prefix: str) -> BlockSites:
    """``b`` with every module name put under ``prefix``."""
    def name(n: str | None) -> str | None:
        return None if n is None else (f"{prefix}.{n}" if n else prefix)

    subs = tuple(
        SublayerSites(s.kind, name(s.entry) or "", name(s.exit) or "",
                      tuple(name(e) or "" for e in s.entries))
        for s in b.sublayers
    )
    return replace(b, stack=name(b.stack) or prefix,
                   names={r: name(n) for r, n in b.names.items()}, sublayers=subs)
