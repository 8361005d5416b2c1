"""Item encoders: ``encoder(item_ids [N]) -> [N, dim]``, each owning the item features it needs.

Features (token ids, pixels, fixed tables) are non-persistent buffers: ``.to(device)`` moves
them, but ``state_dict()`` holds only weights, so a checkpoint does not carry the data set and
the weights of a text/image encoder transfer to another item catalogue unchanged.

Encoders whose parameters are tied to one catalogue (ID embeddings, a trainable table) set
``transferable = False``; `TransRec.transferable_state_dict` leaves them out.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn

from adarec.errors import ConfigError, DataError
from adarec.layouts import iter_blocks
from adarec.state_key import StateKey, autocast_state

POOLINGS = ("cls", "mean")


class ItemEncoder(Protocol):
    """What `TransRec` asks of an item encoder module, for the type checker."""

    dim: int

    @property
    def n_items(self) -> int: ...

    def hf_models(self) -> list[nn.Module]: ...

    def __call__(self, item_ids: Tensor) -> Tensor: ...


def _config(model: nn.Module) -> Any:
    """A Hugging Face model's ``config`` (``nn.Module`` attributes type as ``Tensor | Module``)."""
    return cast(Any, model).config


def _check_pooling(pooling: str) -> str:
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling={pooling!r} is not one of {list(POOLINGS)}")
    return pooling


def _last_hidden(output: Any) -> Tensor:
    hidden = getattr(output, "last_hidden_state", None)
    return hidden if hidden is not None else output[0]


