from __future__ import annotations

import warnings

import pytest
import torch
import transformers as tf

from adarec import AdapterSpec, inject_adapters
from adarec.rec.item_encoders import (
    IDItemEncoder,
    ImageItemEncoder,
    MultimodalItemEncoder,
    PrecomputedItemEncoder,
    TextItemEncoder,
)

H = 32


def tiny_bert(vocab: int = 99) -> tf.BertModel:
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=vocab, hidden_size=H, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return tf.BertModel(cfg).eval()


def token_table(n_items: int = 9, width: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, width + 1, (n_items + 1,), generator=g)
    lengths[0] = 2
    ids = torch.randint(5, 99, (n_items + 1, width), generator=g)
    mask = (torch.arange(width) < lengths[:, None]).long()
    return ids * mask, mask


def text_encoder(**kw: object) -> TextItemEncoder:
    ids, mask = token_table()
    return TextItemEncoder(tiny_bert(), ids, mask, **kw)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_text_trimming_and_chunking_do_not_change_outputs(pooling: str) -> None:
    enc = text_encoder(pooling=pooling, chunk_size=3)
    items = torch.tensor([3, 1, 7, 7, 2, 9, 0])
    out = enc(items)
    assert out.shape == (7, H) and enc.dim == H and enc.n_items == 9
    with torch.no_grad():
        hidden = enc.model(input_ids=enc.input_ids[items],
                           attention_mask=enc.attention_mask[items]).last_hidden_state
    m = enc.attention_mask[items].unsqueeze(-1).float()
    ref = hidden[:, 0] if pooling == "cls" else (hidden * m).sum(1) / m.sum(1)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    assert enc(torch.tensor([], dtype=torch.long)).shape == (0, H)


def test_features_are_buffers_not_state() -> None:
    enc = text_encoder()
    buffers = dict(enc.named_buffers())
    assert {"input_ids", "attention_mask"} <= set(buffers)
    assert not any(k in enc.state_dict() for k in ("input_ids", "attention_mask", "lengths"))


def test_from_texts() -> None:
    class Tok:
        def __call__(self, texts: list[str], **kw: object) -> dict[str, torch.Tensor]:
            n = kw["max_length"]
            ids = torch.zeros(len(texts), n, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, t in enumerate(texts):
                toks = [2, *[5 + len(w) for w in t.split()][: n - 2], 3]
                ids[i, : len(toks)], mask[i, : len(toks)] = torch.tensor(toks), 1
            return {"input_ids": ids, "attention_mask": mask}

    enc = TextItemEncoder.from_texts(tiny_bert(), Tok(), ["", "a b", "ccc dd e"], max_length=6)
    assert enc.input_ids.shape == (3, 6) and enc(torch.tensor([1, 2])).shape == (2, H)


def test_frozen_layer_cache_matches_plain_forward() -> None:
    plain, cached = text_encoder(chunk_size=4), text_encoder(chunk_size=4,
                                                              cache_frozen_layers=True)
    for enc in (plain, cached):
        inject_adapters(enc.model, AdapterSpec(method="houlsby", bottleneck=4, layers=(-1,)))
        torch.manual_seed(1)
        for p in enc.parameters():
            if p.requires_grad:  # non-zero adapters, so the check is not trivial
                torch.nn.init.normal_(p, std=0.2)
    split = cached._split()
    assert split is not None and split[1] == 1
    items = torch.tensor([4, 2, 2, 8, 1, 6])
    a, b = plain(items), cached(items)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    a.square().sum().backward()
    b.square().sum().backward()
    for (n, p), q in zip(plain.named_parameters(), cached.parameters(), strict=True):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=n)
    assert cached.cache_frozen_layers and cached._prefix is not None


def _cached_pair(**kw: object) -> tuple[TextItemEncoder, TextItemEncoder]:
    plain, cached = text_encoder(), text_encoder(cache_frozen_layers=True, **kw)
    for enc in (plain, cached):
        inject_adapters(enc.model, AdapterSpec(method="houlsby", bottleneck=4, layers=(-1,)))
        torch.manual_seed(1)
        for p in enc.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.2)
    return plain, cached


def test_frozen_layer_cache_rebuilt_when_frozen_weights_change() -> None:
    """An in-place edit of a cached (frozen) weight must not leave stale hidden states."""
    plain, cached = _cached_pair()
    items = torch.tensor([3, 5, 1])
    torch.testing.assert_close(plain(items), cached(items), atol=1e-5, rtol=1e-4)
    old = cached._prefix
    with torch.no_grad():
        for enc in (plain, cached):
            enc.model.encoder.layer[0].output.dense.weight.mul_(1.5)
    torch.testing.assert_close(plain(items), cached(items), atol=1e-5, rtol=1e-4)
    assert cached._prefix is not old  # rebuilt, not reused
    # unfreezing a cached block moves the cache boundary down to it (here: nothing cached)
    for enc in (plain, cached):
        enc.model.encoder.layer[0].output.dense.weight.requires_grad_(True)
    torch.testing.assert_close(plain(items), cached(items), atol=1e-5, rtol=1e-4)
    assert cached._split() is None


