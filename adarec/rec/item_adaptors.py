"""What sits between the item encoder and the user encoder in `TransRec`.

- `dtl`: Fu et al.'s dimension-transformation layer, Linear + GELU.
- `WhiteningMoEAdaptor`: UniSRec's parametric whitening + mixture-of-experts adaptor (Hou et
  al., *Towards Universal Sequence Representation Learning for Recommender Systems*, KDD 2022,
  Sec. 3.1): each expert whitens the text embedding with a learned shift and projection,
  ``(x - b_k) W_k``, and a softmax gate over the experts mixes them, with Gaussian noise on the
  gate logits during training (noisy gating, Shazeer et al. 2017). Pre-trained sentence
  embeddings are anisotropic (they crowd into a narrow cone), and the shift + projection learns
  to spread them; several experts let items of different domains use different whitenings.
  Defaults follow the paper's released configuration (8 experts, dropout 0.2 on the input).
- `IDFusion`: a learned ID embedding added to (``"add"``) or gated into (``"gate"``) the adapted
  text embedding (UniSRec's transductive setting adds it), with the ID part switched off for
  items listed in `IDFusion.exclude` (cold items: their rows were never trained), and, with
  ``dropout``, for a random share of the items at each training step, so that the model also
  learns to score an item by its content alone (DropoutNet: Volkovs et al., *DropoutNet:
  Addressing Cold Start in Recommender Systems*, NeurIPS 2017).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adarec.errors import ConfigError, DataError
from adarec.rec.kinds import PartSource, register_kind

ADAPTORS = ("linear", "moe", "none")
FUSIONS = ("add", "gate")


def dtl(in_dim: int, out_dim: int) -> nn.Module:
    """Fu et al.'s DTL: ``GELU(x W + b)``."""
    return nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU())