class TextItemEncoder(nn.Module):
    """A Hugging Face text encoder over a pre-tokenised item table ``[n_items + 1, T]``.

    Row 0 is the padding item. Each call gathers the requested rows and, for speed, sorts them by
    length and encodes them in chunks of ``chunk_size`` items, each trimmed to its longest real
    text: cost follows the real token count, not ``n * T``. Attention masks make the result
    independent of the trimming (up to float rounding).

    ``cache_frozen_layers``: when every parameter below block ``k`` is frozen (adapters only in
    the top blocks), the hidden states entering block ``k`` are computed once for all items (in
    eval mode, so without dropout there) and each call runs only blocks ``k..``. A self-check
    against a plain forward switches the cache off (with a warning) for a model it does not fit.
    The cache is keyed on the state of everything but blocks ``k..`` (`adarec.state_key`: the
    weights and their versions, which adapter sets are present, active or merged, hooks, the
    item features), on ``k`` and on the autocast state: switching, disabling, injecting or
    ejecting adapters below ``k``, an in-place change of a frozen weight, or a change of which
    blocks train rebuilds it on the next call, so it never serves hidden states of a model that
    no longer exists (``invalidate_cache()`` after writes through ``.data``).
    Memory: ``(n_items + 1) * T * hidden`` values; ``cache_dtype=torch.bfloat16`` halves it (the
    states are stored rounded to bf16 and cast back on use: no longer exact, ~3 significant
    digits, which bf16 autocast training rounds to anyway).
    """

    transferable = True
    input_ids: Tensor
    attention_mask: Tensor
    lengths: Tensor

    def __init__(
        self,
        hf_model: nn.Module,
        input_ids: Tensor,
        attention_mask: Tensor,
        pooling: str = "cls",
        chunk_size: int | None = 256,
        cache_frozen_layers: bool = False,
        cache_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise DataError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be [n_items + 1, T]"
            )
        self.model = hf_model
        self.pooling = _check_pooling(pooling)
        self.chunk_size = chunk_size
        self.dim = int(_config(hf_model).hidden_size)
        self.register_buffer("input_ids", input_ids.long(), persistent=False)
        self.register_buffer("attention_mask", attention_mask.long(), persistent=False)
        self.register_buffer("lengths", attention_mask.long().sum(1), persistent=False)
        self.cache_frozen_layers = cache_frozen_layers
        self.cache_dtype = cache_dtype
        self._prefix: Tensor | None = None
        self._prefix_dtype = torch.float32
        self._prefix_key: StateKey | None = None
        self.tokenizer: Any = None
        """The tokenizer the table was built with, when known (`from_texts` keeps it): used by
        `add_texts` and saved by `TransRec.save_pretrained`."""

    @classmethod
    def from_texts(
        cls,
        hf_model: nn.Module,
        tokenizer: Any,
        texts: Sequence[str],
        max_length: int = 30,
        pooling: str = "cls",
        chunk_size: int | None = 256,
        cache_frozen_layers: bool = False,
        cache_dtype: torch.dtype | None = None,
    ) -> TextItemEncoder:
        """Tokenise the item table once, up front: ``texts[i]`` is item ``i``'s text and
        ``texts[0]`` the padding item's ``""``, as in ``InteractionData.item_texts``.

        A list whose first entry is not ``""`` is refused: it is almost always items ``1..n``
        without the padding row, and would shift every item's text onto its neighbour. For
        such a list use `from_item_texts`.
        """
        texts = list(texts)
        if not texts or texts[0] != "":
            first = repr(texts[0])[:60] if texts else "nothing"
            raise DataError(
                f"texts[0] must be the padding item's '' (got {first}): from_texts takes the "
                "table with its padding row (data.item_texts); for items 1..n use "
                "TextItemEncoder.from_item_texts"
            )
        enc = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        encoder = cls(hf_model, enc["input_ids"], enc["attention_mask"], pooling, chunk_size,
                      cache_frozen_layers, cache_dtype)
        encoder.tokenizer = tokenizer
        return encoder

    @classmethod
    def from_item_texts(cls, hf_model: nn.Module, tokenizer: Any, texts: Sequence[str],
                        **kwargs: Any) -> TextItemEncoder:
        """`from_texts` for the texts of items ``1..n`` (``texts[0]`` is item 1): the padding
        row is added here."""
        return cls.from_texts(hf_model, tokenizer, ["", *texts], **kwargs)

    def add_texts(self, texts: Sequence[str], tokenizer: Any = None) -> None:
        """Append items ``n_items + 1 ..`` from their texts, tokenised like the table (same
        width); the frozen-prefix cache is rebuilt on the next call."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ConfigError("no tokenizer: pass the one the item table was built with")
        if not texts:
            return
        enc = tokenizer(list(texts), padding="max_length", truncation=True,
                        max_length=self.input_ids.size(1), return_tensors="pt")
        ids = enc["input_ids"].to(self.input_ids)
        mask = enc["attention_mask"].to(self.attention_mask)
        self.input_ids = torch.cat([self.input_ids, ids])
        self.attention_mask = torch.cat([self.attention_mask, mask])
        self.lengths = self.attention_mask.sum(1)
        self._prefix, self._prefix_key = None, None

    @property
    def n_items(self) -> int:
        return self.input_ids.size(0) - 1

    def hf_models(self) -> list[nn.Module]:
        return [self.model]

    def _encode(self, ids: Tensor, start: tuple[nn.ModuleList, int] | None = None) -> Tensor:
        width = int(self.lengths[ids].max())
        tokens, mask = self.input_ids[ids, :width], self.attention_mask[ids, :width]
        if start is None:
            hidden = _last_hidden(self.model(input_ids=tokens, attention_mask=mask))
        else:
            assert self._prefix is not None
            with _start_at(*start, self._prefix[ids, :width].to(self._prefix_dtype)):
                hidden = _last_hidden(self.model(input_ids=tokens, attention_mask=mask))
        if self.pooling == "cls":
            return hidden[:, 0]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, item_ids: Tensor) -> Tensor:
        ids = item_ids.reshape(-1).to(self.input_ids.device)
        if ids.numel() == 0:
            return self.input_ids.new_zeros(0, self.dim, dtype=torch.float)
        start = self._cached_start() if self.cache_frozen_layers else None
        chunk = self.chunk_size or ids.numel()
        if chunk >= ids.numel():
            return self._encode(ids, start)
        order = self.lengths[ids].argsort(stable=True)
        out = torch.cat([self._encode(ids[o], start) for o in order.split(chunk)])
        return out[order.argsort()]

    # ------------------------------------------------------------- frozen-prefix cache
    def _split(self) -> tuple[nn.ModuleList, int, list[Tensor]] | None:
        """The block stack, the lowest block ``k`` holding a trainable parameter and the
        (frozen) parameters that compute its input; None when there is nothing to cache."""
        stacks = {b.stack for b in iter_blocks(self.model)}
        if len(stacks) != 1:
            return None
        name = stacks.pop()
        seen: list[tuple[int, Tensor]] = []
        for pname, p in self.model.named_parameters():
            inside = pname.startswith(name + ".")
            block = int(pname[len(name) + 1 :].split(".", 1)[0]) if inside else -1
            if p.requires_grad:
                # an adapter that reads a block's output (K-Adapter) needs that block to run
                reads = [b for m in self.model.modules() for b in getattr(m, "reads_blocks", ())]
                block = min([block, *reads])
                if block <= 0:  # trainable embeddings or block 0: nothing frozen below
                    return None
                stack = self.model.get_submodule(name)
                assert isinstance(stack, nn.ModuleList)
                return stack, block, [q for b, q in seen if b < block]
            seen.append((block, p))
        return None  # fully frozen: a PrecomputedItemEncoder is the better tool

    def invalidate_cache(self) -> None:
        """Drop the frozen-prefix cache (needed only after writes through ``.data``)."""
        self._prefix, self._prefix_key = None, None

    def _cached_start(self) -> tuple[nn.ModuleList, int] | None:
        split = self._split()
        if split is None:
            return None
        stack, k, _ = split
        key = StateKey.of(self, skip=list(stack)[k:], modes=False,
                          extra=(k, autocast_state(self.input_ids.device.type)))
        if self._prefix_key != key:
            self._build_prefix(stack, k)
            self._prefix_key = key
            if not self._check_prefix(stack, k):
                self.cache_frozen_layers = False
                self._prefix, self._prefix_key = None, None
                warnings.warn(
                    f"{type(self.model).__name__}: the frozen-layer cache does not reproduce "
                    "the plain forward pass; encoding without it", stacklevel=3,
                )
                return None
            if self.cache_dtype is not None:  # checked at full precision, stored smaller
                assert self._prefix is not None
                self._prefix = self._prefix.to(self.cache_dtype)
        return stack, k

    @torch.no_grad()
    def _build_prefix(self, stack: nn.ModuleList, k: int) -> None:
        """Hidden states entering block ``k`` for every item, in eval mode."""
        n, width = self.input_ids.shape
        store: list[Tensor] = []

        def grab(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            store.append(args[0] if args else kwargs["hidden_states"])
            raise _Stop

        handle = stack[k].register_forward_pre_hook(grab, with_kwargs=True)
        was = self.model.training
        self.model.eval()
        try:
            prefix: Tensor | None = None
            for ids in torch.arange(n, device=self.input_ids.device).split(self.chunk_size or n):
                w = int(self.lengths[ids].max())
                with contextlib.suppress(_Stop):
                    self.model(input_ids=self.input_ids[ids, :w],
                               attention_mask=self.attention_mask[ids, :w])
                h = store.pop()
                if prefix is None:
                    prefix = h.new_zeros(n, width, h.size(-1))
                prefix[ids, :w] = h
            self._prefix = prefix
            self._prefix_dtype = prefix.dtype if prefix is not None else torch.float32
        finally:
            handle.remove()
            self.model.train(was)

    @torch.no_grad()
    def _check_prefix(self, stack: nn.ModuleList, k: int) -> bool:
        was = self.model.training
        self.model.eval()
        try:
            ids = self.lengths.argsort(descending=True)[:4]
            return torch.allclose(self._encode(ids), self._encode(ids, (stack, k)), atol=1e-4,
                                  rtol=1e-3)
        except Exception:
            return False
        finally:
            self.model.train(was)


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass early."""


