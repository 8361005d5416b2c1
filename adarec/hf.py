"""Hugging Face ``save_pretrained`` and adarec adapters.

``save_pretrained`` writes every tensor of ``state_dict()``, adapters included, but
``from_pretrained`` builds the model without adapters and drops those tensors with only a log
line: the adapters would be lost without an error. So, once adarec has injected adapters
anywhere, ``PreTrainedModel.save_pretrained`` refuses a model that holds adapter sets and names
the calls that keep them: `adarec.save_adapters` next to the saved base model (loaded back with
`adarec.load_adapters` after ``from_pretrained``), or, for a plain model, `eject_adapters` or
``merge_adapters(model, unload=True)`` first. Models without adapters save as before.
"""

from __future__ import annotations

import functools
from typing import Any

from .errors import AdapterStateError
from .sets import adapter_sets

_GUARD = "_adarec_guarded"


def guard_save_pretrained() -> None:
    """Wrap ``transformers.PreTrainedModel.save_pretrained`` once (idempotent)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:  # pragma: no cover - transformers is a dependency
        return
    original = PreTrainedModel.save_pretrained
    if getattr(original, _GUARD, False):
        return

    @functools.wraps(original)
    def save_pretrained(self: Any, *args: Any, **kwargs: Any) -> Any:
        sets = list(adapter_sets(self))
        if sets:
            raise AdapterStateError(
                f"{type(self).__name__} holds adarec adapter set(s) {sets}: save_pretrained would "
                "write them as extra weights that from_pretrained drops with only a log line. "
                "Save them with adarec.save_adapters(model, path) and, after from_pretrained, "
                "load them with adarec.load_adapters(model, path); for a plain model, "
                "adarec.eject_adapters(model) (or adarec.merge_adapters(model, unload=True) for "
                "mergeable sets) before save_pretrained"
            )
        return original(self, *args, **kwargs)

    setattr(save_pretrained, _GUARD, True)
    PreTrainedModel.save_pretrained = save_pretrained  # type: ignore[method-assign]
