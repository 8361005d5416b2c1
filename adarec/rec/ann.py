"""Approximate top-k over large catalogues: a faiss index retrieves, the model's scoring ranks.

An exact `TransRec.recommend` scores every item for every user; at a million items that is most
of the serving cost. `ItemIndex` asks a faiss index (``pip install adarec[ann]``) for the
``N = k * oversample + (excluded items)`` most promising items of each user, then re-ranks those
exactly with `adarec.rec.scoring.topk_of_candidates`, so

- returned scores are the model's own (`recommend`'s floats, temperature included) and exact
  ties go to the lower item index, as everywhere in adarec;
- the index only has to put the true top-k *somewhere* in its top N (recall@10 of the final list
  is the index's recall of the top 10 within N, much higher than its recall@N);
- exclusions and candidate filters never cost results: a row left with fewer than ``k`` items
  is searched again with a larger ``N``, and once ``N`` reaches the number of searchable items
  the row is ranked exactly over all of them.

The index remembers a digest of the item table it was built from (`table_fingerprint`) and
refuses to serve a model whose table changed since (retrained, another adapter set active, new
items): an approximate index of other vectors would silently return the wrong items.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from adarec.errors import CheckpointError, ConfigError, DataError
from adarec.folders import MissingFile, atomic_folder, read_folder
from adarec.rec.data import PAD, pad_left, pad_right
from adarec.rec.scoring import USER_TILE, check_finite, topk_of_candidates
from adarec.rec.transrec import Recommendations, TransRec

KINDS = ("flat", "hnsw", "ivfpq")
OVERSAMPLE = {"flat": 2, "hnsw": 4, "ivfpq": 16}
"""Default ``N / k`` per kind: the flat index is exact up to float rounding (its own BLAS), the
graph and the quantised index need more slack for the re-ranking to find the true top k."""
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
EF_SEARCH = 256
NPROBE = 64
FILTER_EXACT = 0.05
"""A candidate filter keeping at most this share of the catalogue is ranked exactly over its
items: scoring them all is cheaper than a graph or list search that steps over the rest (and
HNSW's recall drops under selective filters)."""
RERANK_ROWS = USER_TILE
TRAIN_SAMPLE = 100_000
"""Rows a non-IVF trained index (a scalar quantiser's ranges) learns from."""
FORMAT = "adarec-ann"
FORMAT_VERSION = 2
"""2: indexes may hold the MIPS -> L2 reduction (``l2_max_norm`` in the record); 1 read as
inner-product indexes without it."""
RECORD, INDEX_FILE = "ann.json", "index.faiss"


class StaleIndexError(CheckpointError):
    """The model's item table is not the one the index was built from."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _faiss() -> Any:
    """faiss, its threads set to torch's (so ``torch.set_num_threads`` governs both)."""
    try:
        import faiss
    except ImportError as e:
        raise ImportError("approximate retrieval needs faiss: pip install 'adarec[ann]' "
                          "(faiss-cpu)") from e
    faiss.omp_set_num_threads(torch.get_num_threads())
    return faiss


def table_fingerprint(vectors: Tensor, similarity: str) -> str:
    """sha256 of the float32 item vectors (shape and bytes) and the similarity: two tables with
    the same digest rank identically; any changed bit changes it."""
    h = hashlib.sha256(f"{similarity}:{tuple(vectors.shape)}:".encode())
    h.update(vectors.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def mips_to_l2(rows: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Item rows for an L2 index that ranks like inner product (Bachrach et al. 2014, faiss's
    advice for graphs): append ``sqrt(max_norm^2 - |x|^2)`` so every row has norm ``max_norm``;
    with queries given a 0 there (`l2_query`), ``|q - x|^2 = |q|^2 + max_norm^2 - 2 q.x``, so
    the nearest rows are the highest dot products. HNSW's greedy search over inner product
    (not a metric) is known to miss neighbours; over L2 it keeps its guarantees. Rows above
    ``max_norm`` (added after the build) get 0 and rank as if their norm were ``max_norm``
    (the exact re-ranking still scores them right). ``None``: no reduction, rows unchanged."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if max_norm is None:
        return rows
    extra = np.sqrt(np.maximum(max_norm**2 - _squared_norms(rows), 0.0)).astype(np.float32)
    return np.ascontiguousarray(np.hstack([rows, extra[:, None]]))


def _squared_norms(rows: np.ndarray) -> np.ndarray:
    """Each row's squared norm, summed in float64 (the reduction's max norm and padding)."""
    return np.einsum("ij,ij->i", rows, rows, dtype=np.float64)


def l2_query(queries: np.ndarray, max_norm: float | None) -> np.ndarray:
    """Queries for an index built with `mips_to_l2`: a 0 appended (``None``: unchanged)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if max_norm is None:
        return queries
    return np.ascontiguousarray(np.hstack([queries, np.zeros((len(queries), 1), np.float32)]))


def default_factory(kind: str, n_items: int, dim: int) -> str:
    """The faiss factory string of ``kind`` for a catalogue of ``n_items`` vectors of ``dim``:

    - ``"flat"``: ``IDMap,Flat`` (exact inner product, ``4 d`` bytes per item);
    - ``"hnsw"``: ``IDMap,HNSW32`` (a graph with 32 links per node: fast, ~``4 d + 256`` bytes
      per item, cannot delete);
    - ``"ivfpq"``: ``IVF{nlist},PQ{m}x4fs`` with ``nlist ~ 4 sqrt(N)`` lists (at most ``N /
      39``, faiss's minimum of training points per list), ``m`` the largest divisor of ``d`` up
      to ``d / 2`` and 4-bit fast-scan codes (``m / 2`` bytes per item: 16 at d=64; trains in
      seconds where 8-bit codes took minutes at 100k items, and scans several times faster at
      the same recall: the candidates are re-ranked exactly anyway). Odd ``m`` or under 1,000
      items: ``PQ{m}x{bits}``, 8-bit codes or fewer (faiss wants 39 training points a code).
    """
    if kind == "flat":
        return "IDMap,Flat"
    if kind == "hnsw":
        return f"IDMap,HNSW{HNSW_M}"
    if kind == "ivfpq":
        nlist = max(1, min(round(4 * math.sqrt(n_items)), n_items // 39))
        m = max(i for i in range(1, max(1, dim // 2) + 1) if dim % i == 0)
        if m % 2 == 0 and n_items >= 1000:
            return f"IVF{nlist},PQ{m}x4fs"
        bits = min(8, max(1, int(math.log2(max(2, n_items // 39)))))
        return f"IVF{nlist},PQ{m}x{bits}"
    raise ConfigError(f"kind={kind!r} is not one of {list(KINDS)}")


def auto_kind(n_items: int) -> str:
    """Flat (exact) up to 100k items, HNSW up to 5M (fast, ~4d+256 bytes an item), IVF-PQ beyond
    (``d / 2`` bytes an item: 10M items at d=64 in 0.3 GB)."""
    return "flat" if n_items <= 100_000 else "hnsw" if n_items <= 5_000_000 else "ivfpq"


class ItemIndex:
    """A faiss index of a `TransRec`'s item table (`item_vectors`), re-ranked by the model.

    Build with `ItemIndex.build`, query with `search` (histories or user vectors) and
    `similar_items`, keep in step with `add_items` / `remove_items`, store with `save` / `load`.
    Item 0 (padding) is never indexed.
    """

    def __init__(self, model: TransRec, index: Any, kind: str, factory: str, fingerprint: str,
                 n_items: int, oversample: int | None = None, ef_search: int = EF_SEARCH,
                 nprobe: int = NPROBE, removed: Sequence[int] = (),
                 l2_max_norm: float | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"kind={kind!r} is not one of {list(KINDS)}")
        self.model, self.index, self.kind, self.factory = model, index, kind, factory
        self.fingerprint, self.n_items = fingerprint, n_items
        self.oversample = OVERSAMPLE[kind] if oversample is None else oversample
        self.ef_search, self.nprobe = ef_search, nprobe
        self.l2_max_norm = l2_max_norm
        """Set when the index holds the MIPS -> L2 reduction (`mips_to_l2`): the build's
        largest item norm."""
        self.dim = int(index.d) - (l2_max_norm is not None)
        if self.oversample < 1 or ef_search < 1 or nprobe < 1:
            raise ConfigError(f"oversample, ef_search and nprobe must be >= 1, got "
                              f"{self.oversample}, {ef_search}, {nprobe}")
        self.live = torch.ones(n_items + 1, dtype=torch.bool)
        """Items the index may return (False: padding and removed items)."""
        self.live[PAD] = False
        self.live[list(removed)] = False
        self._source: Tensor | None = None
        self._vectors: Tensor | None = None

    # ------------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: TransRec, kind: str = "auto", *, factory: str | None = None,
              oversample: int | None = None, ef_search: int = EF_SEARCH, nprobe: int = NPROBE,
              seed: int = 0, l2_reduction: bool = False) -> ItemIndex:
        """Index every item of ``model`` (``kind``: ``"flat"``, ``"hnsw"``, ``"ivfpq"`` or
        ``"auto"`` by catalogue size, `auto_kind`; ``factory``: another faiss factory string
        of that kind). IVF is trained on a seeded sample of the table. ``l2_reduction``: index
        `mips_to_l2` rows in an L2 index instead of the raw rows by inner product. Off by
        default: on the tables of docs/benchmarks.md it lowered HNSW's recall, but raised IVF's
        a great deal on a table with a strong common direction (as text encoders' have)."""
        vectors = model.item_vectors()
        n = vectors.size(0) - 1
        if n < 1:
            raise DataError("the model has no items to index")
        kind = auto_kind(n) if kind == "auto" else kind
        rows = np.ascontiguousarray(vectors[1:].cpu().numpy(), dtype=np.float32)
        max_norm = float(np.sqrt(_squared_norms(rows).max())) if l2_reduction else None
        rows = mips_to_l2(rows, max_norm)
        factory = factory or default_factory(kind, n, rows.shape[1])  # d + 1 when reduced
        faiss = _faiss()
        metric = faiss.METRIC_L2 if l2_reduction else faiss.METRIC_INNER_PRODUCT
        index = faiss.index_factory(rows.shape[1], factory, metric)
        if kind == "hnsw":
            faiss.downcast_index(index.index).hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        if not index.is_trained:  # IVF lists, or a scalar quantiser's ranges
            ivf = faiss.try_extract_index_ivf(index)
            sample = min(n, 40 * int(ivf.nlist) if ivf is not None else TRAIN_SAMPLE)
            pick = np.random.default_rng(seed).choice(n, size=sample, replace=False)
            index.train(rows[np.sort(pick)])
        index.add_with_ids(rows, np.arange(1, n + 1, dtype=np.int64))
        out = cls(model, index, kind, factory, table_fingerprint(vectors, model.similarity), n,
                  oversample, ef_search, nprobe, l2_max_norm=max_norm)
        out._source, out._vectors = model.item_table(), vectors
        return out

    def _table(self) -> Tensor:
        """The model's item vectors, checked against the fingerprint when the model's cached
        table is not the one last checked (a tensor identity test otherwise: free per call)."""
        source = self.model.item_table()
        if source is self._source and self._vectors is not None:
            return self._vectors
        vectors = self.model.item_vectors()
        self._check(vectors)
        self._source, self._vectors = source, vectors
        return vectors

    def _check(self, vectors: Tensor) -> None:
        found = table_fingerprint(vectors, self.model.similarity)
        if found == self.fingerprint:
            return
        n = vectors.size(0) - 1
        what = (f"it has {n} items, the index {self.n_items}" if n != self.n_items else
                "same size, other vectors")
        hint = ("; after model.add_items call index.add_items()" if n > self.n_items else "")
        raise StaleIndexError(
            f"the model's item table is not the one this index was built from ({what}: "
            f"retrained, another adapter set active or other items{hint}); rebuild it with "
            f"ItemIndex.build(model) or ItemIndex.load(..., rebuild=True)")

    # ------------------------------------------------------------------------ keeping in step
    def add_items(self) -> list[int]:
        """Index the items the model gained since the index was built (`TransRec.add_items`),
        without a rebuild: the existing rows must be bit-for-bit the indexed ones. Returns the
        indices added."""
        vectors = self.model.item_vectors()
        n = vectors.size(0) - 1
        if n < self.n_items:
            raise StaleIndexError(f"the model has {n} items, fewer than the {self.n_items} "
                                  "indexed: rebuild the index")
        old = table_fingerprint(vectors[: self.n_items + 1], self.model.similarity)
        if old != self.fingerprint:
            raise StaleIndexError("the vectors of items already indexed changed (retrained, or "
                                  "another adapter set active), not only new items: rebuild "
                                  "the index with ItemIndex.build(model)")
        new = list(range(self.n_items + 1, n + 1))
        if new:
            rows = mips_to_l2(vectors[self.n_items + 1 :].cpu().numpy(), self.l2_max_norm)
            _faiss()
            self.index.add_with_ids(rows, np.asarray(new, dtype=np.int64))
            self.live = torch.cat([self.live, torch.ones(len(new), dtype=torch.bool)])
        self.n_items = n
        self.fingerprint = table_fingerprint(vectors, self.model.similarity)
        self._source, self._vectors = self.model.item_table(), vectors
        return new

    def remove_items(self, items: Sequence[Hashable], unknown: str = "raise") -> list[int]:
        """Stop returning ``items`` (raw ids or indices, e.g. delisted products): deleted from
        flat and IVF indexes; an HNSW graph cannot delete a node without breaking the paths
        through it, so there they are marked and filtered at search time (memory stays)."""
        return self._remove(self.model.item_index(items, unknown))

    def _remove(self, indices: Sequence[int]) -> list[int]:
        idx = [i for i in dict.fromkeys(indices) if 0 < i <= self.n_items and bool(self.live[i])]
        if idx and self.kind != "hnsw":
            faiss = _faiss()
            self.index.remove_ids(faiss.IDSelectorBatch(np.asarray(idx, dtype=np.int64)))
        self.live[idx] = False
        return idx

    @property
    def removed(self) -> list[int]:
        return [i for i in (~self.live).nonzero().flatten().tolist() if i != PAD]

    # ------------------------------------------------------------------------ queries
    def search(
        self,
        queries: Sequence[Sequence[Hashable]] | Tensor,
        k: int = 10,
        *,
        exclude_seen: bool = True,
        exclude: Sequence[Sequence[Hashable]] | None = None,
        candidates: Sequence[Hashable] | Tensor | None = None,
        unknown: str = "raise",
        oversample: int | None = None,
    ) -> Recommendations:
        """Top-``k`` of each query, as `TransRec.recommend` returns them (raw ids with an item
        map, scores of the model, ties to the lower index).

        ``queries``: histories (raw ids, oldest first, or a LongTensor of padded indices; the
        whole history is excluded with ``exclude_seen``) or float user vectors ``[B, d]`` as
        `TransRec.user_vectors` returns them. ``exclude``: more items per row. ``candidates``:
        the only items that may be returned, for every row (raw ids / indices, or a bool mask
        ``[n_items + 1]``), e.g. the items in stock: applied inside the faiss search.
        ``oversample``: ``N / k`` (default: the index's)."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        users, drops = self._queries(queries, exclude_seen, unknown)
        if exclude is not None:
            if len(exclude) != len(drops):
                raise ConfigError(f"{len(exclude)} exclude lists for {len(drops)} queries")
            drops = [d + self.model.item_index(e, "skip") for d, e in zip(drops, exclude,
                                                                          strict=True)]
        allowed = self.live if candidates is None else self.live & self._mask(candidates, unknown)
        return self._retrieve(users, k, drops, allowed, self.model.temperature,
                              oversample or self.oversample)

    def similar_items(self, items: Sequence[Hashable], k: int = 10, *,
                      candidates: Sequence[Hashable] | Tensor | None = None,
                      unknown: str = "raise") -> Recommendations:
        """The ``k`` items most like each of ``items`` (raw ids or indices), the item itself
        left out: scored by the model's similarity between item vectors (dot or cosine, without
        the temperature, which only scales user scores)."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        idx = self.model.item_index(items, unknown)
        table = self._table()
        allowed = self.live if candidates is None else self.live & self._mask(candidates, unknown)
        return self._retrieve(table[idx], k, [[i] for i in idx], allowed, 1.0, self.oversample)

    def _queries(self, queries: Sequence[Sequence[Hashable]] | Tensor, exclude_seen: bool,
                 unknown: str) -> tuple[Tensor, list[list[int]]]:
        """User vectors and each row's excluded items (its history, with ``exclude_seen``)."""
        model = self.model
        if isinstance(queries, Tensor) and queries.is_floating_point():
            if queries.dim() != 2 or queries.size(1) != self.dim:
                raise ConfigError(f"user vectors must be [B, {self.dim}], got "
                                  f"{tuple(queries.shape)}")
            users = queries.float()
            check_finite(users, "the user vectors")
            if model.similarity == "cosine" and users.numel():
                off = float((users.norm(dim=1) - 1).abs().max())
                if off > 1e-3:
                    raise ConfigError(f"the model scores by cosine but the user vectors are not "
                                      f"L2-normalised (a norm is off 1 by {off:.3g}): pass "
                                      "model.user_vectors(...) output")
            return users, [[] for _ in range(users.size(0))]
        if isinstance(queries, Tensor):
            if model.item_ids is not None:
                raise ConfigError("a tensor of indices cannot be read as raw ids; pass lists of "
                                  "raw ids (the model has an item map)")
            queries = [[i for i in row if i != PAD] for row in queries.tolist()]
        seqs = [model.item_index(h, unknown) for h in queries]
        empty = [i for i, h in enumerate(seqs) if not h]
        if empty:
            raise DataError(f"histories {empty[:5]} hold no known item; a sequential model needs "
                            "at least one (serve such users from a fallback, e.g. popularity)")
        length = cast(int, model.user_encoder.max_len)
        users = model.user_vectors(pad_left(seqs, length)) if seqs else torch.zeros(0, self.dim)
        return users, [list(s) if exclude_seen else [] for s in seqs]

    def _mask(self, candidates: Sequence[Hashable] | Tensor, unknown: str) -> Tensor:
        if isinstance(candidates, Tensor) and candidates.dtype == torch.bool:
            if candidates.shape != (self.n_items + 1,):
                raise ConfigError(f"a candidate mask must be [n_items + 1] = "
                                  f"[{self.n_items + 1}], got {tuple(candidates.shape)}")
            return candidates.cpu()
        if isinstance(candidates, Tensor):
            candidates = candidates.tolist()
        mask = torch.zeros(self.n_items + 1, dtype=torch.bool)
        mask[self.model.item_index(list(candidates), unknown)] = True
        return mask

    def _params(self, faiss: Any, n: int, allowed: Tensor) -> Any:
        """faiss search parameters: the kind's search width and, when some items are not
        searchable (removed, or outside the candidate filter), a bitmap selector."""
        kw: dict[str, Any] = {}
        if not bool(allowed[1:].all()):
            bitmap = np.packbits(allowed.numpy(), bitorder="little")
            kw["sel"] = faiss.IDSelectorBitmap(bitmap)  # keeps a reference to ``bitmap``
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.ef_search, n), **kw)
        if self.kind == "ivfpq":
            return faiss.SearchParametersIVF(nprobe=self.nprobe, **kw)
        return faiss.SearchParameters(**kw) if kw else None

    def _retrieve(self, users: Tensor, k: int, drops: list[list[int]], allowed: Tensor,
                  temperature: float, oversample: int) -> Recommendations:
        """Retrieve ``N`` per row, re-rank exactly, search again with ``4 N`` for rows left with
        fewer than ``k`` items; rows whose ``N`` covers every searchable item (or a filter
        keeps under `FILTER_EXACT` of the catalogue) are ranked exactly over all of them."""
        table = self._table()
        faiss = _faiss()
        searchable = allowed[1:].nonzero().flatten() + 1
        excluded = pad_right([[PAD, *d] for d in drops])
        rows = users.size(0)
        scores = torch.full((rows, k), float("-inf"))
        indices = torch.zeros(rows, k, dtype=torch.long)
        pending = torch.arange(rows)
        n = k * oversample + max((len(set(d)) for d in drops), default=0)
        if searchable.numel() <= FILTER_EXACT * self.n_items:
            n = max(n, searchable.numel())
        while pending.numel():
            user = users[pending].to(table.device)
            drop = excluded[pending].to(table.device)
            if n >= searchable.numel():
                cands = searchable[None]  # the same list for every row
            else:
                query = l2_query(user.cpu().numpy(), self.l2_max_norm)
                _, found = self.index.search(query, n, params=self._params(faiss, n, allowed))
                cands = torch.from_numpy(found).clamp_(min=PAD)  # -1: fewer than n found
            values, idx = self._rerank(user, table, cands.to(table.device), k, temperature,
                                       drop)
            got = values.size(1)
            full = (values[:, -1] > float("-inf")) if got == k else torch.zeros(
                pending.numel(), dtype=torch.bool)
            done = full | (n >= searchable.numel())
            where = pending[done.cpu()]
            scores[where, :got] = values[done].cpu()
            indices[where, :got] = idx[done].masked_fill(values[done] == float("-inf"), PAD).cpu()
            pending = pending[~done.cpu()]
            n *= 4
        names = self.model.item_ids
        items = [[names[i] if names is not None else i for i in row if i != PAD]
                 for row in indices.tolist()]
        return Recommendations(items, scores, indices)

    @staticmethod
    def _rerank(users: Tensor, table: Tensor, cands: Tensor, k: int, temperature: float,
                drop: Tensor) -> tuple[Tensor, Tensor]:
        """`topk_of_candidates` over blocks of `RERANK_ROWS` rows (``cands``: ``[B, C]``, or
        ``[1, C]`` for every row): it scores each block against
        the union of its rows' candidates, which for a whole batch of 1,024 users x 40
        candidates would be 1,024 x ~40k scores, not 1,024 x 40 (the floats do not depend on
        the blocking: `adarec.rec.scoring`'s fixed tiles)."""
        out = []
        for i in range(0, users.size(0), RERANK_ROWS):
            user = users[i : i + RERANK_ROWS]
            block = (cands[i : i + RERANK_ROWS] if cands.size(0) == users.size(0)
                     else cands.expand(user.size(0), -1).contiguous())  # one list for all
            out.append(topk_of_candidates(user, table, block, k, temperature,
                                          drop[i : i + RERANK_ROWS]))
        return torch.cat([v for v, _ in out]), torch.cat([i for _, i in out])

    # ------------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write the index to folder ``path`` (e.g. ``<model folder>/ann``, so a re-saved
        model replaces it): ``index.faiss`` (faiss's own format) and ``ann.json`` (kind,
        settings, the table fingerprint, removed items, the sha256 of the index bytes), swapped
        in atomically."""
        faiss = _faiss()
        blob = faiss.serialize_index(self.index).tobytes()
        record = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
            "factory": self.factory, "similarity": self.model.similarity,
            "n_items": self.n_items, "dim": self.dim, "fingerprint": self.fingerprint,
            "l2_max_norm": self.l2_max_norm,
            "oversample": self.oversample, "ef_search": self.ef_search, "nprobe": self.nprobe,
            "removed": self.removed, "index_bytes": len(blob),
            "index_sha256": hashlib.sha256(blob).hexdigest(), "faiss_version": faiss.__version__,
        }
        with atomic_folder(path, RECORD) as tmp:
            (tmp / INDEX_FILE).write_bytes(blob)
            (tmp / RECORD).write_text(json.dumps(record, indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, model: TransRec, rebuild: bool = False) -> ItemIndex:
        """Read an index written by `save` for ``model``. Refused (`StaleIndexError`) when the
        model's item table is not the one it was built from, unless ``rebuild``: then built
        again with the recorded settings (and removed items). A corrupted, truncated or edited
        folder is refused with `CheckpointError`."""
        try:
            files = read_folder(path, (RECORD,), lambda _: [(INDEX_FILE, False)])
        except MissingFile as e:
            raise CheckpointError(f"{e}: not an index folder written by ItemIndex.save") from None
        except FileNotFoundError:
            raise CheckpointError(f"no index folder at {path}") from None
        if RECORD not in files:
            raise CheckpointError(f"no {RECORD} in {path}: not an index folder")
        try:
            record = json.loads(files[RECORD])
            if record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format')!r}")
            if record["format_version"] > FORMAT_VERSION:
                raise ValueError(f"format_version {record['format_version']} is newer than "
                                 f"this adarec reads ({FORMAT_VERSION})")
            kind, n_items = str(record["kind"]), int(record["n_items"])
            oversample, ef_search = int(record["oversample"]), int(record["ef_search"])
            nprobe = int(record["nprobe"])
            removed = [int(i) for i in record["removed"]]
            norm = record.get("l2_max_norm")  # absent in format 1: inner product
            l2_max_norm = None if norm is None else float(norm)
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path}/{RECORD} is not a valid index record: {e}") from None
        blob = files[INDEX_FILE]
        if len(blob) != record.get("index_bytes") or (
                hashlib.sha256(blob).hexdigest() != record.get("index_sha256")):
            raise CheckpointError(f"{path}/{INDEX_FILE} is corrupted or truncated ({len(blob)} "
                                  f"bytes, {record.get('index_bytes')} written; its sha256 "
                                  "differs from the record): rebuild and save the index again")
        vectors = model.item_vectors()
        current = table_fingerprint(vectors, model.similarity)
        if current != record["fingerprint"] or record["similarity"] != model.similarity:
            if not rebuild:
                n = vectors.size(0) - 1
                raise StaleIndexError(
                    f"{path} was built from another item table than the model's (the index "
                    f"has {n_items} items, the model {n}; similarity {record['similarity']!r} "
                    f"vs {model.similarity!r}; the digests differ): the model was retrained, "
                    "has another adapter set active or other items; pass rebuild=True to "
                    "build the index again")
            out = cls.build(model, kind, oversample=oversample, ef_search=ef_search,
                            nprobe=nprobe, l2_reduction=l2_max_norm is not None)
            out._remove(removed)
            return out
        faiss = _faiss()
        try:
            index = faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8))
        except RuntimeError as e:
            raise CheckpointError(f"faiss cannot read {path}/{INDEX_FILE}: {e}") from None
        if int(index.d) != int(record.get("dim", index.d)) + (l2_max_norm is not None):
            raise CheckpointError(f"{path}/{INDEX_FILE} has {index.d} dimensions, the record "
                                  f"{record.get('dim')} (reduction: {l2_max_norm is not None})")
        out = cls(model, index, kind, str(record["factory"]), current, n_items, oversample,
                  ef_search, nprobe, removed, l2_max_norm)
        out._source, out._vectors = model.item_table(), vectors
        return out


__all__ = [
    "KINDS",
    "ItemIndex",
    "StaleIndexError",
    "auto_kind",
    "default_factory",
    "l2_query",
    "mips_to_l2",
    "table_fingerprint",
]
