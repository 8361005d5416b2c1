"""Digests of the base weights a checkpoint was trained on, so a load onto other weights is
caught (exact bytes: the same on every machine and thread count)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from ..freezing import adapter_parameters
from ..inject import (
    ADAPTERS_ATTR,
)


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _tensor_digest(t: torch.Tensor) -> str:
    """``"<dtype>:<first 128 bits of sha256>"`` of a tensor's bytes in C order. Exact bytes,
    no float arithmetic: the same on every machine and at any thread count (the bytes are
    little-endian, as on every platform torch ships for)."""
    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
    return f"{_dtype_name(t)}:{hashlib.sha256(raw.data).hexdigest()[:32]}"


def weights_digest(tensors: Mapping[str, torch.Tensor], workers: int | None = None
                   ) -> dict[str, str]:
    """`_tensor_digest` of each tensor, hashed in parallel threads (hashlib releases the GIL
    on large buffers); each digest depends only on its tensor, so the result does not depend on
    the thread count. A BERT-base (110 M float32 parameters) takes ~0.2 s on 2 cores with SHA
    instructions (``benchmarks/bench_fingerprint.py``)."""
    order = sorted(tensors, key=lambda n: -tensors[n].numel())  # big ones first: better balance
    workers = max(1, min(workers or 8, len(order), os.cpu_count() or 1))
    if workers == 1:
        return {n: _tensor_digest(tensors[n]) for n in sorted(tensors)}
    with ThreadPoolExecutor(workers) as pool:
        digests = dict(zip(order, pool.map(lambda n: _tensor_digest(tensors[n]), order),
                           strict=True))
    return {n: digests[n] for n in sorted(digests)}


def _base_tensors(model: nn.Module, saved: Iterable[str]) -> dict[str, torch.Tensor]:
    """What the saved tensors were trained on top of: every parameter and persistent buffer
    that is neither an adapter's nor in the file (non-persistent buffers are data, such as a
    recommender's item features, which may legitimately change)."""
    skip = set(saved)
    adapters = {id(p) for p in adapter_parameters(model).values()}
    named = {**dict(model.named_parameters()), **_persistent_buffers(model)}
    return {n: t for n, t in named.items()
            if n not in skip and id(t) not in adapters and f".{ADAPTERS_ATTR}." not in f".{n}."}


def _compare_base_weights(saved: dict[str, str], model: nn.Module) -> tuple[list[str], list[str]]:
    """``(conflict lines, names)`` of base tensors that are missing, of another dtype, or hold
    other values than when the checkpoint was saved."""
    if not saved:
        return [], []
    named: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    named.update(_persistent_buffers(model, remove_duplicate=False))
    missing = [n for n in saved if n not in named]
    dtypes = [(n, saved[n].split(":", 1)[0], _dtype_name(named[n])) for n in saved
              if n in named and saved[n].split(":", 1)[0] != _dtype_name(named[n])]
    other_dtype = {n for n, _, _ in dtypes}
    ours = weights_digest({n: named[n] for n in saved if n in named and n not in other_dtype})
    differ = [n for n, d in ours.items() if d != saved[n]]
    total = len(saved)

    def some(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f", ... ({len(names) - 5} more)" if len(names) > 5 else "")

    way_out = ("load the base model the adapters were trained on (for a transferred model, its "
               "source state first: load_model_state or load_transferable_state_dict), or pass "
               "allow_other_base_weights=True to load anyway")
    lines = []
    if differ:
        lines.append(f"base weights differ from those the checkpoint was saved with: "
                     f"{len(differ)} of {total} base tensors hold other values ({some(differ)}); "
                     + way_out)
    if dtypes:
        shown = "; ".join(f"{n}: checkpoint {a}, model {b}" for n, a, b in dtypes[:3])
        lines.append(f"base weights differ in dtype: {len(dtypes)} of {total} base tensors "
                     f"({shown}{'; ...' if len(dtypes) > 3 else ''}), so their values cannot be "
                     "compared; cast the model back before loading, or pass "
                     "allow_other_base_weights=True")
    if missing:
        lines.append(f"base weights differ: {len(missing)} of {total} base tensors are not in "
                     f"the model ({some(missing)}); " + way_out)
    return lines, sorted([*differ, *other_dtype, *missing])


def _persistent_buffers(model: nn.Module, remove_duplicate: bool = True) -> dict[str, torch.Tensor]:
    keys = set(model.state_dict(keep_vars=True))
    return {n: b for n, b in model.named_buffers(remove_duplicate=remove_duplicate) if n in keys}
