"""torch.compile on TransRec with adapters in the item encoder.

TransRec's loss is full of data-dependent shapes (``torch.unique`` for dedup, boolean-mask
indexing, per-chunk trimming via ``int(lengths.max())``), so dynamo splits it into ~15 graphs
at those breaks; what must hold is that the compiled pieces compute what eager does. The default
inductor backend compiles this tiny model in 25-35 s on a shared 2-core CPU with a cold cache
(~10 s warm): under the 40 s at which this test would switch to ``backend="aot_eager"``.
"""

from __future__ import annotations

import torch
from tiny_transrec import batch, text_model

import adarec


def test_compiled_transrec_with_adapters_matches_eager() -> None:
    model = text_model()
    model.inject_adapters(item="houlsby")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move the adapters off their near-identity init so they matter
        for p in adarec.adapter_parameters(model.item_encoder).values():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    model.eval()
    b = batch()
    torch._dynamo.reset()
    try:
        with torch.no_grad():
            ref = model(b)
            got = torch.compile(model)(b)
    finally:
        torch._dynamo.reset()
    assert torch.isfinite(ref)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
