"""TransRec (Fu et al., WSDM 2024): a pre-trained item modality encoder, a dimension-transformation
layer (DTL: Linear + GELU) and a sequential user encoder, scored by dot product.

The model holds the towers, the loss and the scores; the work lives in small modules it
delegates to: `adarec.rec.item_tower` (encoding and the cached item table),
`adarec.rec.inference` (the one scoring path), `adarec.rec.evaluation`, `adarec.rec.serving`
(item map, `recommend`, `add_items`), `adarec.rec.objective` (the loss),
`adarec.rec.policies` (what trains), `adarec.rec.transfer` and `adarec.rec.folder_format`
(`save_pretrained` / `from_pretrained`).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from adarec.errors import AdapterStateError, ConfigError
from adarec.freezing import ParameterSummary
from adarec.inject import inject_adapters as _inject
from adarec.rec import evaluation, folder_format, inference, serving, transfer
from adarec.rec.data import PAD
from adarec.rec.item_adaptors import IDFusion, adaptor_name, build_adaptor
from adarec.rec.item_encoder import ItemEncoder
from adarec.rec.item_tower import ItemTableCache, encode_items
from adarec.rec.item_tower import inference as _inference_flags
from adarec.rec.losses import GatherCandidates
from adarec.rec.metrics import METRICS, Ties
from adarec.rec.objective import LOSS_NAMES, OBJECTIVES, check_objective, next_item_loss
from adarec.rec.policies import apply_policy, policy_names
from adarec.rec.scoring import check_similarity, prepare
from adarec.rec.serving import Recommendations
from adarec.rec.set_dtl import DTLChoice, SetDTLs, add_set_dtl, set_dtls
from adarec.rec.user_encoders import SASRec
from adarec.spec import AdapterSpec

POLICIES = policy_names()
Spec = AdapterSpec | str | Mapping[str, Any] | None
logger = logging.getLogger(__name__)


class TransRec(nn.Module):
    """Item encoder -> DTL -> user encoder, trained for next-item prediction.

    ``objective="sasrec"`` puts the loss at every real position, ``"cpc"`` only at the last one.
    ``loss``: ``"bce"`` (the collator's negatives), ``"sampled_softmax"`` (the batch's targets
    and negatives as candidates, accidental hits masked; ``num_negatives=0``: in-batch only;
    ``logq_correction`` subtracts each candidate's log in-batch frequency, Yi et al. 2019) or
    ``"full_softmax"`` (every item each step: for ID/precomputed tables).

    ``dtl``: ``True``/``"linear"``, ``"moe"`` (UniSRec's whitening MoE adaptor), ``False``
    (identity; item width must equal ``user_dim``) or any module mapping item width to
    ``user_dim``; an adapter set may own another (``inject_adapters(..., dtl=...)``).
    ``id_fusion="add"``/``"gate"`` adds a learned ID embedding (`IDFusion`); ``id_dropout``
    switches it off for that share of the item occurrences in training (cold-item robustness).
    ``similarity="cosine"`` scores L2-normalised vectors divided by ``temperature``. Without
    ``user_encoder`` a `SASRec` of width ``user_dim`` is built from ``max_len``, ``n_layers``,
    ``n_heads``, ``dropout``. ``held_out``: a bool mask ``[n_items + 1]`` of items training must
    never score (full softmax leaves them out; a batch holding one is refused).
    """

    def __init__(
        self, item_encoder: nn.Module, user_encoder: nn.Module | None = None,
        user_dim: int = 64, objective: str = "sasrec", loss: str = "bce",
        num_negatives: int = 1, dtl: bool | str | nn.Module = True, max_len: int = 50,
        n_layers: int = 2, n_heads: int = 2, dropout: float = 0.1, temperature: float = 1.0,
        logq_correction: bool = True, id_fusion: str | None = None, similarity: str = "dot",
        id_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_objective(objective, loss, num_negatives)
        if not isinstance(item_encoder, ItemEncoder):
            raise ConfigError(f"{type(item_encoder).__name__} is not an item encoder (see "
                              "adarec.rec.item_encoder.ItemEncoder / ItemEncoderBase)")
        check_similarity(similarity, temperature)
        if user_encoder is not None:
            user_dim = int(cast(Any, user_encoder).dim)
        self.item_encoder: ItemEncoder = item_encoder
        self.dtl = build_adaptor(dtl, item_encoder.dim, user_dim)
        self.dtl_kind = adaptor_name(dtl)  # None for a module passed as ``dtl``
        self.dtl_sets = SetDTLs()  # where adapter sets' own DTLs go (`adarec.rec.set_dtl`)
        if id_dropout and not id_fusion:
            raise ConfigError("id_dropout drops the ID fusion's ID part: it needs id_fusion")
        self.id_fusion = (IDFusion(self.n_items, user_dim, id_fusion, dropout=id_dropout)
                          if id_fusion else None)
        self.user_encoder = user_encoder or SASRec(user_dim, n_layers=n_layers, n_heads=n_heads,
                                                   max_len=max_len, dropout=dropout)
        self.dim, self.similarity, self.held_out = user_dim, similarity, cast(Tensor | None, None)
        self.objective, self.loss_name = objective, loss
        self.num_negatives, self.temperature = num_negatives, temperature
        self.logq_correction = logq_correction
        self.dedup = True  # encode each distinct item of a batch once (False: for tests)
        self.gather_candidates: GatherCandidates | None = None  # e.g. cross-rank negatives
        self.policy: str | None = None
        self.policy_args: dict[str, Any] = {}
        self.item_ids: list[Hashable | None] | None = None  # raw id per index (set_item_map)
        self.item_texts: list[str] | None = None
        self._index: dict[Hashable, int] = {}
        self._items = ItemTableCache()
        self._set_items: dict[str | None, ItemTableCache] = {}  # per adapter set (mixed serving)

    @property
    def n_items(self) -> int:
        return int(self.item_encoder.n_items)

    # ------------------------------------------------------------------------ the towers
    def _encode(self, ids: Tensor) -> Tensor:
        return encode_items(self, ids)

    def item_embeddings(self, ids: Tensor) -> Tensor:
        """``ids`` of any shape -> ``[*ids.shape, dim]`` (from the cached table when it is
        valid and no gradient is needed)."""
        return self._items.lookup(self, ids)

    def item_table(self, batch_size: int = 512) -> Tensor:
        """Every item's embedding ``[n_items + 1, dim]`` in eval mode without grad, cached
        while the item tower stays in the same state (`adarec.rec.item_tower`)."""
        return self._items.get(self, batch_size)

    def invalidate_cache(self) -> None:
        """Drop the item table and every cache of the item encoder. Never needed for adarec
        operations, optimizer steps, loads or mode switches (the caches key on the model's
        state); needed after writes no version counter sees (``p.data.copy_(...)``)."""
        self._items.clear()
        self._set_items.clear()
        self.item_encoder.invalidate_cache()

    def train(self, mode: bool = True) -> TransRec:
        if mode:  # free the memory while training (the key would not match anyway)
            self._items.clear()
            self._set_items.clear()
        return super().train(mode)

    @contextmanager
    def _inference(self) -> Iterator[None]:
        with _inference_flags(self):
            yield

    def sequence_output(self, input_ids: Tensor, item_emb: Tensor | None = None) -> Tensor:
        """User encoder output at every position ``[B, L, dim]`` for left-padded ids."""
        if item_emb is None:
            item_emb = self.item_embeddings(input_ids)
        return cast(Tensor, self.user_encoder(item_emb, input_ids != PAD))

    def user_embeddings(self, history_ids: Tensor) -> Tensor:
        """``[B, dim]``: the output at the last (most recent) position."""
        return self.sequence_output(history_ids)[:, -1]

    # ------------------------------------------------------------------------ scores
    def score(self, history_ids: Tensor, candidate_ids: Tensor) -> Tensor:
        """Scores ``[B, C]`` of candidates ``[B, C]`` (divided by ``temperature``); without
        gradients the floats of every inference path (`adarec.rec.inference`)."""
        if not torch.is_grad_enabled():
            return inference.candidate_scores(self, history_ids, candidate_ids)
        user = prepare(self.user_embeddings(history_ids), self.similarity)
        items = prepare(self.item_embeddings(candidate_ids), self.similarity)
        return torch.einsum("bd,bcd->bc", user, items) / self.temperature

    def user_vectors(self, history_ids: Tensor) -> Tensor:
        return inference.user_vectors(self, history_ids)

    def item_vectors(self) -> Tensor:
        return inference.item_vectors(self)

    def full_sort_scores(self, history_ids: Tensor, exclude_history: bool = True,
                         exclude_ids: Tensor | None = None, batch_size: int = 512) -> Tensor:
        """Scores of every item ``[B, n_items + 1]`` (`adarec.rec.inference.full_sort_scores`)."""
        return inference.full_sort_scores(self, history_ids, exclude_history, exclude_ids,
                                          batch_size)

    def evaluate_ranking(self, pairs: Sequence[tuple[Sequence[int], int]],
                         ks: Sequence[int] = (10, 20), metrics: Sequence[str] = METRICS,
                         max_len: int | None = None, batch_size: int = 256,
                         exclude_history: bool = True, ties: Ties = "pessimistic",
                         seed: int = 0) -> dict[str, float]:
        """Full-ranking metrics of ``(history, target)`` pairs (`adarec.rec.evaluation`)."""
        return evaluation.evaluate_ranking(self, pairs, ks, metrics, max_len, batch_size,
                                           exclude_history, ties, seed)

    # ------------------------------------------------------------------------ serving
    def set_item_map(self, item_ids: Sequence[Hashable | None],
                     item_texts: Sequence[str] | None = None) -> None:
        """Each index's raw item id (``item_ids[0]``: the padding item) and optionally text."""
        serving.set_item_map(self, item_ids, item_texts)

    def item_index(self, items: Sequence[Hashable], unknown: str = "raise") -> list[int]:
        return serving.item_index(self, items, unknown)

    def recommend(self, histories: Sequence[Sequence[Hashable]] | Tensor, k: int = 10,
                  exclude_seen: bool = True, exclude: Sequence[Sequence[Hashable]] | None = None,
                  candidates: Sequence[Sequence[Hashable]] | None = None,
                  unknown: str = "raise", batch_size: int = 256,
                  item_chunk: int = 65536,
                  set_names: Sequence[str | None] | None = None) -> Recommendations:
        """Top-``k`` items per history (oldest item first; raw ids with an item map, else
        indices), eval mode, no grad. ``exclude_seen`` removes the whole history (the encoder
        reads the last ``max_len``), ``exclude`` more; ``candidates`` re-ranks given lists.
        Scores are `score`'s; ties go to the lower index at any ``item_chunk``/``batch_size``.
        ``set_names``: one adapter set per history (``None``: none), all served in one call, each
        row as if served alone with its set active (`adarec.rec.mixed_serving`)."""
        return serving.recommend(self, histories, k, exclude_seen, exclude, candidates,
                                 unknown, batch_size, item_chunk, set_names)

    def add_items(self, item_ids: Sequence[Hashable], texts: Sequence[str] | None = None,
                  tokenizer: Any = None, *, images: Sequence[Any] | None = None,
                  audio: Sequence[Any] | None = None, inputs: Sequence[Any] | None = None,
                  processor: Any = None) -> list[int]:
        """Add items the model never trained on from their ``texts``, ``images``, ``audio``
        clips (arrays with their rate as ``(samples, rate)`` pairs, or WAV paths) or ``inputs``
        (what the item encoder reads, e.g. ``(text, image)`` pairs for a multimodal one): the
        item encoder encodes them like any other, so `recommend` ranks them at once.
        ``processor``: the image processor / feature extractor (default: the encoder's own)."""
        return serving.add_items_from(self, item_ids, texts=texts, tokenizer=tokenizer,
                                      images=images, audio=audio, inputs=inputs,
                                      processor=processor)

    def save_pretrained(self, folder: str | Path, include_base: bool = False,
                        tokenizer: Any = None) -> Path:
        """Write a folder that rebuilds this model (`adarec.rec.folder_format`)."""
        return folder_format.save(self, folder, include_base=include_base, tokenizer=tokenizer)

    @classmethod
    def from_pretrained(cls, folder: str | Path, base: Any = None, check_base: bool = True,
                        local_files_only: bool = True,
                        map_location: str | torch.device = "cpu") -> TransRec:
        """Rebuild a `save_pretrained` folder in eval mode. ``base``: the base encoder (a model,
        used in place, or a local path / hub id; a dict by path for several), by default the
        recorded reference; ``check_base=False`` skips the base-weights digest."""
        loaded = folder_format.read(folder, base, check_base, local_files_only)
        model = cls(loaded.item_encoder, user_encoder=loaded.user_encoder, **loaded.settings)
        folder_format.restore(model, loaded, map_location)
        return model

    # ------------------------------------------------------------------------ training
    def loss(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Next-item loss of a collated batch (`adarec.rec.objective.next_item_loss`)."""
        return next_item_loss(self, batch)

    def forward(self, batch: Mapping[str, Tensor]) -> Tensor:
        return self.loss(batch)

    def inject_adapters(self, item: Spec = None, user: Spec = None, name: str = "default",
                        policy: str | None = "adapters",
                        dtl: DTLChoice | None = None) -> ParameterSummary | None:
        """Inject adapter set ``name`` into the item encoder's transformer(s) and/or the user
        encoder, then apply ``policy`` (see `set_policy`; ``None`` leaves flags alone).
        ``dtl``: the set's own DTL (`adarec.rec.set_dtl`: as the model's ``dtl``, or
        ``"copy"`` of the shared one), used while the set is active; ``None``: the shared DTL."""
        if dtl is not None and name in set_dtls(self):
            raise AdapterStateError(f"adapter set {name!r} already has its own DTL")
        if item is not None:
            models = self.item_encoder.hf_models()
            if not models:
                raise ConfigError(f"{type(self.item_encoder).__name__} has no transformer to "
                                  "adapt")
            for model in models:
                _inject(model, item, name, freeze=False)
        if user is not None:
            _inject(self.user_encoder, user, name, freeze=False)
        if dtl is not None:
            add_set_dtl(self, name, dtl)
        self.invalidate_cache()
        return self.set_policy(policy) if policy is not None else None

    def set_policy(self, name: str, tune_layernorm: bool = True, verbose: bool = False,
                   top: int | None = None, layernorm: bool | None = None) -> ParameterSummary:
        """Choose what trains: a policy of `adarec.rec.policies` (``"full"``, ``"adapters"``,
        ``"item_adapters"``, ``"user_adapters"``, ``"frozen"``, ``"top_blocks"`` with
        ``top=k``, or one added with `register_policy`); ``layernorm`` is the old name of
        ``tune_layernorm``. Returns the parameter summary (logged with ``verbose``)."""
        if (top is not None) != (name == "top_blocks"):
            raise ConfigError("top=k goes with policy 'top_blocks' (and only with it)")
        summary = apply_policy(self, name, tune_layernorm if layernorm is None else layernorm,
                               top=top)
        self.policy, self.policy_args = name, ({"top": top} if top is not None else {})
        if verbose:
            logger.info("policy %r:\n%s", name, summary)
        return summary

    # ------------------------------------------------------------------------ transfer
    def transferable_state_dict(self) -> dict[str, Tensor]:
        """Weights that carry over to another item catalogue (`adarec.rec.transfer`)."""
        return transfer.transferable_state_dict(self)

    def load_transferable_state_dict(self, state: Mapping[str, Tensor],
                                     strict: bool = True) -> list[str]:
        """Load `transferable_state_dict` weights; returns the keys left as they were."""
        missing = transfer.load_transferable_state_dict(self, state, strict)
        self.invalidate_cache()
        return missing


__all__ = ["LOSS_NAMES", "OBJECTIVES", "POLICIES", "Recommendations", "TransRec"]
