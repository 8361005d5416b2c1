"""`TextItemEncoder`: a Hugging Face text encoder over a pre-tokenised item table, with a
frozen-prefix cache (blocks below the lowest trainable one run once for all items) and side
networks over cached hidden states (`adarec.rec.side_encoding`)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, cast

import torch
import transformers
from torch import Tensor, nn

from adarec.adapters.side import POOLINGS, pool_hidden
from adarec.errors import ConfigError, DataError
from adarec.layouts import iter_blocks
from adarec.rec.data import refuse_identical_items, right_align
from adarec.rec.item_encoder import (
    ItemEncoderBase,
    check_pooling,
    dtype_name,
    hf_config,
    last_hidden,
)
from adarec.rec.kinds import PartSource, register_kind
from adarec.rec.side_encoding import SideEncoding
from adarec.rec.state_cache import HiddenStateCache
from adarec.rec.tokens import check_template, tokenize_texts
from adarec.stacks import detect_causal
from adarec.state_key import StateKey, autocast_state


@register_kind("text")
class TextItemEncoder(SideEncoding, ItemEncoderBase):
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

    ``pooling``: ``"cls"`` (the default for encoders), ``"mean"`` (over real tokens) or
    ``"last"`` (the last real token, found from the attention mask; the default for a causal
    model, a decoder LLM, whose first token has read nothing: ``"cls"`` is refused there).
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
        pooling: str | None = None,
        chunk_size: int | None = 256,
        cache_frozen_layers: bool = False,
        cache_dtype: torch.dtype | None = None,
        cache_states: bool = True,
        cache_dir: str | None = None,
        template: str | None = None,
        append_eos: bool = False,
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
        self.pooling = resolve_pooling(hf_model, pooling)
        self.template, self.append_eos = check_template(template), bool(append_eos)
        self.chunk_size = chunk_size
        self.dim = int(hf_config(hf_model).hidden_size)
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
        `add_texts` and saved by `TransRec.save_pretrained`. It is used as given, never changed:
        a tokenizer without a pad token (GPT-2, Llama) gets its rows padded here, with its EOS
        (else UNK) id under a zero mask."""

    @classmethod
    def from_texts(
        cls,
        hf_model: nn.Module,
        tokenizer: Any,
        texts: Sequence[str],
        max_length: int = 30,
        pooling: str | None = None,
        chunk_size: int | None = 256,
        cache_frozen_layers: bool = False,
        cache_dtype: torch.dtype | None = None,
        cache_states: bool = True,
        cache_dir: str | None = None,
        template: str | None = None,
        append_eos: bool = False,
    ) -> TextItemEncoder:
        """Tokenise the item table once, up front: ``texts[i]`` is item ``i``'s text and
        ``texts[0]`` the padding item's ``""``, as in ``InteractionData.item_texts``.

        A list whose first entry is not ``""`` is refused: it is almost always items ``1..n``
        without the padding row, and would shift every item's text onto its neighbour. For
        such a list use `from_item_texts`.

        ``template`` (e.g. ``'This item: "{text}" means in one word:'``) wraps every text
        before tokenisation, and ``append_eos`` ends every row with the EOS token (kept under
        truncation): prompts that make a decoder's last token summarise the item. Both are
        recorded in the folder config, so `add_texts` after loading tokenises new items alike.
        """
        texts = list(texts)
        if not texts or texts[0] != "":
            first = repr(texts[0])[:60] if texts else "nothing"
            raise DataError(
                f"texts[0] must be the padding item's '' (got {first}): from_texts takes the "
                "table with its padding row (data.item_texts); for items 1..n use "
                "TextItemEncoder.from_item_texts"
            )
        ids, mask = tokenize_texts(tokenizer, texts, max_length, template, append_eos)
        encoder = cls(hf_model, ids, mask, pooling, chunk_size, cache_frozen_layers,
                      cache_dtype, cache_states, cache_dir, template, append_eos)
        encoder.tokenizer = tokenizer
        return encoder

    @classmethod
    def from_item_texts(cls, hf_model: nn.Module, tokenizer: Any, texts: Sequence[str],
                        **kwargs: Any) -> TextItemEncoder:
        """`from_texts` for the texts of items ``1..n`` (``texts[0]`` is item 1): the padding
        row is added here."""
        return cls.from_texts(hf_model, tokenizer, ["", *texts], **kwargs)

    def to_config(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "chunk_size": self.chunk_size,
                "cache_frozen_layers": self.cache_frozen_layers,
                "cache_dtype": dtype_name(self.cache_dtype), "cache_states": self.cache_states,
                "template": self.template, "append_eos": self.append_eos}

    def features(self) -> dict[str, Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}

    def preprocessors(self) -> dict[str, Any]:
        return {"tokenizer": self.tokenizer}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> TextItemEncoder:
        dtype = config.get("cache_dtype")
        encoder = cls(source.model("model"), source.feature("input_ids"),
                      source.feature("attention_mask"), pooling=config.get("pooling", "cls"),
                      chunk_size=config.get("chunk_size"),
                      cache_frozen_layers=bool(config.get("cache_frozen_layers")),
                      cache_dtype=getattr(torch, dtype) if dtype else None,
                      cache_states=bool(config.get("cache_states", True)),
                      template=config.get("template"),
                      append_eos=bool(config.get("append_eos", False)))
        encoder.tokenizer = source.preprocessor("tokenizer", transformers.AutoTokenizer)
        return encoder

    def add_items(self, inputs: Sequence[Any], preprocessor: Any = None) -> None:
        """`add_texts` (the protocol's name)."""
        self.add_texts(inputs, preprocessor)

    def add_texts(self, texts: Sequence[str], tokenizer: Any = None) -> None:
        """Append items ``n_items + 1 ..`` from their texts, tokenised like the table (same
        width); the frozen-prefix cache is rebuilt on the next call."""
        tokenizer = tokenizer if tokenizer is not None else self.tokenizer
        if tokenizer is None:
            raise ConfigError("no tokenizer: pass the one the item table was built with")
        if not texts:
            return
        ids, mask = tokenize_texts(tokenizer, texts, self.input_ids.size(1), self.template,
                                   self.append_eos)
        ids, mask = right_align(ids.to(self.input_ids), mask.to(self.attention_mask))
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
            hidden = last_hidden(self.model(input_ids=tokens, attention_mask=mask))
        else:
            assert self._prefix is not None
            with _start_at(*start, self._prefix[ids, :width].to(self._prefix_dtype)):
                hidden = last_hidden(self.model(input_ids=tokens, attention_mask=mask))
        return self._pool(hidden, mask)

    # what SideEncoding needs
    def _pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        return pool_hidden(hidden, mask, self.pooling)

    def _backbone(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        width = self._width(ids)
        mask = self.attention_mask[ids, :width]
        out = self.model(input_ids=self.input_ids[ids, :width], attention_mask=mask)
        return last_hidden(out), mask

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


def is_causal(model: nn.Module) -> bool:
    """Whether a Hugging Face model is causal (a decoder: each token sees only earlier ones)."""
    return detect_causal(model, "")


def resolve_pooling(model: nn.Module, pooling: str | None) -> str:
    """``pooling``, or the model's default (``"last"`` for a causal model, else ``"cls"``);
    ``"cls"`` on a causal model is refused: its first token has seen nothing of the text."""
    causal = is_causal(model)
    if pooling is None:
        return "last" if causal else "cls"
    check_pooling(pooling, POOLINGS)
    if causal and pooling == "cls":
        raise ConfigError(
            f"pooling='cls' on {type(model).__name__}, a causal model: its first token has seen "
            "nothing of the text; use pooling='last' (the default there) or 'mean'")
    return pooling


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


__all__ = ["TextItemEncoder", "is_causal", "resolve_pooling"]
