"""Freezing policies and the trainable-parameter summary: one vocabulary for the core and `rec`.

- `freeze`: nothing trains;
- `mark_only_adapters_trainable`: the adapters (and every norm when a set asks for it);
- `mark_adapters_and_upper_norms_trainable`: the adapters and the norms from the lowest adapted
  block upwards (what TransRec's adapter policies train);
- `mark_only_biases_trainable`: BitFit.

Each one remembers the flags the model had before adarec first froze it, so `eject_adapters`
(or `restore_requires_grad`) gives them back. Adapter parameters are found through the layer
protocol (``adapter_params()``), never by guessing from names, so a parameter called ``adapter``
in a user's head is not mistaken for one.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from .adapters.base import ADAPTERS_ATTR, is_adapter
from .errors import TargetNotFoundError
from .layouts import iter_blocks
from .sets import adapter_sets

_ORIG_FLAGS = "_adarec_requires_grad"
_ORIG_ORDER = "_adarec_requires_grad_order"
"""When the flags were remembered: ejecting restores the latest records first."""
_remembered = itertools.count()


def adapter_parameters(model: nn.Module, name: str | None = None) -> dict[str, nn.Parameter]:
    """Every adapter parameter (of set ``name``, or all sets) by full name, shared ones once."""
    out: dict[str, nn.Parameter] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        if not is_adapter(module) or (name is not None and module.set_name != name):
            continue
        own = dict(module.named_parameters())
        for rel in module.adapter_params():
            p = own[rel]
            if id(p) not in seen:
                seen.add(id(p))
                out[f"{mname}.{rel}" if mname else rel] = p
    return out


def freeze(model: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter."""
    _remember_flags(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def is_norm(module: nn.Module) -> bool:
    """LayerNorm / RMSNorm, torch's or a model's own class of that name."""
    cls = type(module).__name__
    return isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or cls.endswith(("LayerNorm", "RMSNorm"))


def mark_only_adapters_trainable(
    model: nn.Module, also: str | Iterable[str] = (), names: Iterable[str] | None = None
) -> nn.Module:
    """Freeze everything, then unfreeze adapter parameters and the parameters whose full name
    matches any regex in ``also`` (e.g. ``"LayerNorm"`` or ``"^head\\."``).

    ``names`` limits the adapters to those sets. Norm layers are unfrozen too when an adapter set
    asks for it (``AdapterSpec.tune_layernorm``, as Houlsby et al. tuned LayerNorms).
    """
    patterns = [re.compile(p) for p in ([also] if isinstance(also, str) else list(also))]
    wanted = None if names is None else set(names)
    freeze(model)
    tune_norms = False
    for module in model.modules():
        if is_adapter(module) and (wanted is None or module.set_name in wanted):
            own = dict(module.named_parameters())
            for rel in module.adapter_params():
                own[rel].requires_grad_(True)
            tune_norms |= bool(getattr(module.spec, "tune_layernorm", False))
    if tune_norms:
        for module in model.modules():
            if is_norm(module):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(True)
    for pname, p in model.named_parameters():
        if any(rx.search(pname) for rx in patterns):
            p.requires_grad_(True)
    return model


def mark_adapters_and_upper_norms_trainable(model: nn.Module, norms: bool = True) -> nn.Module:
    """Freeze everything, then unfreeze the adapters and (with ``norms``) the norm layers from the
    lowest adapted block upwards.

    Norms below the lowest adapter stay frozen, so everything under it is a fixed function (a
    frozen-prefix cache can skip it); with adapters in every block this is the paper's
    "adapters + LayerNorms" (every block's norms, the embedding norm excepted). Unlike
    ``AdapterSpec.tune_layernorm`` (every norm of the model), it follows where the adapters are.
    """
    freeze(model)
    adapters = adapter_parameters(model)
    for p in adapters.values():
        p.requires_grad_(True)
    # decoupled modules (``decoupled = True``: networks running beside a frozen backbone, e.g. a
    # side network or a multimodal inter-modal stream) train whole and unfreeze no backbone norm
    decoupled = [n for n, m in model.named_modules() if getattr(m, "decoupled", False) is True]
    for n in decoupled:
        model.get_submodule(n).requires_grad_(True)
    adapters = {k: p for k, p in adapters.items()
                if not any(k == d or k.startswith(d + ".") for d in decoupled)}
    if not norms or not adapters:
        return model
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    try:
        blocks = [b.name for b in iter_blocks(model)]
    except TargetNotFoundError:
        blocks = []
    start = len(order)
    for pname in adapters:
        site = pname.split(f".{ADAPTERS_ATTR}.", 1)[0]
        owner = next((b for b in blocks if site.startswith(b + ".")), site)
        start = min(start, order.get(owner, start))
    for n, m in model.named_modules():
        if is_norm(m) and order[n] >= start:
            for p in m.parameters(recurse=False):
                p.requires_grad_(True)
    return model


def mark_only_biases_trainable(
    model: nn.Module, also: str | Iterable[str] = (), adapters: bool = False
) -> nn.Module:
    """BitFit (Ben Zaken et al. 2022): freeze everything but the model's bias terms (every
    parameter named ``bias``, LayerNorm biases included) and those matching a regex in ``also``
    (e.g. ``"^head\\."`` for a task head). With ``adapters`` the adapter sets train too.

    A freezing policy, not an adapter: nothing is injected, so `eject_adapters` does not undo
    it; `restore_requires_grad` gives back the flags the model had before.
    """
    patterns = [re.compile(p) for p in ([also] if isinstance(also, str) else list(also))]
    own = set(adapter_parameters(model))
    biases = [p for n, p in model.named_parameters()
              if n not in own and n.rsplit(".", 1)[-1] == "bias"]
    if not biases:
        raise TargetNotFoundError(
            f"{type(model).__name__} has no bias parameters (LLaMA- and T5-style models have "
            "none), so BitFit would train nothing"
        )
    if adapters:
        mark_only_adapters_trainable(model)
    else:
        freeze(model)
    for p in biases:
        p.requires_grad_(True)
    for pname, p in model.named_parameters():
        if pname not in own and any(rx.search(pname) for rx in patterns):
            p.requires_grad_(True)
    return model


def _remember_flags(model: nn.Module) -> None:
    """Keep the pre-adarec ``requires_grad`` flags once, so ejecting can restore them."""
    if getattr(model, _ORIG_FLAGS, None) is None:
        adapters = adapter_parameters(model)  # once, not once per parameter
        flags = {n: p.requires_grad for n, p in model.named_parameters() if n not in adapters}
        object.__setattr__(model, _ORIG_FLAGS, flags)
        object.__setattr__(model, _ORIG_ORDER, next(_remembered))


def restore_requires_grad(model: nn.Module) -> None:
    """Give parameters back the flags they had before adarec first froze ``model``."""
    flags = getattr(model, _ORIG_FLAGS, None)
    if flags is None:
        return
    for n, p in model.named_parameters():
        if n in flags:
            p.requires_grad_(flags[n])
    object.__delattr__(model, _ORIG_FLAGS)
    model.__dict__.pop(_ORIG_ORDER, None)


def restore_requires_grad_below(model: nn.Module) -> None:
    """`restore_requires_grad` for ``model`` and every submodule that adarec froze and that holds
    no adapter set any more, latest first (a later record saw the flags an earlier freeze set)."""
    held = [m for m in model.modules() if getattr(m, _ORIG_FLAGS, None) is not None]
    held.sort(key=lambda m: m.__dict__.get(_ORIG_ORDER, -1), reverse=True)
    for m in held:
        if not adapter_sets(m):
            restore_requires_grad(m)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters an optimiser should get: ``requires_grad=True``, shared ones once."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


# --------------------------------------------------------------------------------- summary
@dataclass
class SummaryRow:
    group: str
    module: str
    trainable: int
    total: int


@dataclass
class ParameterSummary:
    """Trainable / total counts grouped by adapter set and module (digits become ``*``)."""

    rows: list[SummaryRow] = field(default_factory=list)

    @property
    def trainable(self) -> int:
        return sum(r.trainable for r in self.rows)

    @property
    def total(self) -> int:
        return sum(r.total for r in self.rows)

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def group_totals(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for r in self.rows:
            t, a = out.get(r.group, (0, 0))
            out[r.group] = (t + r.trainable, a + r.total)
        return out

    def __str__(self) -> str:
        w = max([len(r.module) for r in self.rows] + [6])
        g = max([len(r.group) for r in self.rows] + [5])
        lines = [f"{'group':<{g}}  {'module':<{w}}  {'trainable':>12}  {'total':>12}"]
        lines.append("-" * len(lines[0]))
        for r in self.rows:
            lines.append(f"{r.group:<{g}}  {r.module:<{w}}  {r.trainable:>12,}  {r.total:>12,}")
        lines.append("-" * len(lines[0]))
        lines.append(
            f"{'total':<{g}}  {'':<{w}}  {self.trainable:>12,}  {self.total:>12,}"
            f"  ({self.percent:.2f}% trainable)"
        )
        return "\n".join(lines)


def _glob(name: str) -> str:
    return ".".join("*" if part.isdigit() else part for part in name.split("."))


def parameter_summary(model: nn.Module, base_depth: int = 2) -> ParameterSummary:
    """Group adapter parameters by set and adapted module, the rest by the first ``base_depth``
    name components; each parameter is counted once. A non-adapter row is labelled with its
    top-level module's name when any of it trains (e.g. ``dtl``, ``user_encoder``, tuned norms
    of ``item_encoder``), and ``base`` when it is entirely frozen."""
    owner: dict[int, tuple[str, str]] = {}
    for mname, module in model.named_modules():
        if is_adapter(module):
            site = mname.rsplit(".adarec_adapters.", 1)[0]
            for p in module.parameters():
                owner.setdefault(id(p), (module.set_name, _glob(site)))
    table: dict[tuple[str, str], list[int]] = {}
    for pname, p in model.named_parameters():
        key = owner.get(id(p)) or ("base", _glob(".".join(pname.split(".")[:base_depth])))
        row = table.setdefault(key, [0, 0])
        row[0] += p.numel() if p.requires_grad else 0
        row[1] += p.numel()
    adapter_groups = {g for g, _ in owner.values()}
    rows = [SummaryRow(m.split(".", 1)[0] if g == "base" and t else g, m, t, a)
            for (g, m), (t, a) in table.items()]
    rows.sort(key=lambda r: (r.group == "base", r.group not in adapter_groups, r.group,
                             r.module))
    return ParameterSummary(rows)


def print_trainable_parameters(model: nn.Module) -> ParameterSummary:
    """Print (and return) the `parameter_summary` table.

    Printing is this function's whole job (like peft's method of the same name), so it prints
    to stdout rather than logging; everything else in adarec reports through the ``adarec``
    logger. Use `parameter_summary` to get the table without printing it.
    """
    summary = parameter_summary(model)
    print(summary)
    return summary