class _Skip(nn.Module):
    """Stands in for a cached block: hands its hidden states through unchanged."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return args[0] if args else kwargs["hidden_states"]


@contextlib.contextmanager
def _start_at(stack: nn.ModuleList, k: int, hidden: Tensor) -> Iterator[None]:
    """Run the model from block ``k`` on ``hidden``: blocks below are skipped, and block ``k``
    receives ``hidden`` instead of what reaches it (the model still builds its own mask)."""

    def feed(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    saved = [stack[i] for i in range(k)]
    handle = stack[k].register_forward_pre_hook(feed, with_kwargs=True)
    try:
        for i in range(k):
            stack[i] = _Skip()
        yield
    finally:
        handle.remove()
        for i, block in enumerate(saved):
            stack[i] = block


class ImageItemEncoder(nn.Module):
    """A Hugging Face vision encoder (ViT, ViTMAE, DeiT, ...) over a pixel table
    ``[n_items + 1, 3, H, W]`` (row 0 = padding item).

    ViTMAE masks and shuffles patches at random in its forward pass; here ``mask_ratio`` is set
    to 0 on the model's config and a fixed ``noise`` (the identity order) is passed, so every
    patch is kept in place and the item embedding is deterministic.
    """

    transferable = True
    pixel_values: Tensor

    def __init__(
        self,
        hf_vision_model: nn.Module,
        pixel_values: Tensor,
        pooling: str = "cls",
        chunk_size: int | None = 256,
    ) -> None:
        super().__init__()
        if pixel_values.dim() != 4:
            raise DataError(f"pixel_values must be [n_items + 1, C, H, W], got "
                             f"{tuple(pixel_values.shape)}")
        self.model = hf_vision_model
        self.pooling = _check_pooling(pooling)
        self.chunk_size = chunk_size
        config = _config(hf_vision_model)
        self.dim = int(config.hidden_size)
        self.is_mae = getattr(config, "model_type", "") == "vit_mae"
        if self.is_mae:
            config.mask_ratio = 0.0
        self.register_buffer("pixel_values", pixel_values, persistent=False)

    @property
    def n_items(self) -> int:
        return self.pixel_values.size(0) - 1

    def hf_models(self) -> list[nn.Module]:
        return [self.model]

    def _encode(self, ids: Tensor) -> Tensor:
        pixels = self.pixel_values[ids]
        kwargs: dict[str, Tensor] = {}
        if self.is_mae:
            patch = _config(self.model).patch_size
            ph, pw = (patch, patch) if isinstance(patch, int) else patch
            n = (pixels.size(-2) // ph) * (pixels.size(-1) // pw)
            kwargs["noise"] = torch.arange(n, device=pixels.device, dtype=torch.float).expand(
                pixels.size(0), n
            )
        hidden = _last_hidden(self.model(pixel_values=pixels, **kwargs))
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(1)

    def forward(self, item_ids: Tensor) -> Tensor:
        ids = item_ids.reshape(-1).to(self.pixel_values.device)
        if ids.numel() == 0:
            return self.pixel_values.new_zeros(0, self.dim)
        return torch.cat([self._encode(c) for c in ids.split(self.chunk_size or ids.numel())])


class IDItemEncoder(nn.Module):
    """Plain ID embeddings (the SASRec baseline); row 0 is the padding item and stays zero."""

    transferable = False

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.embedding = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():
            self.embedding.weight[0].zero_()

    @property
    def n_items(self) -> int:
        return self.embedding.num_embeddings - 1

    def hf_models(self) -> list[nn.Module]:
        return []

    def forward(self, item_ids: Tensor) -> Tensor:
        return self.embedding(item_ids.reshape(-1))


class PrecomputedItemEncoder(nn.Module):
    """A fixed (or, with ``trainable``, fine-tuned) table ``[n_items + 1, d]``, e.g. frozen text
    embeddings computed once: the cheapest "frozen encoder" baseline."""

    transferable = False
    table: Tensor  # a Parameter when trainable, else a buffer

    def __init__(self, table: Tensor, trainable: bool = False) -> None:
        super().__init__()
        if table.dim() != 2:
            raise DataError(f"table must be [n_items + 1, d], got {tuple(table.shape)}")
        self.dim = int(table.size(1))
        self.trainable = trainable
        if trainable:
            self.table = nn.Parameter(table.detach().clone())
        else:
            self.register_buffer("table", table.detach().clone(), persistent=False)

    @classmethod
    @torch.no_grad()
    def from_encoder(
        cls, encoder: nn.Module, batch_size: int = 512, trainable: bool = False
    ) -> PrecomputedItemEncoder:
        """Encode every item of ``encoder`` once (eval mode, no grad)."""
        was_training = encoder.training
        encoder.eval()
        ids = torch.arange(cast(ItemEncoder, encoder).n_items + 1)
        table = torch.cat([encoder(c) for c in ids.split(batch_size)]).float().cpu()
        encoder.train(was_training)
        return cls(table, trainable)

    @property
    def n_items(self) -> int:
        return self.table.size(0) - 1

    def hf_models(self) -> list[nn.Module]:
        return []

    def forward(self, item_ids: Tensor) -> Tensor:
        return self.table[item_ids.reshape(-1).to(self.table.device)]


FUSIONS = ("concat", "sum", "mean")


class MultimodalItemEncoder(nn.Module):
    """Fuse a text and an image encoder over the same item indices (``concat``, ``sum``,
    ``mean``; the last two need equal widths). Each part decides its own transferability."""

    def __init__(self, text: nn.Module, image: nn.Module, fusion: str = "concat") -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion={fusion!r} is not one of {list(FUSIONS)}")
        t, v = cast(ItemEncoder, text), cast(ItemEncoder, image)
        if t.n_items != v.n_items:
            raise DataError(f"text has {t.n_items} items, image has {v.n_items}")
        if fusion != "concat" and t.dim != v.dim:
            raise ConfigError(f"fusion={fusion!r} needs equal widths, got {t.dim} and "
                             f"{v.dim}; use 'concat'")
        self.text, self.image, self.fusion = text, image, fusion
        self.dim = t.dim + v.dim if fusion == "concat" else t.dim

    @property
    def n_items(self) -> int:
        return int(cast(ItemEncoder, self.text).n_items)

    def hf_models(self) -> list[nn.Module]:
        t, v = cast(ItemEncoder, self.text), cast(ItemEncoder, self.image)
        return [*t.hf_models(), *v.hf_models()]

    def forward(self, item_ids: Tensor) -> Tensor:
        t, v = self.text(item_ids), self.image(item_ids)
        if self.fusion == "concat":
            return torch.cat([t, v], dim=-1)
        return t + v if self.fusion == "sum" else (t + v) / 2


__all__ = [
    "IDItemEncoder",
    "ImageItemEncoder",
    "ItemEncoder",
    "MultimodalItemEncoder",
    "PrecomputedItemEncoder",
    "TextItemEncoder",
]
