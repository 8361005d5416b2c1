from __future__ import annotations

import pytest
import torch

from adarec import adapter_parameters, eject_adapters, inject_adapters
from adarec.rec.user_encoders import SASRec, attention_mask

D, L = 16, 6


def model(dropout: float = 0.0, **kw: object) -> SASRec:
    torch.manual_seed(0)
    return SASRec(D, n_layers=2, n_heads=2, max_len=8, dropout=dropout, **kw).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, L, D, generator=g)
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1] * L, [0] * L], dtype=torch.bool)
    return x, mask


def test_shapes_no_nan_and_zero_padding() -> None:
    m = model()
    x, mask = batch()
    x.requires_grad_(True)
    out = m(x, mask)
    assert out.shape == (3, L, D)
    assert torch.isfinite(out).all()
    assert (out[~mask] == 0).all()
    out[mask].sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_every_query_row_has_a_key() -> None:
    _, mask = batch()
    am = attention_mask(mask)
    assert am.shape == (3, 1, L, L)
    assert am.any(-1).all()
    assert not am[0, 0, 3, 4]  # causal
    assert not am[0, 0, 3, 1]  # padded key


def test_causal() -> None:
    m = model()
    x, mask = batch()
    y = x.clone()
    y[:, 4:] = torch.randn(3, 2, D)
    a, b = m(x, mask), m(y, mask)
    torch.testing.assert_close(a[:, :4], b[:, :4])
    assert not torch.allclose(a[1, 4:], b[1, 4:])


def test_padding_values_do_not_matter() -> None:
    m = model()
    x, mask = batch()
    y = x.clone()
    y[~mask] = 1e3 * torch.randn(int((~mask).sum()), D)
    torch.testing.assert_close(m(x, mask), m(y, mask))


def test_left_padding_width_does_not_matter() -> None:
    """Positions count back from the newest item, so extra left padding changes nothing."""
    m = model()
    x = torch.randn(1, 4, D)
    short = m(x, torch.ones(1, 4, dtype=torch.bool))
    padded = torch.cat([torch.randn(1, 3, D), x], 1)
    long = m(padded, torch.tensor([[0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool))
    torch.testing.assert_close(long[:, 3:], short)


def test_too_long_raises() -> None:
    with pytest.raises(ValueError, match="max_len"):
        model()(torch.randn(1, 9, D), torch.ones(1, 9, dtype=torch.bool))


@pytest.mark.parametrize("method", ["houlsby", "pfeiffer", "lora"])
def test_adapters_identity_and_only_adapters_train(method: str) -> None:
    m = model()
    x, mask = batch()
    before = m(x, mask)
    spec = {"method": method, "bottleneck": 4} if method != "lora" else "lora"
    inject_adapters(m, spec)
    names = set(adapter_parameters(m))
    assert names and all("blocks." in n for n in names)
    torch.testing.assert_close(m(x, mask), before)  # zero-initialised: identity

    m.train()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in adapter_parameters(m).values()}
    snapshot = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    for _ in range(3):
        loss = m(x, mask)[mask].pow(2).mean() - m(x, mask)[mask].sum() * 0.1
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in m.named_parameters() if not torch.equal(p, snapshot[n])}
    assert changed and changed <= names
    eject_adapters(m)
    m.eval()
    torch.testing.assert_close(m(x, mask), before)


def test_kadapter_in_sasrec_is_causal_by_default() -> None:
    import adarec
    from adarec.rec import SASRec

    torch.manual_seed(0)
    model = SASRec(16, n_layers=2, n_heads=2, max_len=8, dropout=0.0).eval()
    adarec.inject_adapters(model, adarec.AdapterSpec.preset("kadapter", bottleneck=8))
    with torch.no_grad():
        for p in adarec.adapter_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, 6, 16)
    mask = torch.ones(2, 6, dtype=torch.bool)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 16)  # change the items after position 3
    out_x, out_y = model(x, mask), model(y, mask)
    torch.testing.assert_close(out_x[:, :4], out_y[:, :4])
    assert not torch.allclose(out_x[:, 4:], out_y[:, 4:])
