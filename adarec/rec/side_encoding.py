"""How an item encoder runs the side networks injected into its frozen Hugging Face model.

With a side network (method ``"side"``, `adarec.adapters.side`) active in its model, an item
encoder computes ``pool(h_final) + sum of the active side networks' corrections``, where the
states the side networks read come either

* from the backbone, run in eval mode (no dropout) without autograd (``cache_states=False``;
  the side networks are the only part of the graph), or
* from a `HiddenStateCache` of every item's states, built once (``cache_states=True``, the
  default) in full precision (autocast off): training and evaluation then never run the
  backbone.

Both paths feed the same code the same states (up to the float rounding of batching), so in
float32 they give the same loss and gradients (tested); under bf16 autocast the cached states
are the more precise ones (the uncached backbone runs in bf16).

The cache is keyed on everything those states depend on: the identity, version counter and
storage of every backbone parameter and buffer (side networks' own parameters excepted), which
adapter sets are active in the backbone, the item features, the tapped blocks, the state mode,
the storage dtype and the device. Any change, e.g. an optimizer step on a backbone weight,
``load_state_dict``, a switched adapter set or new item texts, rebuilds it on the next call; it
never serves states of a model that no longer exists. A backbone parameter that trains is
refused: a side network needs a frozen backbone.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from adarec.adapters.side import SideNetwork, side_networks
from adarec.errors import AdapterStateError
from adarec.rec.shard_files import state_fingerprint
from adarec.rec.state_cache import HiddenStateCache
from adarec.sets import inactive_adapters
from adarec.state_key import StateKey

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def eval_flags(model: nn.Module) -> Iterator[None]:
    """Every module of ``model`` in eval mode within the block, without calling ``train()``."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        for m, _ in flags:
            m.training = False
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@dataclass(frozen=True)
class StatePlan:
    """One hidden-state cache build: ``compute(ids)`` gives the states of rows ``ids``, run in
    chunks of ``chunk_size`` along ``order``; ``key`` is the cache's key (`SideEncoding._key`),
    ``tokens`` the token table's width (``None``: pooled states)."""

    sides: list[SideNetwork]
    slots: list[int]
    token_states: bool
    device: torch.device
    n_rows: int
    compute: Callable[[Tensor], Tensor]
    key: StateKey
    dtype: torch.dtype
    chunk_size: int
    order: Tensor
    tokens: int | None