@register_kind("whitening_moe")
class WhiteningMoEAdaptor(nn.Module):
    """``sum_k g_k(x) (drop(x) - b_k) W_k`` with ``g = softmax(x W_g + noise)``: UniSRec's
    MoE-enhanced adaptor. Shifts start at 0, projections at N(0, 0.02²) as in the paper's
    code, and the gate and noise weights at 0, so the experts start equally weighted (the noise
    scale starts at softplus(0) + 0.01)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        n_experts: int = 8,
        dropout: float = 0.2,
        noisy_gating: bool = True,
    ) -> None:
        super().__init__()
        if n_experts < 1:
            raise ConfigError(f"n_experts must be >= 1, got {n_experts}")
        self.n_experts = n_experts
        self.noisy_gating = noisy_gating
        self.dropout = nn.Dropout(dropout)
        self.shift = nn.Parameter(torch.zeros(n_experts, in_dim))
        self.proj = nn.Parameter(torch.randn(n_experts, in_dim, out_dim) * 0.02)
        self.gate = nn.Parameter(torch.zeros(in_dim, n_experts))
        self.noise = nn.Parameter(torch.zeros(in_dim, n_experts))

    def to_config(self) -> dict[str, Any]:
        n, d_in, d_out = self.proj.shape
        return {"in_dim": d_in, "out_dim": d_out, "n_experts": n,
                "dropout": float(self.dropout.p), "noisy_gating": self.noisy_gating}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> WhiteningMoEAdaptor:
        return cls(**config)

    def gates(self, x: Tensor) -> Tensor:
        """Expert weights ``[N, n_experts]`` (noisy while training)."""
        logits = x @ self.gate
        if self.noisy_gating and self.training:
            scale = F.softplus(x @ self.noise) + 1e-2
            logits = logits + torch.randn_like(logits) * scale
        return logits.softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        dropped = self.dropout(x)
        # expert k: (drop(x) - b_k) W_k  ==  drop(x) W_k - b_k W_k; one einsum for all experts
        experts = torch.einsum("nd,kde->nke", dropped, self.proj) - torch.einsum(
            "kd,kde->ke", self.shift, self.proj
        )
        return torch.einsum("nk,nke->ne", self.gates(x), experts)


class IDFusion(nn.Module):
    """Adds a per-item ID embedding to the (adapted) item-content embedding.

    ``"add"``: ``t + e``; ``"gate"``: ``t + sigmoid(W [t; e] + c) * e``, so the model can
    weigh the ID per item and dimension. The ID table belongs to one catalogue
    (``transferable = False``: left out of `TransRec.transferable_state_dict`). Items passed to
    `exclude` get ``e = 0``, hence exactly the content embedding under either mode.
    ``dropout``: in training mode each item occurrence gets ``e = 0`` with this probability
    (the content must then carry it, as for an item that arrives after training); off in eval.
    """

    transferable = False
    known: Tensor

    def __init__(self, n_items: int, dim: int, mode: str = "add", dropout: float = 0.0) -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ConfigError(f"id fusion mode={mode!r} is not one of {list(FUSIONS)}")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"id fusion dropout={dropout!r} must be in [0, 1)")
        self.mode, self.dropout = mode, float(dropout)
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()
        self.gate = nn.Linear(2 * dim, dim) if mode == "gate" else None
        known = torch.ones(n_items + 1, dtype=torch.bool)
        known[0] = False
        self.register_buffer("known", known)  # persistent: a reload must keep the exclusions

    @property
    def n_items(self) -> int:
        return self.embedding.num_embeddings - 1

    def exclude(self, item_ids: Sequence[int] | Tensor) -> None:
        """Switch the ID part off for ``item_ids`` (e.g. items never seen in training)."""
        ids = torch.as_tensor(item_ids, dtype=torch.long, device=self.known.device).reshape(-1)
        if ids.numel() and not 1 <= int(ids.min()) <= int(ids.max()) <= self.n_items:
            raise DataError(f"item ids must be in 1..{self.n_items}")
        self.known[ids] = False

    def grow(self, n_items: int) -> None:
        """Make room for items appended after training (`TransRec.add_items`): their rows are
        zero and their ID part is off, so they score by content alone, like a held-out item."""
        extra = n_items - self.n_items
        if extra < 0:
            raise DataError(f"the ID table has {self.n_items} items; it cannot shrink to "
                            f"{n_items}")
        if extra == 0:
            return
        w = self.embedding.weight
        self.embedding = nn.Embedding.from_pretrained(
            torch.cat([w.detach(), w.new_zeros(extra, w.size(1))]), freeze=not w.requires_grad,
            padding_idx=0)
        self.known = torch.cat([self.known, self.known.new_zeros(extra)])

    def forward(self, item_ids: Tensor, content: Tensor) -> Tensor:
        ids = item_ids.to(self.known.device)
        keep = self.known[ids]
        if self.training and self.dropout > 0:
            keep = keep & (torch.rand(ids.shape, device=ids.device) >= self.dropout)
        e = self.embedding(ids) * keep.unsqueeze(-1).to(content.dtype)
        if self.gate is None:
            return content + e
        return content + torch.sigmoid(self.gate(torch.cat([content, e], dim=-1))) * e


def adaptor_name(kind: str | bool | nn.Module) -> str | None:
    """The adaptor's name (``True`` -> ``"linear"``, ``False`` -> ``"none"``); ``None`` for a
    module passed as it is (nothing can rebuild it from a name)."""
    if isinstance(kind, nn.Module):
        return None
    if isinstance(kind, bool):
        return "linear" if kind else "none"
    return kind


def build_adaptor(kind: str | bool | nn.Module, in_dim: int, out_dim: int) -> nn.Module:
    """``True``/``"linear"``: the DTL; ``"moe"``: `WhiteningMoEAdaptor`; ``False``/``"none"``:
    identity (widths must match); an ``nn.Module`` is used as it is."""
    if isinstance(kind, nn.Module):
        return kind
    name = adaptor_name(kind)
    if name not in ADAPTORS:
        raise ConfigError(f"dtl={kind!r} is not one of {[True, False, *ADAPTORS]} or a module")
    if name == "none":
        if in_dim != out_dim:
            raise ConfigError(f"dtl=False needs item width {in_dim} == user_dim {out_dim}")
        return nn.Identity()
    return dtl(in_dim, out_dim) if name == "linear" else WhiteningMoEAdaptor(in_dim, out_dim)


__all__ = ["ADAPTORS", "FUSIONS", "IDFusion", "WhiteningMoEAdaptor", "adaptor_name",
           "build_adaptor", "dtl"]