def test_frozen_layer_cache_is_used_under_bf16_autocast() -> None:
    """Regression: the cache was built under the caller's bf16 autocast and its self-check
    compared two bf16 paths at float32 tolerance; on MiniLM the check failed and switched the
    cache off with a warning, so top-block adapters silently ran the whole encoder. The cache is
    now built and checked in float32 whatever the autocast: the same states as without it."""
    plain, under_autocast = _cached_pair()
    _, without = _cached_pair()
    items = torch.tensor([3, 5, 1, 8])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "does not reproduce the plain forward pass" would raise
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got, want = under_autocast(items), plain(items)
        without(items)
    assert under_autocast.cache_frozen_layers and under_autocast._prefix is not None
    assert under_autocast._prefix.dtype == torch.float32
    assert torch.equal(under_autocast._prefix, without._prefix)
    torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=5e-2)


def test_frozen_layer_cache_in_bf16_halves_memory_and_stays_close() -> None:
    plain, cached = _cached_pair(cache_dtype=torch.bfloat16)
    items = torch.tensor([4, 2, 8, 1])
    a, b = plain(items), cached(items)
    assert cached._prefix is not None and cached._prefix.dtype == torch.bfloat16
    assert b.dtype == a.dtype == torch.float32
    torch.testing.assert_close(b, a, atol=0.05, rtol=0.02)
    assert not torch.equal(a, b)  # rounded: not the exact cache
    b.square().sum().backward()
    assert all(p.grad is not None for p in cached.parameters() if p.requires_grad)


@pytest.mark.parametrize("taps", [(0, -1), (1, -1)])
def test_frozen_layer_cache_starts_below_kadapter_taps(taps: tuple[int, ...]) -> None:
    """K-Adapter lives on the last block but reads earlier blocks' outputs: the cache must
    start at the lowest tapped block (here block 0: nothing to cache; block 1: cache block 0),
    with no fallback warning and the plain model's outputs."""
    import warnings

    plain, cached = text_encoder(), text_encoder(cache_frozen_layers=True)
    for enc in (plain, cached):
        spec = AdapterSpec(method="kadapter", bottleneck=8, kadapter_layers=taps,
                           kadapter_heads=2)
        inject_adapters(enc.model, spec)
        torch.manual_seed(1)
        for p in enc.parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.2)
    split = cached._split()
    assert (split is None) if taps[0] == 0 else (split is not None and split[1] == 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = torch.tensor([4, 2, 8])
        torch.testing.assert_close(plain(items), cached(items), atol=1e-5, rtol=1e-4)
    assert cached.cache_frozen_layers


def test_frozen_layer_cache_off_when_everything_trains() -> None:
    enc = text_encoder(cache_frozen_layers=True)
    assert enc._split() is None  # nothing frozen: no cache
    enc(torch.tensor([1, 2]))
    assert enc._prefix is None


def tiny_vit(mae: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    kw = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
              image_size=16, patch_size=8)
    if mae:
        return tf.ViTMAEModel(tf.ViTMAEConfig(**kw, mask_ratio=0.75)).eval()
    return tf.ViTModel(tf.ViTConfig(**kw)).eval()


@pytest.mark.parametrize("mae", [False, True])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_image_encoder_deterministic(mae: bool, pooling: str) -> None:
    pixels = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    enc = ImageItemEncoder(tiny_vit(mae), pixels, pooling=pooling, chunk_size=2)
    items = torch.tensor([1, 5, 2])
    a, b = enc(items), enc(items)
    assert a.shape == (3, H) and enc.n_items == 5
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    if mae:
        assert enc.model.config.mask_ratio == 0.0
        hidden = enc.model(pixel_values=pixels[:1], noise=torch.arange(4.0)[None])
        assert hidden.last_hidden_state.shape[1] == 5  # CLS + all 4 patches kept
    torch.testing.assert_close(enc(torch.tensor([2])), a[2:3])


def test_id_precomputed_multimodal() -> None:
    ids = IDItemEncoder(5, 8)
    assert (ids(torch.tensor([0])) == 0).all() and ids.n_items == 5 and not ids.transferable
    table = torch.randn(6, 4)
    pre = PrecomputedItemEncoder(table)
    torch.testing.assert_close(pre(torch.tensor([3, 1])), table[[3, 1]])
    assert not list(pre.parameters()) and "table" not in pre.state_dict()
    assert list(PrecomputedItemEncoder(table, trainable=True).parameters())
    enc = text_encoder()
    frozen = PrecomputedItemEncoder.from_encoder(enc, batch_size=4)
    torch.testing.assert_close(frozen(torch.tensor([2, 5])), enc(torch.tensor([2, 5])),
                               atol=1e-5, rtol=1e-4)

    txt = PrecomputedItemEncoder(torch.randn(6, 4))
    img = PrecomputedItemEncoder(torch.randn(6, 4))
    items = torch.tensor([1, 2])
    assert MultimodalItemEncoder(txt, img).dim == 8
    assert MultimodalItemEncoder(txt, img)(items).shape == (2, 8)
    torch.testing.assert_close(MultimodalItemEncoder(txt, img, "mean")(items),
                               (txt(items) + img(items)) / 2)
    with pytest.raises(ValueError, match="equal widths"):
        MultimodalItemEncoder(txt, PrecomputedItemEncoder(torch.randn(6, 3)), "sum")
    with pytest.raises(ValueError, match="items"):
        MultimodalItemEncoder(txt, PrecomputedItemEncoder(torch.randn(7, 4)))
