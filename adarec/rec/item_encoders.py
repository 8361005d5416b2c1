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

from adarec.adapters.side import SideBlock
from adarec.errors import AdapterStateError, ConfigError, DataError
from adarec.layouts import iter_blocks
from adarec.rec.data import refuse_identical_items, right_align
from adarec.rec.side_encoding import SideEncoding
from adarec.rec.state_cache import HiddenStateCache
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


class TextItemEncoder(SideEncoding, nn.Module):
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

    With a side network active in the model (method ``"side"``) the encoder returns
    ``pool(h_final) + correction`` instead, with the backbone in eval mode and without autograd;
    ``cache_states`` (default on) computes the states the side network reads once for all items
    (`adarec.rec.side_encoding`), stored in ``cache_dtype`` and, with ``cache_dir``, in a
    memory-mapped file there.
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
        cache_states: bool = True,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise DataError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask "
                f"{tuple(attention_mask.shape)} must both be [n_items + 1, T]"
            )
        input_ids, attention_mask = right_align(input_ids, attention_mask)
        refuse_identical_items(input_ids * attention_mask, "tokens")
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
        self.cache_states, self.cache_dir = cache_states, cache_dir
        self._state_cache: HiddenStateCache | None = None
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
        cache_states: bool = True,
        cache_dir: str | None = None,
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
                      cache_frozen_layers, cache_dtype, cache_states, cache_dir)
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
        ids, mask = right_align(enc["input_ids"].to(self.input_ids),
                                enc["attention_mask"].to(self.attention_mask))
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
        return self._pool(hidden, mask)

    # what SideEncoding needs
    def _pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(1)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def _backbone(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        width = self._width(ids)
        mask = self.attention_mask[ids, :width]
        out = self.model(input_ids=self.input_ids[ids, :width], attention_mask=mask)
        return _last_hidden(out), mask

    def _features(self) -> list[Tensor]:
        return [self.input_ids, self.attention_mask]

    def _mask(self, ids: Tensor, width: int) -> Tensor | None:
        return self.attention_mask[ids, :width]

    def _order(self, ids: Tensor) -> Tensor:
        return self.lengths[ids].argsort(stable=True)

    def _width(self, ids: Tensor) -> int:
        return int(self.lengths[ids].max())

    def forward(self, item_ids: Tensor) -> Tensor:
        ids = item_ids.reshape(-1).to(self.input_ids.device)
        if ids.numel() == 0:
            return self.input_ids.new_zeros(0, self.dim, dtype=torch.float)
        sides = self.side_networks()
        if sides:
            return cast(Tensor, self.side_encode(ids, sides))
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
        """Drop every cache it owns, the frozen-prefix cache and the side network's hidden-state
        cache (needed only after writes through ``.data``, which no version counter sees)."""
        self._prefix, self._prefix_key = None, None
        self.invalidate_state_cache()

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
        device = self.input_ids.device.type
        try:
            prefix: Tensor | None = None
            for ids in torch.arange(n, device=self.input_ids.device).split(self.chunk_size or n):
                w = int(self.lengths[ids].max())
                # full precision whatever the caller's autocast: the states are exact (and the
                # check below can compare at float32 tolerance); cache_dtype rounds them if asked
                with contextlib.suppress(_Stop), torch.autocast(device, enabled=False):
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
            # in float32: under bf16 autocast two correct paths differ by bf16 rounding (1e-2),
            # which would hide nothing and fail the check (the cache then silently went unused)
            with torch.autocast(self.input_ids.device.type, enabled=False):
                plain, cached = self._encode(ids), self._encode(ids, (stack, k))
            return torch.allclose(plain, cached, atol=1e-4, rtol=1e-3)
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


class ImageItemEncoder(SideEncoding, nn.Module):
    """A Hugging Face vision encoder (ViT, ViTMAE, DeiT, ...) over a pixel table
    ``[n_items + 1, 3, H, W]`` (row 0 = padding item).

    ViTMAE masks and shuffles patches at random in its forward pass; here ``mask_ratio`` is set
    to 0 on the model's config and a fixed ``noise`` (the identity order) is passed, so every
    patch is kept in place and the item embedding is deterministic.

    Side networks and their hidden-state cache (``cache_states``, ``cache_dtype``,
    ``cache_dir``) work as in `TextItemEncoder`.
    """

    transferable = True
    pixel_values: Tensor

    def __init__(
        self,
        hf_vision_model: nn.Module,
        pixel_values: Tensor,
        pooling: str = "cls",
        chunk_size: int | None = 256,
        cache_states: bool = True,
        cache_dtype: torch.dtype | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        if pixel_values.dim() != 4:
            raise DataError(f"pixel_values must be [n_items + 1, C, H, W], got "
                             f"{tuple(pixel_values.shape)}")
        refuse_identical_items(pixel_values, "pixels")
        self.model = hf_vision_model
        self.pooling = _check_pooling(pooling)
        self.chunk_size = chunk_size
        config = _config(hf_vision_model)
        self.dim = int(config.hidden_size)
        self.is_mae = getattr(config, "model_type", "") == "vit_mae"
        if self.is_mae:
            config.mask_ratio = 0.0
        self.register_buffer("pixel_values", pixel_values, persistent=False)
        self.cache_states, self.cache_dtype, self.cache_dir = cache_states, cache_dtype, cache_dir
        self._state_cache: HiddenStateCache | None = None
        self._n_tokens: int | None = None

    @property
    def n_items(self) -> int:
        return self.pixel_values.size(0) - 1

    def hf_models(self) -> list[nn.Module]:
        return [self.model]

    def _encode(self, ids: Tensor) -> Tensor:
        return self._pool(self._backbone(ids)[0], None)

    # what SideEncoding needs
    def _pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        return hidden[:, 0] if self.pooling == "cls" else hidden[:, 1:].mean(1)

    def _features(self) -> list[Tensor]:
        return [self.pixel_values]

    def _mask(self, ids: Tensor, width: int) -> Tensor | None:
        return None

    def _order(self, ids: Tensor) -> Tensor:
        return torch.arange(ids.numel(), device=ids.device)

    def _width(self, ids: Tensor) -> int:
        if self._n_tokens is None:
            with torch.no_grad():
                self._n_tokens = int(self._backbone(ids[:1])[0].size(1))
        return self._n_tokens

    def _backbone(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        pixels = self.pixel_values[ids]
        kwargs: dict[str, Tensor] = {}
        if self.is_mae:
            patch = _config(self.model).patch_size
            ph, pw = (patch, patch) if isinstance(patch, int) else patch
            n = (pixels.size(-2) // ph) * (pixels.size(-1) // pw)
            kwargs["noise"] = torch.arange(n, device=pixels.device, dtype=torch.float).expand(
                pixels.size(0), n
            )
        return _last_hidden(self.model(pixel_values=pixels, **kwargs)), None

    def forward(self, item_ids: Tensor) -> Tensor:
        ids = item_ids.reshape(-1).to(self.pixel_values.device)
        if ids.numel() == 0:
            return self.pixel_values.new_zeros(0, self.dim)
        sides = self.side_networks()
        if sides:
            return cast(Tensor, self.side_encode(ids, sides))
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


FUSIONS = ("concat", "sum", "mean", "side")


class MultimodalItemEncoder(nn.Module):
    """Fuse a text and an image encoder over the same item indices (``concat``, ``sum``,
    ``mean``; the last two need equal widths). Each part decides its own transferability.

    ``fusion="side"`` (IISAN's intra- + inter-modal side networks, Fu et al. SIGIR 2024): each
    encoder has its own side network (inject method ``"side"`` into both, e.g. through
    `TransRec.inject_adapters`), and a small `InterModalSide` stream of width ``side_width``
    reads both modalities' pooled tapped states, ``side_levels`` of them from the top of each;
    the output is ``[text representation; image representation; inter-modal stream]``.
    ``side_levels=None``: half the blocks (rounded up) of the shallower encoder, as many as a
    default side network taps.
    """

    def __init__(self, text: nn.Module, image: nn.Module, fusion: str = "concat",
                 side_width: int = 64, side_levels: int | None = None) -> None:
        super().__init__()
        if fusion not in FUSIONS:
            raise ConfigError(f"fusion={fusion!r} is not one of {list(FUSIONS)}")
        t, v = cast(ItemEncoder, text), cast(ItemEncoder, image)
        if t.n_items != v.n_items:
            raise DataError(f"text has {t.n_items} items, image has {v.n_items}")
        if fusion in ("sum", "mean") and t.dim != v.dim:
            raise ConfigError(f"fusion={fusion!r} needs equal widths, got {t.dim} and "
                             f"{v.dim}; use 'concat'")
        self.text, self.image, self.fusion = text, image, fusion
        self.dim = t.dim + v.dim if fusion == "concat" else t.dim
        if fusion == "side":
            if not (isinstance(text, SideEncoding) and isinstance(image, SideEncoding)):
                raise ConfigError("fusion='side' needs a text and an image encoder over Hugging "
                                 "Face models (TextItemEncoder, ImageItemEncoder)")
            if side_levels is None:
                depth = [len(list(iter_blocks(e.model))) for e in (text, image)]
                side_levels = (min(depth) + 1) // 2
            self.inter = InterModalSide(t.dim, v.dim, side_levels, side_width)
            self.dim = t.dim + v.dim + side_width

    @property
    def n_items(self) -> int:
        return int(cast(ItemEncoder, self.text).n_items)

    def hf_models(self) -> list[nn.Module]:
        t, v = cast(ItemEncoder, self.text), cast(ItemEncoder, self.image)
        return [*t.hf_models(), *v.hf_models()]

    def forward(self, item_ids: Tensor) -> Tensor:
        if self.fusion == "side":
            return self._side(item_ids)
        t, v = self.text(item_ids), self.image(item_ids)
        if self.fusion == "concat":
            return torch.cat([t, v], dim=-1)
        return t + v if self.fusion == "sum" else (t + v) / 2

    def _side(self, item_ids: Tensor) -> Tensor:
        parts = []
        for name in ("text", "image"):
            encoder = cast(SideEncoding, getattr(self, name))
            ids = item_ids.reshape(-1).to(encoder._features()[0].device)
            if not encoder.side_networks():
                raise AdapterStateError(
                    f"fusion='side' needs an active side network in the {name} encoder; inject "
                    "method 'side' into both (TransRec.inject_adapters(item='side'))")
            parts.append(encoder.side_encode(ids, with_states=True))
        (t, t_states), (v, v_states) = parts
        m = self.inter(t_states, v_states)
        return torch.cat([t, v, m.to(t.dtype)], dim=-1)


class InterModalSide(nn.Module):
    """IISAN's inter-modal side stream at a narrow width ``r``: for the top ``levels`` tapped
    states of each modality (paired from the top), ``m_i = block_i(m_{i-1} + g_i * dv_i(v_i) +
    (1 - g_i) * dt_i(t_i))`` with learnable gates ``g_i = sigmoid(a_i / 0.1)`` (0.5 at init),
    per-modality down-projections and `SideBlock` MLPs; returns ``norm(m_levels)`` ``[B, r]``.

    Not an adapter inside a model but a trainable part of `MultimodalItemEncoder`; it declares
    ``decoupled = True`` so `TransRec`'s adapter policies train it with the side networks.
    """

    decoupled = True

    def __init__(self, text_hidden: int, image_hidden: int, levels: int, width: int,
                 expansion: int = 2, activation: str = "gelu", dropout: float = 0.0,
                 gate_temperature: float = 0.1) -> None:
        super().__init__()
        if levels < 1:
            raise ConfigError(f"InterModalSide needs levels >= 1, got {levels}")
        self.levels, self.gate_temperature = levels, gate_temperature
        self.text_downs = nn.ModuleList(nn.Linear(text_hidden, width) for _ in range(levels))
        self.image_downs = nn.ModuleList(nn.Linear(image_hidden, width) for _ in range(levels))
        self.gates = nn.Parameter(torch.zeros(levels))
        self.blocks = nn.ModuleList(SideBlock(width, expansion, activation, dropout)
                                    for _ in range(levels))
        self.norm = nn.LayerNorm(width)

    def forward(self, text_states: Tensor, image_states: Tensor) -> Tensor:
        """``text_states [B, S_t, H_t]``, ``image_states [B, S_v, H_v]``: tapped states, bottom
        to top; each needs at least ``levels``."""
        for name, states in (("text", text_states), ("image", image_states)):
            if states.size(1) < self.levels:
                raise AdapterStateError(
                    f"the inter-modal side stream reads {self.levels} levels, but the {name} "
                    f"side network taps {states.size(1)} block(s); tap more blocks or build "
                    f"MultimodalItemEncoder(side_levels={states.size(1)})")
        dtype = self.norm.weight.dtype
        t, v = text_states[:, -self.levels:].to(dtype), image_states[:, -self.levels:].to(dtype)
        gates = torch.sigmoid(self.gates / self.gate_temperature)
        m: Tensor | None = None
        for i in range(self.levels):
            x = gates[i] * self.image_downs[i](v[:, i]) + (1 - gates[i]) * self.text_downs[i](
                t[:, i])
            m = self.blocks[i](x if m is None else m + x)
        assert m is not None
        return self.norm(m)


__all__ = [
    "IDItemEncoder",
    "ImageItemEncoder",
    "InterModalSide",
    "ItemEncoder",
    "MultimodalItemEncoder",
    "PrecomputedItemEncoder",
    "TextItemEncoder",
]
