"""Where the MHA and FFN sublayers of a transformer are: a table of known layouts plus discovery.

A `Layout` names, relative to one block, the modules that matter for adapters: the entry and exit
linear of the attention sublayer (``mha_in``/``mha_out``) and of the feed-forward sublayer
(``ffn_in``/``ffn_out``), and the q/k/v projections LoRA targets. Names may list alternatives
separated by ``|`` because Hugging Face renames modules between releases (ViT's
``attention.output.dense`` became ``attention.o_proj`` in transformers 5).

Models missing from the table are handled by `discover_layout`: find the repeated block stack, then
split each block's linear layers into the attention group (a path component containing "att") and
the rest (the FFN), in registration order, which is execution order in every HF model we know.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields

from torch import nn

from .errors import TargetNotFoundError
from .sites import ROLES, BlockSites


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


_Q = re.compile(r"^(q|query|q_proj|q_lin|query_proj|wq)$", re.I)
_K = re.compile(r"^(k|key|k_proj|k_lin|key_proj|wk)$", re.I)
_V = re.compile(r"^(v|value|v_proj|v_lin|value_proj|wv)$", re.I)


def discover_layout(block: nn.Module) -> dict[str, str | None]:
    """Guess the roles inside one block from module names and registration order."""
    linears = [n for n, m in block.named_modules() if n and is_linear_like(m)]
    attn = [n for n in linears if any("att" in part.lower() for part in n.split("."))]
    ffn = [n for n in linears if n not in attn]
    if not attn or not ffn:
        raise TargetNotFoundError(
            "could not find both an attention and a feed-forward sublayer in block "
            f"{type(block).__name__}; linear modules seen: {linears}. Pass "
            "AdapterSpec(target_modules=...) or adarec.register_layout(...)."
        )

    def pick(rx: re.Pattern[str]) -> str | None:
        hits = [n for n in attn if rx.match(n.rsplit(".", 1)[-1])]
        if hits:
            return hits[0]
        return attn[0] if len(attn) == 2 else None  # fused qkv + output projection

    return {
        "mha_in": attn[0], "mha_out": attn[-1], "ffn_in": ffn[0], "ffn_out": ffn[-1],
        "q": pick(_Q), "k": pick(_K), "v": pick(_V),
    }


def layout_for(model: nn.Module) -> Layout | None:
    """The table entry for this model, by class first, then by ``config.model_type``."""
    for cls in type(model).__mro__:
        if cls in LAYOUTS:
            return LAYOUTS[cls]
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return LAYOUTS.get(model_type) if model_type else None


def iter_blocks(model: nn.Module) -> Iterator[BlockSites]:
    """Every block of every block stack in ``model``, with its role names resolved."""
    layout = layout_for(model)
    stacks = block_stacks(model, layout.blocks) if layout else []
    if layout and stacks:
        resolved = [[{r: _resolve(b, layout.role(r)) for r in ROLES} for b in s] for _, s in stacks]
        if all(d["mha_out"] and d["ffn_out"] for blocks in resolved for d in blocks):
            for (name, _), blocks in zip(stacks, resolved, strict=True):
                for i, d in enumerate(blocks):
                    yield BlockSites(name, i, _absolute(name, i, d), source="layout table")
            return
        warnings.warn(
            f"adarec's layout for {type(model).__name__} does not match its modules "
            "(a newer transformers release?); falling back to layout discovery",
            stacklevel=3,
        )
    stacks = block_stacks(model)
    if not stacks:
        linears = [n for n, m in model.named_modules() if is_linear_like(m)][:20]
        raise TargetNotFoundError(
            f"no repeated transformer block stack found in {type(model).__name__}; linear "
            f"modules seen: {linears}. Pass AdapterSpec(target_modules=...) to choose modules "
            "by name, or adarec.register_layout(...)."
        )
    for name, stack in stacks:
        for i, block in enumerate(stack):
            yield BlockSites(name, i, _absolute(name, i, discover_layout(block)),
                             source="name discovery")


def _absolute(stack: str, i: int, rel: dict[str, str | None]) -> dict[str, str | None]:
    prefix = f"{stack}.{i}." if stack else f"{i}."
    return {r: (prefix + n if n else None) for r, n in rel.items()}


def layout_fields() -> list[str]:
    return [f.name for f in fields(Layout)]
