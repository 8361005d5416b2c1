"""A dimension-transformation layer (DTL) owned by one adapter set of a TransRec.

Why: one model per market or category over one frozen backbone is a set per market, each set
``{item-encoder adapters or side network, DTL, user-encoder adapters}``. The set's DTL is an
adapter layer (`SetDTL`) on ``model.dtl_sets`` (a `SetDTLs`, called with the shared DTL's input
and output): it replaces the shared DTL's output, so `adarec.set_active_adapters`,
`adarec.adapters_disabled`, `adarec.eject_adapters`, the item table's state key and mixed
batches treat it like every other layer of its set; a set without one (and the model with no
set active) reads the shared DTL ``model.dtl``, which stays as it was (its state-dict keys too).
"""

from __future__ import annotations

import itertools
from typing import Any, cast

from torch import Tensor, nn

from adarec.adapters.base import ADAPTERS_ATTR, AdapterLayer
from adarec.errors import AdapterStateError, ConfigError
from adarec.inject import attach_layer
from adarec.rec.item_adaptors import adaptor_name, build_adaptor
from adarec.rec.kinds import config_of
from adarec.sites import Site

DTLChoice = bool | str | nn.Module
"""What a set's DTL is built from: ``True``/``"linear"``, ``"moe"``, ``False``/``"none"`` (as
`TransRec`'s ``dtl``), a module, or ``"copy"``: a copy of the shared DTL, weights included."""
SITE = Site(target="dtl_sets", entry="dtl_sets", role="dtl")


class SetDTLs(nn.Module):
    """``(x, shared_dtl(x)) -> shared_dtl(x)``: the module the sets' own DTLs attach to (a hook
    on the shared DTL itself would break an ``nn.Sequential`` DTL, which runs every child)."""

    def __init__(self) -> None:
        super().__init__()

    def forward(self, x: Tensor, shared: Tensor) -> Tensor:
        return shared


class SetDTL(AdapterLayer):
    """The DTL of one set: ``adapter(x, y) = dtl(x)`` (the shared DTL's output ``y`` is
    replaced). Row-wise, so rows of one batch may use different sets."""

    mixed_batch_refusal = None

    def __init__(self, dtl: nn.Module, kind: str | None) -> None:
        super().__init__()
        self.dtl = dtl
        self.kind = kind  # how to rebuild it by name; None: from its registered part config

    def forward(self, x: Tensor | None, y: Tensor) -> Tensor:
        if x is None:
            raise AdapterStateError(f"the DTL of set {self.set_name!r} got no input")
        return cast(Tensor, self.dtl(x))

    def to_record(self) -> dict[str, Any]:
        """What `adarec.rec.folder_format` writes to rebuild it (weights go with the model's)."""
        part = self.kind if self.kind is not None else config_of(self.dtl, f"DTL of set "
                                                                           f"{self.set_name!r}")
        return {"name": self.set_name, "dtl": part, "active": self.active}


def set_dtls(model: Any) -> dict[str, SetDTL]:
    """Set name -> its own DTL, in the order they were added."""
    container = model.dtl_sets._modules.get(ADAPTERS_ATTR)
    if not isinstance(container, nn.ModuleDict):
        return {}
    return {n: a for n, a in container.items() if isinstance(a, SetDTL)}


def _copy_of_shared(model: Any) -> tuple[nn.Module, str]:
    """A fresh module equal to the shared DTL."""
    kind = model.dtl_kind
    if kind is None:
        raise ConfigError("dtl='copy' rebuilds the shared DTL by its name; this model's DTL was "
                          "passed as a module: pass a copy of your module as dtl= instead")
    module = build_adaptor(kind, model.item_encoder.dim, model.dim)
    module.load_state_dict(model.dtl.state_dict())
    return module, kind


def add_set_dtl(model: Any, name: str, dtl: DTLChoice) -> SetDTL:
    """Give set ``name`` of ``model`` (a `TransRec`) its own DTL, active alone among the sets'
    DTLs (as injection activates the new set in each encoder it adapts)."""
    if not isinstance(name, str) or not name or "." in name:
        raise AdapterStateError(f"adapter set name must be a non-empty string without '.': "
                                f"{name!r}")
    if name in set_dtls(model):
        raise AdapterStateError(f"adapter set {name!r} already has its own DTL; eject the set "
                                "first or choose another name")
    kind: str | None
    if isinstance(dtl, str) and dtl == "copy":
        module, kind = _copy_of_shared(model)
    elif isinstance(dtl, (bool, str, nn.Module)):
        module = build_adaptor(dtl, model.item_encoder.dim, model.dim)
        kind = adaptor_name(dtl)
    else:
        raise ConfigError(f"dtl={dtl!r} for set {name!r} is not True/False, 'linear', 'moe', "
                          "'none', 'copy' or a module")
    layer = SetDTL(module, kind)
    ref = next(itertools.chain(model.dtl.parameters(), model.parameters()), None)
    if ref is not None:  # where the model is (its host, `SetDTLs`, holds no tensor to go by)
        layer.to(device=ref.device, dtype=ref.dtype)
    attach_layer(model.dtl_sets, name, layer, SITE)
    for other in set_dtls(model).values():
        other.active = other is layer
    return layer


def check_one_dtl(host: nn.Module) -> None:
    """Refuse two active set DTLs serving the same rows: which one maps the items would depend on
    the order they were added (rows of a mixed batch name one set each, so they may differ)."""
    container = host._modules.get(ADAPTERS_ATTR)
    if not isinstance(container, nn.ModuleDict):
        return
    active = [a.set_name for a in container.values()
              if isinstance(a, SetDTL) and a.active and a._mixed_rows is None]
    if len(active) > 1:
        raise AdapterStateError(f"adapter sets {active} each have their own DTL and are active "
                                "together; activate one of them (set_active_adapters)")


__all__ = ["SITE", "DTLChoice", "SetDTL", "SetDTLs", "add_set_dtl", "check_one_dtl", "set_dtls"]
