"""What a module tree computes, as a key a cache can compare: derived from the state itself.

A cache of a model's outputs (an item table, frozen hidden states) is valid exactly as long as
the model computes what it computed when the cache was filled. Counters that every operation
must remember to bump miss the operations that forget (`set_active_adapters`, a user's
``requires_grad_``), and tensor version counters alone miss new tensors (they restart at 0, and
a new tensor may even reuse a dead one's ``id()``). `StateKey` instead records, for every module
under the given roots:

- the module object itself (by weak reference: identity, never an ``id()`` that can be reused),
  its ``training`` flag (optional) and its public plain attributes (``active``, ``merged``,
  ``pooling``, ``dropout`` rates, ...): switching, disabling or merging adapter sets changes them;
- the ids of its forward hooks and pre-hooks (handle ids are never reused), so injecting or
  ejecting anything hooked changes the key;
- for every parameter and buffer: the tensor object (weak reference), its version counter (bumped
  by every in-place write through autograd's view of it: optimizer steps, ``load_state_dict``,
  adarec's loads and merges), its storage address, shape, dtype, device and ``requires_grad``;

plus any ``extra`` values the cache depends on (autocast state, a block index). Two keys are
equal only if all of that is: same objects, same values.

What it cannot see: writes through ``tensor.data`` (``p.data.copy_(...)`` bumps no version) and
Python-level changes to non-plain attributes. After such a write, call the owner's
``invalidate_cache()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from .hooks import global_hook_ids, hook_ids

_PLAIN = (bool, int, float, str, type(None), torch.dtype, torch.device)


def plain_attributes(module: nn.Module, modes: bool) -> tuple[tuple[str, Any], ...]:
    """Public attributes holding plain values (private ``_*`` ones hold caches and per-call
    scratch state, which must not count)."""
    return tuple(
        (k, v) for k, v in sorted(vars(module).items())
        if not k.startswith("_") and isinstance(v, _PLAIN) and (modes or k != "training")
    )


def walk(*roots: nn.Module, skip: Iterable[nn.Module] = ()
         ) -> Iterator[tuple[str, nn.Module | None]]:
    """Every module under ``roots`` with its path (``"0.encoder.layer.1"``), depth first in
    registration order; a subtree in ``skip`` comes as ``(path, None)`` and is not entered. What
    `StateKey.of` and a persistent fingerprint of the same state (`adarec.rec.shard_files`)
    both walk."""
    skipped = {id(m) for m in skip}
    stack: list[tuple[str, nn.Module]] = [(str(i), r) for i, r in enumerate(roots)][::-1]
    while stack:
        name, module = stack.pop()
        if id(module) in skipped:
            yield name, None
            continue
        yield name, module
        children = [(f"{name}.{k}", c) for k, c in module._modules.items() if c is not None]
        stack.extend(reversed(children))


def _tensor_facts(t: torch.Tensor) -> tuple[Any, ...]:
    try:
        address = t.data_ptr()
    except RuntimeError:  # sparse and other layouts without one
        address = -1
    return (t._version, address, tuple(t.shape), t.dtype, t.device, t.requires_grad)


class StateKey:
    """Equal to another key only when the same module tree is in the same state (see module
    docstring). Copies and pickles of a key never equal anything: a deep-copied model has new
    tensors and must not trust the original's cache."""

    __slots__ = ("__weakref__", "_refs", "_values")

    def __init__(self, objects: list[Any], values: list[Any]) -> None:
        self._refs = [weakref.ref(o) for o in objects]
        self._values = tuple(values)

    @classmethod
    @torch.compiler.disable
    def of(
        cls,
        *roots: nn.Module,
        skip: Iterable[nn.Module] = (),
        modes: bool = True,
        extra: tuple[Any, ...] = (),
    ) -> StateKey:
        """The key of ``roots`` and everything below them, except the subtrees in ``skip``;
        ``modes=False`` ignores train/eval flags (for caches that always compute in eval mode)."""
        objects: list[Any] = []
        values: list[Any] = [extra, global_hook_ids()]
        for name, module in walk(*roots, skip=skip):
            if module is None:
                values.append((name, "skipped"))
                continue
            objects.append(module)
            values.append((name, type(module), plain_attributes(module, modes),
                           *hook_ids(module)))
            for kind, tensors in (("p", module._parameters), ("b", module._buffers)):
                for tname, t in tensors.items():
                    if t is None:
                        values.append((kind, tname, None))
                        continue
                    objects.append(t)
                    values.append((kind, tname, _tensor_facts(t)))
        return cls(objects, values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StateKey) or self._values != other._values:
            return False
        if len(self._refs) != len(other._refs):
            return False
        return all(a() is b() and a() is not None for a, b in zip(self._refs, other._refs,
                                                                  strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[Any, ...]:
        return (_expired, ())


def _expired() -> StateKey:
    """A key equal to nothing (what copies and unpickled keys become)."""
    return StateKey([], [object()])


def autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """Whether autocast is on for ``device_type`` and in which dtype: a cache filled under
    bf16 autocast holds bf16-rounded values a float32 call must not get."""
    if not torch.is_autocast_enabled(device_type):
        return (False, None)
    return (True, torch.get_autocast_dtype(device_type))


__all__ = ["StateKey", "autocast_state", "plain_attributes", "walk"]
