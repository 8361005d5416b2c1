"""SASRec user encoder (Kang & McAuley 2018) built from adarec's own small modules.

The block layout is registered with `adarec.register_layout`, so `inject_adapters(sasrec, spec)`
adapts it exactly like a Hugging Face transformer: adapters hook ``attn.out_proj`` and
``ffn.fc2``, LoRA targets ``attn.q_proj``/``attn.v_proj``.

Pre-LN blocks (``x + drop(attn(LN(x)))``, ``x + drop(ffn(LN(x)))``) with a final LayerNorm, as in
the reference SASRec code (which normalises the attention query input and the block output
before scoring): pre-LN trains stably from scratch without learning-rate warm-up, and keeps the
residual stream an exact identity path, so zero-initialised adapters leave the output unchanged.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adarec.errors import ConfigError
from adarec.layouts import Layout, register_layout
from adarec.rec.kinds import PartSource, register_kind


class SelfAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections on top of SDPA."""

    def __init__(self, dim: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads:
            raise ConfigError(f"dim={dim} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        """``x`` [B, L, d]; ``attn_mask`` [B, 1, L, L] bool, True where a query may attend."""
        b, n, d = x.shape

        def heads(t: Tensor) -> Tensor:
            return t.view(b, n, self.n_heads, d // self.n_heads).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class FeedForward(nn.Module):
    """Position-wise ``fc2(drop(gelu(fc1(x))))``."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class SASRecBlock(nn.Module):
    """One pre-LN transformer block."""

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, n_heads, dropout)
        self.ln2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        x = x + self.dropout(self.attn(self.ln1(x), attn_mask))
        return x + self.dropout(self.ffn(self.ln2(x)))


@register_kind("sasrec")
class SASRec(nn.Module):
    """Causal transformer over a left-padded item-embedding sequence: ``[B, L, d] -> [B, L, d]``.

    Positions are counted back from the most recent item (the last column), so with left
    padding the newest item always gets the same position embedding whatever the history length
    and ``L`` may be shorter than ``max_len``. Output at padded positions is zero.
    """

    is_causal = True  # read by adarec (K-Adapter's side network must stay causal too)

    def __init__(
        self,
        dim: int,
        n_layers: int = 2,
        n_heads: int = 2,
        ffn_dim: int | None = None,
        max_len: int = 50,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.max_len = max_len
        self.position = nn.Embedding(max_len, dim)
        self.input_ln = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            SASRecBlock(dim, n_heads, ffn_dim or 4 * dim, dropout) for _ in range(n_layers)
        )
        self.final_ln = nn.LayerNorm(dim)
        self.apply(_init_weights)

    def to_config(self) -> dict[str, Any]:
        block = cast(Any, self.blocks[0])
        return {"dim": self.dim, "n_layers": len(self.blocks), "n_heads": block.attn.n_heads,
                "ffn_dim": block.ffn.fc1.out_features, "max_len": self.max_len,
                "dropout": float(self.dropout.p)}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> SASRec:
        return cls(**config)

    def forward(self, item_emb: Tensor, mask: Tensor) -> Tensor:
        """``item_emb`` [B, L, d] and ``mask`` [B, L] (True on real items, left padding)."""
        n = item_emb.size(1)
        if n > self.max_len:
            raise ConfigError(f"sequence length {n} exceeds SASRec max_len={self.max_len}")
        mask = mask.bool()
        keep = mask.unsqueeze(-1).to(item_emb.dtype)
        pos = self.position.weight[self.max_len - n :]
        x = self.dropout(self.input_ln(item_emb + pos)) * keep
        attn_mask = attention_mask(mask)
        for block in self.blocks:
            x = block(x, attn_mask) * keep
        return self.final_ln(x) * keep


def attention_mask(mask: Tensor) -> Tensor:
    """``[B, 1, L, L]`` bool: causal, real keys only, and every query may see itself.

    The diagonal keeps rows of padded queries non-empty: SDPA returns NaN for a row with no
    allowed key, and a NaN there would reach real positions through gradients (0 * NaN = NaN).
    Real queries are unaffected, since their own key is real anyway.
    """
    n = mask.size(1)
    causal = torch.ones(n, n, dtype=torch.bool, device=mask.device).tril()
    eye = torch.eye(n, dtype=torch.bool, device=mask.device)
    return ((causal & mask[:, None, :]) | eye).unsqueeze(1)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


register_layout(
    SASRec,
    Layout(
        blocks="blocks",
        mha_in="attn.q_proj",
        q="attn.q_proj",
        k="attn.k_proj",
        v="attn.v_proj",
        mha_out="attn.out_proj",
        ffn_in="ffn.fc1",
        ffn_out="ffn.fc2",
    ),
)

__all__ = ["SASRec", "SASRecBlock", "attention_mask"]