class SideEncoding:
    """Mixin for an item encoder over one Hugging Face model ``self.model``.

    The encoder provides `_backbone` (run the model on item rows), `_pool`, `_features` (its
    item-feature buffers), `_mask` (the token mask of rows, or ``None``) and `_order` (a
    chunking order); this class does the rest.
    """

    model: nn.Module
    chunk_size: int | None
    cache_states: bool
    cache_dtype: torch.dtype | None
    cache_dir: Any
    _state_cache: HiddenStateCache | None

    # ------------------------------------------------------------------ what the encoder gives
    def _backbone(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def _pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _features(self) -> list[Tensor]:
        raise NotImplementedError

    def _mask(self, ids: Tensor, width: int) -> Tensor | None:
        raise NotImplementedError

    def _order(self, ids: Tensor) -> Tensor:
        raise NotImplementedError

    def _width(self, ids: Tensor) -> int:
        raise NotImplementedError

    # ------------------------------------------------------------------ side networks
    def side_networks(self) -> list[SideNetwork]:
        """The active side networks of the model (checked to agree on the state mode)."""
        sides = side_networks(self.model)
        if len({s.tokens for s in sides}) > 1:
            raise AdapterStateError(
                "active side networks mix pooled and token states: "
                f"{[(s.set_name, s.options.states) for s in sides]}; activate one kind at a time")
        return sides

    def _check_frozen(self) -> None:
        own = {id(p) for s in side_networks(self.model, active_only=False) for p in s.parameters()}
        training = [n for n, p in self.model.named_parameters()
                    if p.requires_grad and id(p) not in own]
        if training:
            raise AdapterStateError(
                f"a side network reads a frozen backbone, but {len(training)} backbone "
                f"parameter(s) require grad (e.g. {training[:3]}); freeze them "
                "(TransRec.set_policy('adapters') does) or eject the side set")

    @staticmethod
    def _slots(sides: Sequence[SideNetwork]) -> list[int]:
        return sorted({s for side in sides for s in side.slots})

    # ------------------------------------------------------------------ states
    def _computed(self, ids: Tensor, sides: Sequence[SideNetwork], slots: Sequence[int],
                  tokens: bool) -> tuple[Tensor, Tensor | None]:
        """States of rows ``ids`` from the backbone (eval mode, no autograd):
        ``[B, S, H]`` pooled or ``[B, w, S, H]`` tokens: the tapped blocks' states, then the
        final state unless it *is* the last tapped one (BERT's last block output is its
        ``last_hidden_state``; ViT applies a final norm), so ``S = len(slots)`` or ``+ 1``."""
        with contextlib.ExitStack() as stack:
            for side in sides:
                stack.enter_context(side.capture())
            with torch.no_grad(), eval_flags(self.model):
                last, mask = self._backbone(ids)
            seen: dict[int, Tensor] = {}
            for side in sides:
                taps, _ = side.take()
                seen.update(zip(side.slots, taps, strict=True))
        states = [seen[s] for s in slots]
        top = states[-1]
        if not (top.data_ptr() == last.data_ptr() and top.shape == last.shape
                and top.stride() == last.stride()):
            states.append(last)
        if tokens:
            return torch.stack(states, dim=2), mask
        return torch.stack([self._pool(h, mask) for h in states], dim=1), mask

    def _key_parts(self, sides: Sequence[SideNetwork], slots: Sequence[int], tokens: bool,
                   device: torch.device) -> tuple[list[nn.Module], tuple[Any, ...]]:
        """What the cached states depend on: every module and tensor of this encoder (backbone,
        item features, the active adapters of other methods and their flags) except the side
        networks themselves and switched-off adapters (`adarec.state_key`, as for the
        frozen-prefix cache), and how the states are taken. So the key names the backbone, not
        the set: sets of side networks tapping the same blocks share one cache, and switching
        between them never rebuilds it."""
        skip: list[nn.Module] = [*side_networks(self.model, active_only=False),
                                 *inactive_adapters(cast(nn.Module, self))]
        return skip, (tuple(slots), tokens, self.cache_dtype, str(device))

    def _key(self, sides: Sequence[SideNetwork], slots: Sequence[int], tokens: bool,
             device: torch.device) -> StateKey:
        skip, extra = self._key_parts(sides, slots, tokens, device)
        return StateKey.of(self, skip=skip, modes=False, extra=extra)

    def state_fingerprint(self, sides: Sequence[SideNetwork] | None = None,
                          device: torch.device | None = None) -> str:
        """The persistent twin of the cache's key (`adarec.rec.shard_files.state_fingerprint`):
        equal in another process exactly when the states would be the same."""
        sides = list(sides) if sides is not None else self.side_networks()
        device = device if device is not None else self._features()[0].device
        skip, extra = self._key_parts(sides, self._slots(sides), sides[0].tokens, device)
        extra = (*extra[:-1], device.type)  # not the index: rank r serves from cuda:r
        return state_fingerprint(cast(nn.Module, self), skip=skip, modes=False, extra=extra)

    def state_plan(self, sides: Sequence[SideNetwork] | None = None,
                   device: torch.device | None = None) -> StatePlan:
        """How the hidden-state cache of ``sides`` (default: the active side networks) is
        built: what `_cached` runs in one process and `adarec.rec.sharded` splits over ranks."""
        sides = list(sides) if sides is not None else self.side_networks()
        if not sides:
            raise AdapterStateError(f"{type(self).__name__} has no active side network")
        device = device if device is not None else self._features()[0].device
        slots, tokens = self._slots(sides), sides[0].tokens
        n = self._features()[0].size(0)
        rows = torch.arange(n, device=device)

        def compute(ids: Tensor) -> Tensor:
            with torch.autocast(device.type, enabled=False):  # full-precision states
                return self._computed(ids.to(device), sides, slots, tokens)[0]

        return StatePlan(sides, slots, tokens, device, n, compute,
                         self._key(sides, slots, tokens, device),
                         self.cache_dtype or torch.float32, self.chunk_size or n,
                         self._order(rows).cpu(), self._width(rows) if tokens else None)

    def _cached(self, sides: Sequence[SideNetwork], slots: Sequence[int], tokens: bool,
                device: torch.device) -> HiddenStateCache | None:
        cache = self._state_cache
        if cache is not None and cache.key == self._key(sides, slots, tokens, device):
            return cache
        self._state_cache = None  # drop the stale table before building the new one
        plan = self.state_plan(sides, device)
        cache = HiddenStateCache.build(
            plan.n_rows, plan.compute, plan.key, dtype=plan.dtype, chunk_size=plan.chunk_size,
            order=plan.order, tokens=plan.tokens, directory=self.cache_dir,
            desc=f"{type(self).__name__}: caching hidden states")
        return self.adopt_state_cache(plan, cache)

    def adopt_state_cache(self, plan: StatePlan, cache: HiddenStateCache
                          ) -> HiddenStateCache | None:
        """Keep ``cache`` (built for ``plan``) as this encoder's, after checking a few rows
        against a direct forward; ``None`` (and no caching from then on) when they differ."""
        logger.info("%s: hidden-state cache built, %d rows, %.1f MB", type(self).__name__,
                    plan.n_rows, cache.nbytes / 2**20)
        if not self._cache_agrees(cache, plan.sides, plan.slots, plan.token_states,
                                   plan.device):
            self.cache_states = False
            warnings.warn(f"{type(self).__name__}: cached hidden states differ from a direct "
                          "forward of this model (does it ignore the attention mask?); "
                          "encoding without the cache", stacklevel=5)
            return None
        self._state_cache = cache
        return cache

    def _cache_agrees(self, cache: HiddenStateCache, sides: Sequence[SideNetwork],
                      slots: Sequence[int], tokens: bool, device: torch.device) -> bool:
        n = self._features()[0].size(0)
        order = self._order(torch.arange(n, device=device))
        probe = torch.cat([order[:2], order[-2:]]).unique()
        with torch.autocast(device.type, enabled=False):
            direct, mask = self._computed(probe, sides, slots, tokens)
        stored = cache.gather(probe, direct.size(1) if tokens else None).float()
        if tokens and mask is not None:  # padded positions hold whatever the model left there
            keep = mask[:, :, None, None].to(stored.dtype)
            direct, stored = direct * keep, stored * keep
        tol = 1e-3 if (self.cache_dtype or torch.float32) == torch.float32 else 3e-2
        return torch.allclose(direct.float(), stored, atol=tol, rtol=tol)

    def _states(self, ids: Tensor, sides: Sequence[SideNetwork], slots: Sequence[int],
                tokens: bool, cache: HiddenStateCache | None) -> tuple[Tensor, Tensor | None]:
        if cache is not None:
            width = self._width(ids) if tokens else None
            return cache.gather(ids, width), self._mask(ids, width) if width else None
        return self._computed(ids, sides, slots, tokens)

    # ------------------------------------------------------------------ encoding
    def _side_chunk(self, ids: Tensor, sides: Sequence[SideNetwork], slots: Sequence[int],
                    tokens: bool, cache: HiddenStateCache | None) -> tuple[Tensor, Tensor]:
        """The representation of rows ``ids`` and their pooled tapped states ``[B, k, H]``."""
        states, mask = self._states(ids, sides, slots, tokens, cache)
        index = {s: i for i, s in enumerate(slots)}
        rep = (self._pool(states[:, :, -1], mask) if tokens else states[:, -1]).float()
        for side in sides:
            picked = [states[..., index[s], :] for s in side.slots]
            rep = rep + side.correction(picked, mask, self._pool).float()
        if tokens:
            pooled = torch.stack([self._pool(states[:, :, i], mask) for i in range(
                len(slots))], dim=1)
            return rep, pooled
        return rep, states[:, : len(slots)]

    def side_encode(self, ids: Tensor, sides: Sequence[SideNetwork] | None = None,
                    with_states: bool = False) -> Any:
        """Item representations ``[N, H]`` through the active side networks (and, with
        ``with_states``, the pooled states of the tapped blocks ``[N, k, H]``, bottom to top)."""
        if torch.is_grad_enabled():  # inference cannot train the backbone by mistake
            self._check_frozen()
        sides = list(sides) if sides is not None else self.side_networks()
        if not sides:
            raise AdapterStateError(f"{type(self).__name__} has no active side network")
        slots, tokens = self._slots(sides), sides[0].tokens
        cache = self._cached(sides, slots, tokens, ids.device) if self.cache_states else None
        if cache is not None and not tokens:  # one gather; nothing to chunk
            rep, states = self._side_chunk(ids, sides, slots, tokens, cache)
            return (rep, states) if with_states else rep
        order = self._order(ids)
        chunk = self.chunk_size or ids.numel()
        parts = [self._side_chunk(ids[o], sides, slots, tokens, cache)
                 for o in order.split(chunk)]
        back = order.argsort()
        rep = torch.cat([p[0] for p in parts])[back]
        if with_states:
            return rep, torch.cat([p[1] for p in parts])[back]
        return rep

    def invalidate_state_cache(self) -> None:
        """Drop the hidden-state cache (it is also rebuilt by itself when the backbone changes)."""
        self._state_cache = None

    def invalidate_cache(self) -> None:
        """Drop every cache this encoder owns (what `TransRec.invalidate_cache` calls)."""
        self.invalidate_state_cache()


__all__ = ["SideEncoding", "StatePlan", "eval_flags"]
