"""TransRec (Fu et al., WSDM 2024): a pre-trained item modality encoder, a dimension-transformation
layer (DTL: Linear + GELU) and a sequential user encoder, scored by dot product.

Serving: `TransRec.recommend` (top-k per user, raw ids in and out), `TransRec.add_items`
(text-only items the model never trained on), `TransRec.save_pretrained` /
`TransRec.from_pretrained` (a folder that rebuilds the model; see `adarec.rec.pretrained`).

Transfer recipe (source domain -> target domain, same base HF encoder):

    src = TransRec(TextItemEncoder.from_texts(bert, tok, source_texts), user_dim=64)
    ... train src with policy "full" ...
    state = src.transferable_state_dict()           # encoder + DTL + user encoder weights
    dst = TransRec(TextItemEncoder.from_texts(bert2, tok, target_texts), user_dim=64)
    dst.load_transferable_state_dict(state)         # before injecting adapters
    dst.inject_adapters(item="houlsby", user="houlsby")   # policy "adapters"
    ... train dst ...

Item features (token ids, pixels) are data, not weights, so they are never in a state dict.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from adarec.errors import (
    ConfigError,
    DataError,
    StateMismatchError,
    UnknownItemError,
)
from adarec.freezing import ParameterSummary
from adarec.inject import inject_adapters as _inject
from adarec.rec.data import PAD, pad_left, pad_right
from adarec.rec.item_adaptors import IDFusion, adaptor_name, build_adaptor
from adarec.rec.item_encoders import ItemEncoder
from adarec.rec.losses import (
    LOSSES,
    GatherCandidates,
    bce_loss,
    full_softmax_loss,
    in_batch_candidates,
    sampled_softmax_loss,
)
from adarec.rec.metrics import METRICS, Ties, evaluate_full_ranking
from adarec.rec.policies import apply_policy, policy_names
from adarec.rec.scoring import (
    check_finite,
    check_similarity,
    in_user_tiles,
    prepare,
    score_block,
    score_candidates,
    topk,
    topk_of_candidates,
)
from adarec.rec.user_encoders import SASRec
from adarec.spec import AdapterSpec
from adarec.state_key import StateKey, autocast_state

OBJECTIVES = ("sasrec", "cpc")
LOSS_NAMES = tuple(LOSSES)
POLICIES = policy_names()
logger = logging.getLogger(__name__)


@dataclass
class Recommendations:
    """Top-k of each history, best first: ``items`` as raw ids when the model has an item map
    (else indices), ``scores`` ``[B, k]`` and ``indices`` ``[B, k]``. A row with fewer than k
    rankable items is shorter in ``items`` and padded with index 0 / score ``-inf``."""

    items: list[list[Hashable]]
    scores: Tensor
    indices: Tensor


class TransRec(nn.Module):
    """Item encoder -> DTL -> user encoder, trained for next-item prediction.

    ``objective="sasrec"`` puts the loss at every real position, ``"cpc"`` only at the last one.
    ``loss`` is ``"bce"`` (SASRec, with the collator's negatives), ``"sampled_softmax"`` (the
    batch's targets and negatives as candidates, accidental hits masked) or ``"full_softmax"``
    (every item; it encodes the whole catalogue each step, so it suits ID/precomputed tables).
    ``num_negatives`` is how many of the collator's negatives per position are used; with
    sampled softmax it may be 0 (in-batch negatives only: the batch's other targets, which also
    halves the items to encode), and ``logq_correction`` subtracts the log of each candidate's
    in-batch frequency so popular items are not over-penalised as negatives (Yi et al. 2019).

    ``dtl=False`` drops the DTL (identity), allowed only when the item width equals ``user_dim``
    (e.g. an `IDItemEncoder` for plain SASRec); ``dtl="moe"`` puts UniSRec's parametric
    whitening + mixture-of-experts adaptor in its place (`adarec.rec.item_adaptors`), and any
    ``nn.Module`` mapping item width to ``user_dim`` may be passed. ``id_fusion="add"`` or
    ``"gate"`` adds a learned ID embedding to every item's adapted embedding (`IDFusion`; switch
    it off for cold items with ``model.id_fusion.exclude(ids)``). ``similarity="cosine"`` scores
    L2-normalised user and item vectors (divided by ``temperature``, e.g. UniSRec's 0.07)
    instead of raw dot products. Without ``user_encoder`` a `SASRec` of width ``user_dim`` is
    built from ``max_len``, ``n_layers``, ``n_heads`` and ``dropout``.

    ``held_out``: items training must never score (a bool mask ``[n_items + 1]``, e.g. the cold
    items of `adarec.rec.splits.cold_item_split`): full softmax leaves them out of its
    denominator and a batch that holds one as a candidate is refused.
    """

    def __init__(
        self,
        item_encoder: nn.Module,
        user_encoder: nn.Module | None = None,
        user_dim: int = 64,
        objective: str = "sasrec",
        loss: str = "bce",
        num_negatives: int = 1,
        dtl: bool | str | nn.Module = True,
        max_len: int = 50,
        n_layers: int = 2,
        n_heads: int = 2,
        dropout: float = 0.1,
        temperature: float = 1.0,
        logq_correction: bool = True,
        id_fusion: str | None = None,
        similarity: str = "dot",
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"objective={objective!r} is not one of {list(OBJECTIVES)}")
        if loss not in LOSS_NAMES:
            raise ConfigError(f"loss={loss!r} is not one of {list(LOSS_NAMES)}")
        if num_negatives < (0 if loss == "sampled_softmax" else 1):
            raise ConfigError(f"num_negatives={num_negatives} is too small for loss={loss!r} "
                              "(0, in-batch negatives only, needs loss='sampled_softmax')")
        check_similarity(similarity, temperature)
        if user_encoder is not None:
            user_dim = int(cast(Any, user_encoder).dim)
        item_dim = int(cast(ItemEncoder, item_encoder).dim)
        self.item_encoder = item_encoder
        self.dtl = build_adaptor(dtl, item_dim, user_dim)
        self.dtl_kind = adaptor_name(dtl)
        """``"linear"``, ``"moe"`` or ``"none"``; ``None`` for a module passed as ``dtl``."""
        n_items = int(cast(ItemEncoder, item_encoder).n_items)
        self.id_fusion = IDFusion(n_items, user_dim, id_fusion) if id_fusion else None
        self.similarity = similarity
        self.held_out: Tensor | None = None
        if user_encoder is None:
            user_encoder = SASRec(
                user_dim, n_layers=n_layers, n_heads=n_heads, max_len=max_len, dropout=dropout
            )
        self.user_encoder = user_encoder
        self.dim = user_dim
        self.objective, self.loss_name = objective, loss
        self.num_negatives, self.temperature = num_negatives, temperature
        self.logq_correction = logq_correction
        self.dedup = True
        """Encode each distinct item of a batch once (False: once per occurrence, for tests)."""
        self.gather_candidates: GatherCandidates | None = None
        """Sampled softmax: ``(ids, emb) -> (all ids, all emb, offset of the local rows)``, e.g.
        `adarec.distributed.enable_cross_rank_negatives` (other ranks' candidates as negatives)."""
        self.policy: str | None = None
        self.policy_args: dict[str, Any] = {}
        self.item_ids: list[Hashable | None] | None = None
        """Raw item id of each index (``item_ids[0]`` is the padding item's ``None``), set by
        `set_item_map`; with it `recommend` takes and returns raw ids."""
        self.item_texts: list[str] | None = None
        self._index: dict[Hashable, int] = {}
        self._version = 0
        self._table: Tensor | None = None
        self._table_key: StateKey | None = None

    @property
    def n_items(self) -> int:
        return int(cast(ItemEncoder, self.item_encoder).n_items)

    # ------------------------------------------------------------------------ item side
    def _encode(self, ids: Tensor) -> Tensor:
        """Encoder + DTL (+ ID fusion) for a flat id vector, each distinct id encoded once."""
        if not self.dedup:
            return self._adapt(ids, self.item_encoder(ids))
        uniq, inverse = torch.unique(ids, return_inverse=True)
        return self._adapt(uniq, self.item_encoder(uniq))[inverse]

    def _adapt(self, ids: Tensor, content: Tensor) -> Tensor:
        emb = self.dtl(content)
        return emb if self.id_fusion is None else self.id_fusion(ids, emb)

    def _scoring(self, x: Tensor) -> Tensor:
        """User or item vectors as they enter a score (L2-normalised for cosine)."""
        return prepare(x, self.similarity)

    def item_embeddings(self, ids: Tensor) -> Tensor:
        """``ids`` of any shape -> ``[*ids.shape, dim]`` (from the cached table when it is
        valid and no gradient is needed)."""
        if not torch.is_grad_enabled() and self._cache_valid():
            assert self._table is not None
            return self._table[ids.to(self._table.device)]
        return self._encode(ids.reshape(-1)).view(*ids.shape, self.dim)

    # ------------------------------------------------------------------------ the cache
    def _state_key(self) -> StateKey:
        """The item table is ``dtl(item_encoder(ids))`` (+ ID fusion) in eval mode: it is valid
        while those modules are in the same state (weights, active/merged adapter sets, hooks,
        modes, item features, the fusion's excluded items; see `adarec.state_key`) and autocast
        is as it was."""
        device = self._device().type
        fusion = () if self.id_fusion is None else (self.id_fusion,)
        return StateKey.of(self.item_encoder, self.dtl, *fusion,
                           extra=(autocast_state(device),))

    def _cache_valid(self) -> bool:
        return self._table is not None and self._table_key == self._state_key()

    def invalidate_cache(self) -> None:
        """Drop the cached item table and any cache of the item encoder. Never needed for
        adarec operations, optimizer steps, loads or mode switches (the caches key on the
        model's state); needed after writes no version counter sees (``p.data.copy_(...)``)."""
        self._table, self._table_key = None, None
        for m in self.item_encoder.modules():
            drop = getattr(m, "invalidate_cache", None)
            if callable(drop):
                drop()

    def train(self, mode: bool = True) -> TransRec:
        if mode:  # free the memory while training (the key would not match anyway)
            self._table, self._table_key = None, None
        return super().train(mode)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        """Eval-mode flags and no grad, without calling ``train()`` (which drops the cache)."""
        flags = [(m, m.training) for m in self.modules()]
        try:
            for m, _ in flags:
                m.training = False
            with torch.no_grad():
                yield
        finally:
            for m, flag in flags:
                m.training = flag

    def item_table(self, batch_size: int = 512) -> Tensor:
        """Every item's embedding ``[n_items + 1, dim]`` in eval mode without grad, cached
        while the item encoder, DTL and ID fusion stay in the same state (see `_state_key`)."""
        with self._inference():
            key = self._state_key()
            if self._table is not None and self._table_key == key:
                return self._table
            ids = torch.arange(self.n_items + 1, device=self._device())
            table = torch.cat([self._encode(c) for c in ids.split(batch_size)])
            self._table, self._table_key = table, key
            return table

    def _device(self) -> torch.device:
        t = next(itertools.chain(self.parameters(), self.buffers()), None)
        return t.device if t is not None else torch.device("cpu")

    # ------------------------------------------------------------------------ user side
    def sequence_output(self, input_ids: Tensor, item_emb: Tensor | None = None) -> Tensor:
        """User encoder output at every position ``[B, L, dim]`` for left-padded ids."""
        if item_emb is None:
            item_emb = self.item_embeddings(input_ids)
        return self.user_encoder(item_emb, input_ids != PAD)

    def user_embeddings(self, history_ids: Tensor) -> Tensor:
        """``[B, dim]``: the output at the last (most recent) position."""
        return self.sequence_output(history_ids)[:, -1]

    def score(self, history_ids: Tensor, candidate_ids: Tensor) -> Tensor:
        """Scores ``[B, C]`` of candidates ``[B, C]`` (divided by ``temperature``). Without
        gradients these are the floats of every inference path (`adarec.rec.scoring`)."""
        if not torch.is_grad_enabled():
            table = self.item_vectors()
            return score_candidates(self.user_vectors(history_ids), table,
                                    candidate_ids.to(table.device), self.temperature)
        user = self._scoring(self.user_embeddings(history_ids))
        items = self._scoring(self.item_embeddings(candidate_ids))
        return torch.einsum("bd,bcd->bc", user, items) / self.temperature

    def user_vectors(self, history_ids: Tensor) -> Tensor:
        """Inference user vectors ``[B, dim]`` as scores read them (float32, normalised for
        cosine), the user encoder run on fixed tiles of histories (`in_user_tiles`)."""
        with self._inference():
            users = in_user_tiles(lambda h: self._scoring(self.user_embeddings(h).float()),
                                  history_ids.to(self._device()))
        check_finite(users, "the user vectors")
        return users

    def item_vectors(self) -> Tensor:
        """The item table as scores read it (float32, normalised for cosine)."""
        table = self._scoring(self.item_table().float())
        check_finite(table[1:], "the item vectors")
        return table

    def full_sort_scores(
        self,
        history_ids: Tensor,
        exclude_history: bool = True,
        exclude_ids: Tensor | None = None,
        batch_size: int = 512,
    ) -> Tensor:
        """Scores of every item ``[B, n_items + 1]`` (inference: eval mode, no grad); the
        padding item, and with ``exclude_history`` the history ids (plus ``exclude_ids``,
        e.g. the untruncated history), get ``-inf``. Float32 scores of `adarec.rec.scoring`,
        the floats `recommend` and `evaluate_ranking` see."""
        self.item_table(batch_size)
        table = self.item_vectors()
        history_ids = history_ids.to(table.device)
        scores = score_block(self.user_vectors(history_ids), table, self.temperature)
        scores[:, PAD] = float("-inf")
        if exclude_history:
            scores.scatter_(1, history_ids, float("-inf"))
            if exclude_ids is not None:
                scores.scatter_(1, exclude_ids.to(table.device), float("-inf"))
        return scores

    def evaluate_ranking(
        self,
        pairs: Sequence[tuple[Sequence[int], int]],
        ks: Sequence[int] = (10, 20),
        metrics: Sequence[str] = METRICS,
        max_len: int | None = None,
        batch_size: int = 256,
        exclude_history: bool = True,
        ties: Ties = "pessimistic",
        seed: int = 0,
    ) -> dict[str, float]:
        """Full-ranking metrics of ``(history, target)`` pairs (e.g. a leave-one-out split's
        ``valid`` or ``test``): every item is scored with the cached item table, the padding
        item is never ranked, and the most recent ``max_len`` items (default: the user
        encoder's ``max_len``) are the input. Two protocols: ``exclude_history=True`` ("history
        masked", adarec's default) ranks the target only against items outside the user's
        whole history; ``False`` ("history unmasked", RecBole's sequential full sort and most
        SASRec papers) ranks it against every item, so numbers are lower (about half on
        MovieLens-100k): say which one a number is. Eval mode and no grad for the call; run it
        under ``torch.autocast`` to encode in bf16 (scores are computed and compared in float32
        all the same). ``ties``/``seed``: the tie rule (`adarec.rec.metrics`; default: a target
        ranks below every item it ties with)."""
        length = max_len or cast(int, self.user_encoder.max_len)
        table = self.item_vectors()
        histories = pad_left([h for h, _ in pairs], length).to(table.device)
        return evaluate_full_ranking(
            lambda idx: self.user_vectors(histories[idx.to(table.device)]), table,
            [t for _, t in pairs], [list(h) for h, _ in pairs], ks=ks, batch_size=batch_size,
            metrics=metrics, exclude_history=exclude_history, ties=ties, seed=seed,
            temperature=self.temperature,
        )

    # ------------------------------------------------------------------------ serving
    def set_item_map(
        self, item_ids: Sequence[Hashable | None], item_texts: Sequence[str] | None = None
    ) -> None:
        """Tell the model each index's raw item id (``item_ids[0]`` is the padding item, as in
        ``InteractionData.item_ids``), and optionally each item's text; both travel with
        `save_pretrained`, and `recommend` then speaks raw ids."""
        ids = list(item_ids)
        if len(ids) != self.n_items + 1:
            raise ConfigError(f"item_ids has {len(ids)} entries; the model has n_items + 1 = "
                              f"{self.n_items + 1} (index 0 is the padding item)")
        index: dict[Hashable, int] = {}
        for i, raw in enumerate(ids[1:], 1):
            if raw in index:
                raise DataError(f"raw item id {raw!r} appears twice (indices {index[raw]}, {i})")
            index[raw] = i
        if item_texts is not None and len(item_texts) != len(ids):
            raise ConfigError(f"item_texts has {len(item_texts)} entries, item_ids {len(ids)}")
        self.item_ids, self._index = [None, *ids[1:]], index
        self.item_texts = None if item_texts is None else list(item_texts)

    def item_index(self, items: Sequence[Hashable], unknown: str = "raise") -> list[int]:
        """Indices of raw ids (with an item map) or checked indices (without one).

        ``unknown="raise"`` refuses ids the model does not know with `UnknownItemError` naming
        them; ``"skip"`` leaves them out (counted in the log).
        """
        if unknown not in ("raise", "skip"):
            raise ConfigError(f"unknown={unknown!r} is not 'raise' or 'skip'")
        if self.item_ids is not None:
            out = [self._index.get(raw, -1) for raw in items]
        else:
            out = [int(i) if isinstance(i, Integral) and not isinstance(i, bool)
                   and 1 <= int(i) <= self.n_items else -1 for i in items]
        bad = [raw for raw, i in zip(items, out, strict=True) if i < 0]
        if bad and unknown == "raise":
            what = "raw item ids" if self.item_ids is not None else (
                f"item indices (no item map: expected ints in 1..{self.n_items}; "
                "call set_item_map to use raw ids)")
            raise UnknownItemError(f"{len(bad)} unknown {what}: {bad[:5]} (pass unknown='skip' "
                                   "to leave them out, or add_items to add new ones)")
        if bad:
            logger.info("skipped %d unknown item(s), e.g. %s", len(bad), bad[:3])
        return [i for i in out if i >= 0]

    @torch.no_grad()
    def recommend(
        self,
        histories: Sequence[Sequence[Hashable]] | Tensor,
        k: int = 10,
        exclude_seen: bool = True,
        exclude: Sequence[Sequence[Hashable]] | None = None,
        candidates: Sequence[Sequence[Hashable]] | None = None,
        unknown: str = "raise",
        batch_size: int = 256,
        item_chunk: int = 65536,
    ) -> Recommendations:
        """Top-``k`` items for each history (oldest item first), in eval mode without grad.

        Ids are raw ids when the model has an item map (`set_item_map`, or a model loaded with
        `from_pretrained`), else indices 1..n_items (a LongTensor of padded index histories
        works too; its zeros are padding). The user encoder reads the most recent
        ``max_len`` items, while ``exclude_seen`` removes the **whole** history from the
        results (plus ``exclude``, e.g. items in a basket). Scores are those of `score` and
        `full_sort_scores` (temperature included); exact ties go to the lower item index at any
        ``item_chunk`` or ``batch_size``. Over the full catalogue the top-k is
        merged chunk by chunk (`adarec.rec.scoring.topk`), so memory stays
        ``batch_size * item_chunk`` scores however many items there are; with ``candidates``
        (one list per history, e.g. from a retrieval stage) only those are ranked
        (re-ranking). Items added with `add_items` are ranked like any other.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        if isinstance(histories, Tensor):
            if self.item_ids is not None:
                raise ConfigError("a tensor of indices cannot be read as raw ids; pass lists of "
                                  "raw ids (the model has an item map)")
            histories = [[i for i in row if i != PAD] for row in histories.tolist()]
        if candidates is not None and len(candidates) != len(histories):
            raise ConfigError(f"{len(candidates)} candidate lists for {len(histories)} histories")
        if exclude is not None and len(exclude) != len(histories):
            raise ConfigError(f"{len(exclude)} exclude lists for {len(histories)} histories")
        seqs = [self.item_index(h, unknown) for h in histories]
        empty = [i for i, h in enumerate(seqs) if not h]
        if empty:
            raise DataError(f"histories {empty[:5]} hold no known item; a sequential model needs "
                            "at least one (serve such users from a fallback, e.g. popularity)")
        extra = [self.item_index(e, "skip") for e in exclude] if exclude is not None else None
        cands = ([list(dict.fromkeys(self.item_index(c, unknown))) for c in candidates]
                 if candidates is not None else None)  # a candidate listed twice counts once
        length = cast(int, self.user_encoder.max_len)
        table = self.item_vectors()
        scores_out, index_out = [], []
        for start in range(0, len(seqs), batch_size):
            rows = range(start, min(start + batch_size, len(seqs)))
            user = self.user_vectors(pad_left([seqs[r] for r in rows], length))
            drop = [[PAD, *(seqs[r] if exclude_seen else []), *(extra[r] if extra else [])]
                    for r in rows]
            excluded = pad_right(drop).to(table.device)
            if cands is None:
                values, idx = topk(user, table, min(k, table.size(0)), self.temperature,
                                   excluded, item_chunk)
            else:
                values, idx = topk_of_candidates(
                    user, table, pad_right([cands[r] for r in rows]).to(table.device), k,
                    self.temperature, excluded)
            idx = idx.masked_fill(values == float("-inf"), PAD)
            scores_out.append(values.cpu())
            index_out.append(idx.cpu())
        scores, indices = torch.cat(scores_out), torch.cat(index_out)
        if scores.size(1) < k:  # fewer items than k in the catalogue or the candidate lists
            pad = k - scores.size(1)
            scores = torch.cat([scores, scores.new_full((scores.size(0), pad), float("-inf"))], 1)
            indices = torch.cat([indices, indices.new_zeros(indices.size(0), pad)], 1)
        names = self.item_ids
        items = [[names[i] if names is not None else i for i in row if i != PAD]
                 for row in indices.tolist()]
        return Recommendations(items, scores, indices)

    def add_items(
        self, item_ids: Sequence[Hashable], texts: Sequence[str], tokenizer: Any = None
    ) -> list[int]:
        """Add items the model never trained on, from their text alone: the item encoder
        encodes them like any other item, so `recommend` can rank them at once. Returns their
        new indices. Needs a `TextItemEncoder` (``tokenizer``: the one it was built with; by
        default the one `TextItemEncoder.from_texts` or `from_pretrained` kept)."""
        encoder = self.item_encoder
        if not hasattr(encoder, "add_texts"):
            raise ConfigError(f"{type(encoder).__name__} cannot encode items it has not seen; "
                              "new items need a text item encoder (TextItemEncoder)")
        if len(item_ids) != len(texts):
            raise ConfigError(f"{len(item_ids)} item ids for {len(texts)} texts")
        if self.item_ids is not None:
            known = [raw for raw in item_ids if raw in self._index]
            if known or len(set(item_ids)) != len(item_ids):
                raise DataError(f"item ids already present or repeated: {known[:5] or item_ids}")
        first = self.n_items + 1
        cast(Any, encoder).add_texts(list(texts), tokenizer)
        new = list(range(first, self.n_items + 1))
        if self.item_ids is not None:
            item_texts = None
            if self.item_texts is not None:
                item_texts = [*self.item_texts, *texts]
            self.set_item_map([*self.item_ids, *item_ids], item_texts)
        elif any(raw != i for raw, i in zip(item_ids, new, strict=True)):
            raise ConfigError(f"without an item map new items get the next indices {new[:3]}...; "
                              "call set_item_map first to use raw ids")
        self.invalidate_cache()
        logger.info("added %d item(s): indices %d..%d", len(new), first, self.n_items)
        return new

    def save_pretrained(self, folder: str | Path, include_base: bool = False,
                        tokenizer: Any = None) -> Path:
        """Write a folder that rebuilds this model (see `adarec.rec.pretrained.save_pretrained`)."""
        from adarec.rec.pretrained import save_pretrained

        return save_pretrained(self, folder, include_base=include_base, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, folder: str | Path, base: Any = None, **kwargs: Any) -> TransRec:
        """Rebuild a model written by `save_pretrained` (see
        `adarec.rec.pretrained.from_pretrained`): ``base`` is the base encoder (a model or a
        local path / hub id), by default the reference recorded in the folder."""
        from adarec.rec.pretrained import from_pretrained

        return from_pretrained(folder, base=base, **kwargs)

    # ------------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Next-item loss of a collated batch (``input_ids``, ``target_ids``, ``negative_ids``,
        ``mask``; all left-padded ``[B, L]``, negatives ``[B, L, k]``)."""
        inputs, targets = batch["input_ids"], batch["target_ids"]
        mask = batch["mask"].bool() if "mask" in batch else targets != PAD
        if self.objective == "cpc":
            last = torch.zeros_like(mask)
            last[:, -1] = mask[:, -1]
            mask = last
        pos = targets[mask]  # [M]
        m = pos.numel()
        if self.loss_name == "full_softmax":
            table = self._encode(torch.arange(self.n_items + 1, device=inputs.device))
            user = self._scoring(self.sequence_output(inputs, table[inputs])[mask])
            keep = None if self.held_out is None else ~self.held_out.to(inputs.device)
            return full_softmax_loss(user / self.temperature, self._scoring(table), pos, keep)
        if self.num_negatives:
            neg = batch["negative_ids"]
            neg = (neg.unsqueeze(-1) if neg.dim() == 2 else neg)[mask]
            if neg.size(-1) < self.num_negatives:
                raise ConfigError(f"the batch has {neg.size(-1)} negatives per position, the "
                                 f"model uses num_negatives={self.num_negatives}")
            neg = neg[:, : self.num_negatives]  # [M, k]
        else:
            neg = pos.new_zeros(m, 0)
        if self.held_out is not None:
            self._refuse_held_out(torch.cat([pos, neg.reshape(-1)]))
        ids = torch.cat([inputs.reshape(-1), pos, neg.reshape(-1)])
        emb = self._encode(ids)
        n_in = inputs.numel()
        in_emb = emb[:n_in].view(*inputs.shape, self.dim)
        cand = self._scoring(emb[n_in:])
        pos_emb, neg_emb = cand[:m], cand[m:].view(m, -1, self.dim)
        user = self._scoring(self.sequence_output(inputs, in_emb)[mask]) / self.temperature
        if self.loss_name == "bce":
            return bce_loss(user, pos_emb, neg_emb, torch.ones(m, dtype=torch.bool,
                                                                device=user.device))
        cands = in_batch_candidates(pos, pos_emb, neg, neg_emb, self.logq_correction,
                                    self.gather_candidates)
        return sampled_softmax_loss(user, cands.embeddings, cands.pos_index, logq=cands.logq,
                                    candidate_ids=cands.ids)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.loss(batch)

    def _refuse_held_out(self, candidates: Tensor) -> None:
        assert self.held_out is not None
        hit = self.held_out.to(candidates.device)[candidates]
        if bool(hit.any()):
            items = sorted(set(candidates[hit].tolist()))[:5]
            raise DataError(
                f"the batch scores held-out item(s) {items} as targets or negatives: training "
                "must not see them (remove them from the training sequences and draw negatives "
                "with TrainCollator(..., exclude_items=...))"
            )

    # ------------------------------------------------------------------------ adapters
    def inject_adapters(
        self,
        item: AdapterSpec | str | Mapping[str, Any] | None = None,
        user: AdapterSpec | str | Mapping[str, Any] | None = None,
        name: str = "default",
        policy: str | None = "adapters",
    ) -> ParameterSummary | None:
        """Inject adapter set ``name`` into the item encoder's transformer(s) and/or the user
        encoder, then apply ``policy`` (see `set_policy`; ``None`` leaves flags alone)."""
        if item is not None:
            encoder = cast(ItemEncoder, self.item_encoder)
            models = encoder.hf_models() if hasattr(encoder, "hf_models") else []
            if not models:
                raise ConfigError(f"{type(self.item_encoder).__name__} has no transformer to "
                                  "adapt")
            for model in models:
                _inject(model, item, name, freeze=False)
        if user is not None:
            _inject(self.user_encoder, user, name, freeze=False)
        self.invalidate_cache()
        return self.set_policy(policy) if policy is not None else None

    def set_policy(
        self, name: str, tune_layernorm: bool = True, verbose: bool = False,
        top: int | None = None, layernorm: bool | None = None,
    ) -> ParameterSummary:
        """Choose what trains (`adarec.rec.policies`; `register_policy` adds more); the DTL
        trains under every built-in policy. ``tune_layernorm`` (``layernorm``: its old name)
        trains the norms from the lowest adapted block up (why the default differs from
        `AdapterSpec.tune_layernorm`: see `adarec.rec.policies`).

        - ``"full"``: everything (base weights, adapters, DTL, user encoder).
        - ``"adapters"`` (the paper's adapter tuning): in each encoder that holds adapters, only
          its adapters and (with ``tune_layernorm``) its LayerNorms from the lowest adapted block
          upwards (with adapters everywhere: every block's norms, and SASRec's final norm); an
          encoder without adapters (e.g. a SASRec user encoder learnt from scratch) trains
          fully.
        - ``"item_adapters"``: item-encoder adapters + LayerNorms; user encoder fully.
        - ``"user_adapters"``: item encoder frozen; user-encoder adapters + LayerNorms.
        - ``"frozen"`` (linear probe): item encoder frozen (its adapters too); user encoder
          fully.
        - ``"top_blocks"`` with ``top=k``: fine-tune the top ``k`` transformer blocks of the item
          encoder (whatever they hold, adapters included); its embeddings and lower blocks stay
          frozen (so `TextItemEncoder` can cache them); user encoder fully.

        Returns the `adarec.parameter_summary` table (logged with ``verbose``).
        """
        if (top is not None) != (name == "top_blocks"):
            raise ConfigError("top=k goes with policy 'top_blocks' (and only with it)")
        if layernorm is not None:  # the old name of the same choice
            tune_layernorm = layernorm
        summary = apply_policy(self, name, tune_layernorm, top=top)
        self.policy = name
        self.policy_args = {"top": top} if top is not None else {}
        if verbose:
            logger.info("policy %r:\n%s", name, summary)
        return summary

    # ------------------------------------------------------------------------ transfer
    def _item_specific_prefixes(self) -> list[str]:
        return [n for n, m in self.named_modules() if getattr(m, "transferable", True) is False]

    def transferable_state_dict(self) -> dict[str, Tensor]:
        """Weights that carry over to another item catalogue: item encoder (not ID or fixed
        tables), DTL, user encoder and any adapters. Item features are never included."""
        skip = self._item_specific_prefixes()
        return {
            k: v for k, v in self.state_dict().items()
            if not any(k.startswith(p + ".") for p in skip)
        }

    def load_transferable_state_dict(
        self, state: Mapping[str, Tensor], strict: bool = True
    ) -> list[str]:
        """Load `transferable_state_dict` weights; returns the keys left at their current value
        (the item-specific ones). With ``strict`` any other missing or unknown key raises."""
        result = self.load_state_dict(dict(state), strict=False)
        expected = set(self.transferable_state_dict())
        missing = [k for k in result.missing_keys if k in expected]
        if strict and (missing or result.unexpected_keys):
            raise StateMismatchError(f"transferable state mismatch: missing {missing}, unexpected "
                           f"{result.unexpected_keys} (inject the same adapter sets before "
                           "loading a state that has adapters)")
        self.invalidate_cache()
        return list(result.missing_keys)


__all__ = ["LOSS_NAMES", "OBJECTIVES", "POLICIES", "Recommendations", "TransRec"]
