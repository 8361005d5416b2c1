"""adarec/hooks.py is the one module touching torch's private hook dictionaries: this test pins
their names and meaning, so a torch release that changes them fails here, loudly, instead of
leaving hooks behind after eject."""

from __future__ import annotations

import copy

import torch
from torch import nn

from adarec import hooks


def test_torch_keeps_hooks_where_adarec_removes_them() -> None:
    module = nn.Linear(2, 2)
    private = {n for n in vars(module) if n.startswith("_forward") and "hook" in n}
    assert private == set(hooks.FORWARD_DICTS) | set(hooks.PRE_DICTS), (
        "torch changed nn.Module's forward-hook dictionaries; update adarec/hooks.py"
    )

    def fwd(m, a, k, out):
        return out

    def pre(m, a, k):
        return None

    module.register_forward_hook(fwd, with_kwargs=True, always_call=True)
    module.register_forward_pre_hook(pre, with_kwargs=True)
    for name in (*hooks.FORWARD_DICTS, *hooks.PRE_DICTS):
        assert len(getattr(module, name)) == 1, f"torch no longer records hooks in {name}"
    assert list(hooks.iter_hooks(module)) == [fwd, pre]

    twin = copy.deepcopy(module)  # what a RemovableHandle cannot follow
    assert hooks.remove_hooks(twin, lambda fn: True) == 2
    for name in (*hooks.FORWARD_DICTS, *hooks.PRE_DICTS):
        assert len(getattr(twin, name)) == 0, name
        assert len(getattr(module, name)) == 1, name  # the original keeps its own
    twin(torch.ones(1, 2))  # and still runs
