"""Named tuning methods on a TransRec: what ``--method`` means in the quickstart and benchmarks.

One place turns a method name into injected adapters and a training policy, so the quickstart,
the epoch benchmark and user scripts build the same model for the same name.
"""

from __future__ import annotations

from adarec.errors import ConfigError
from adarec.freezing import ParameterSummary
from adarec.rec.item_encoders import PrecomputedItemEncoder, TextItemEncoder
from adarec.rec.transrec import TransRec
from adarec.spec import AdapterSpec

ADAPTER_METHODS = ("houlsby", "pfeiffer", "parallel", "compacter", "lora", "side")
"""Adapter presets `apply_method` injects into the item encoder."""
METHODS = (*ADAPTER_METHODS, "full", "frozen", "id")
"""Every method name: adapters, full fine-tuning, a frozen encoder (linear probe), ID-based."""


def apply_method(model: TransRec, method: str, *, adapter_layers: int = 0, top_blocks: int = 0,
                 user_adapters: bool = False, side_width: int | None = None,
                 side_states: str | None = None) -> ParameterSummary:
    """Set ``model`` up for ``method`` and return the parameter table of the model as defined
    (for ``"frozen"``, before its frozen encoder becomes a precomputed table, so it counts).

    ``adapter_layers``: adapters in the top N blocks only (0: all; the blocks below are then
    cached); ``top_blocks``: ``"full"`` fine-tunes the top N blocks only; ``user_adapters``: the
    same adapter method in the user encoder too; ``side_width`` / ``side_states``: the side
    network's width and what it reads. ``"id"`` expects an `IDItemEncoder` model."""
    if method not in METHODS:
        raise ConfigError(f"method {method!r} is not one of {list(METHODS)}")
    if top_blocks and method != "full":
        raise ConfigError(f"top_blocks goes with method 'full', not {method!r}")
    if (adapter_layers or user_adapters) and method not in ADAPTER_METHODS:
        raise ConfigError(f"adapter_layers / user_adapters go with an adapter method, not "
                          f"{method!r}")
    if (side_width is not None or side_states is not None) and method != "side":
        raise ConfigError(f"side_width / side_states go with method 'side', not {method!r}")
    if method == "id":
        return model.set_policy("full")
    if method in ADAPTER_METHODS:
        layers = tuple(range(-adapter_layers, 0)) if adapter_layers else None
        spec = AdapterSpec.preset(method, layers=layers)
        if method == "side":  # a decoder's items pool their last token: so does its side net
            last = "last" if getattr(model.item_encoder, "pooling", None) == "last" else None
            spec = spec.replace(**{k: v for k, v in (("bottleneck", side_width),
                                                      ("side_states", side_states),
                                                      ("side_pooling", last))
                                   if v is not None})
        summary = model.inject_adapters(item=spec, user=method if user_adapters else None)
        assert summary is not None  # policy "adapters" returns its table
        return summary
    if method == "full" and top_blocks:
        return model.set_policy("top_blocks", top=top_blocks)
    summary = model.set_policy(method)
    if method == "frozen" and isinstance(model.item_encoder, TextItemEncoder):
        # a frozen encoder is a fixed table: computed once, never run again
        model.item_encoder = PrecomputedItemEncoder.from_encoder(model.item_encoder)
        model.invalidate_cache()
    return summary


__all__ = ["ADAPTER_METHODS", "METHODS", "apply_method"]
