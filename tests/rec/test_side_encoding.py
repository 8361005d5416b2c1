"""Side networks inside item encoders and TransRec: the hidden-state cache is exact, follows the
backbone, stays in bounded memory; the backbone never trains and, cached, never runs."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import transformers as tf
from tiny_transrec import N_ITEMS, batch, step, text_items

import adarec
from adarec.adapters.side import side_networks
from adarec.errors import AdapterStateError
from adarec.rec.item_encoders import ImageItemEncoder, MultimodalItemEncoder, TextItemEncoder
from adarec.rec.state_cache import state_cache_bytes
from adarec.rec.transrec import TransRec

L = 5


def side_spec(**extra: object) -> adarec.AdapterSpec:
    return adarec.AdapterSpec.preset("side", bottleneck=8,
                                     **{f"side_{k}": v for k, v in extra.items()})


def perturb(model: torch.nn.Module) -> None:
    torch.manual_seed(3)
    with torch.no_grad():
        for side in side_networks(model, active_only=False):
            for p in side.parameters():
                p.add_(torch.randn_like(p) * 0.3)


def tiny_vit() -> tf.ViTModel:
    torch.manual_seed(0)
    return tf.ViTModel(tf.ViTConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=48, image_size=16, patch_size=8,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def images(n: int = N_ITEMS + 1) -> torch.Tensor:
    """Generated images: coloured squares at item-specific positions, plus noise."""
    g = torch.Generator().manual_seed(0)
    px = torch.randn(n, 3, 16, 16, generator=g) * 0.1
    for i in range(n):
        px[i, i % 3, (i % 4) * 4 : (i % 4) * 4 + 4, (i // 4 % 4) * 4 : (i // 4 % 4) * 4 + 4] += 1
    return px


def model_with_side(cache: bool, seed: int = 0, encoder: str = "text", **kw: object) -> TransRec:
    torch.manual_seed(seed)
    if encoder == "text":
        item = text_items(seed)
    elif encoder == "image":
        item = ImageItemEncoder(tiny_vit(), images(), chunk_size=5)
    else:
        item = MultimodalItemEncoder(text_items(seed), ImageItemEncoder(tiny_vit(), images(),
                                                                        chunk_size=5),
                                     fusion="side", side_width=8, side_levels=1)
    for part in (item.text, item.image) if encoder == "multimodal" else (item,):
        part.cache_states = cache
    options = kw.pop("side", {})
    model = TransRec(item, user_dim=16, max_len=L, dropout=0.0, **kw)
    model.inject_adapters(item=side_spec(**options))
    perturb(model)
    return model


def assert_same_step(a: TransRec, b: TransRec) -> None:
    (la, ga), (lb, gb) = step(a), step(b)
    assert ga.keys() == gb.keys() and ga
    assert la == pytest.approx(lb, abs=1e-6)
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-6, rtol=1e-5, msg=n)


@pytest.mark.parametrize(("objective", "loss"),
                         list(itertools.product(("sasrec", "cpc"),
                                                ("bce", "sampled_softmax", "full_softmax"))))
@pytest.mark.parametrize("states", ["pooled", "tokens"])
def test_cache_gives_the_same_loss_and_gradients(objective: str, loss: str, states: str) -> None:
    kw = dict(objective=objective, loss=loss, num_negatives=2, side={"states": states})
    cached, direct = model_with_side(True, **kw), model_with_side(False, **kw)
    assert_same_step(cached, direct)
    assert cached.item_encoder._state_cache is not None
    assert direct.item_encoder._state_cache is None


@pytest.mark.parametrize("encoder", ["image", "multimodal"])
def test_cache_exact_for_images_and_multimodal(encoder: str) -> None:
    kw = dict(loss="sampled_softmax", num_negatives=1)
    assert_same_step(model_with_side(True, encoder=encoder, **kw),
                     model_with_side(False, encoder=encoder, **kw))


def test_dedup_changes_nothing() -> None:
    a, b = model_with_side(True, loss="sampled_softmax"), model_with_side(True,
                                                                        loss="sampled_softmax")
    b.dedup = False
    assert_same_step(a, b)


def test_only_the_side_network_trains_and_the_backbone_never_runs_once_cached() -> None:
    model = model_with_side(True, loss="sampled_softmax", num_negatives=1)
    hf = model.item_encoder.model
    side = {id(p) for p in side_networks(hf)[0].parameters()}
    trainable = {n for n, p in hf.named_parameters() if p.requires_grad}
    assert trainable and all(id(p) in side for p in hf.parameters() if p.requires_grad)
    assert not any("LayerNorm" in n for n in trainable)  # no backbone norm unfrozen
    calls = []
    hf.embeddings.register_forward_pre_hook(lambda *a: calls.append(1))
    step(model)
    built = len(calls)
    assert built > 0  # the cache build (plus its self-check)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        step(model)
        opt.step()
    model.eval()
    model.item_table()
    model.full_sort_scores(batch()["input_ids"])
    assert len(calls) == built
    frozen = {n: p.clone() for n, p in hf.named_parameters() if id(p) not in side}
    assert all(torch.equal(p, frozen[n]) for n, p in hf.named_parameters() if n in frozen)


def test_backbone_in_eval_mode_and_without_autograd_when_uncached() -> None:
    """Dropout in the frozen backbone would make uncached states random (and unlike the cache):
    the backbone runs in eval mode; a training backbone is refused."""
    model = model_with_side(False, loss="sampled_softmax")
    model.item_encoder.model.config.hidden_dropout_prob = 0.5
    for m in model.item_encoder.model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    model.train()
    items = torch.arange(1, N_ITEMS + 1)
    torch.testing.assert_close(model.item_encoder(items), model.item_encoder(items))
    model.set_policy("full")
    with pytest.raises(AdapterStateError, match="frozen backbone"):
        model.loss(batch())


def test_cache_follows_the_backbone() -> None:
    model = model_with_side(True, loss="sampled_softmax")
    enc: TextItemEncoder = model.item_encoder
    items = torch.arange(N_ITEMS + 1)
    model.eval()
    with torch.no_grad():
        before = enc(items)
        first = enc._state_cache
        assert first is not None
        torch.testing.assert_close(enc(items), before, atol=0, rtol=0)
        assert enc._state_cache is first  # reused while nothing changed
        enc.model.encoder.layer[0].output.dense.weight.mul_(1.5)  # a frozen weight, in place
        changed = enc(items)
    assert enc._state_cache is not first
    ref = model_with_side(False, loss="sampled_softmax")
    ref.load_state_dict(model.state_dict())
    ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(changed, ref.item_encoder(items), atol=1e-5, rtol=1e-4)
        second = enc._state_cache
        enc.input_ids[3, 1] = 42  # new item text
        enc(items)
        assert enc._state_cache is not second
        third = enc._state_cache
        enc.model.load_state_dict(enc.model.state_dict())  # copies into the same tensors
        enc(items)
        assert enc._state_cache is not third
    adarec.eject_adapters(enc.model)
    torch.testing.assert_close(enc(items), TextItemEncoder(
        enc.model, enc.input_ids, enc.attention_mask, chunk_size=5)(items))


def test_other_adapter_sets_are_part_of_the_key() -> None:
    model = model_with_side(True, loss="sampled_softmax")
    enc = model.item_encoder
    adarec.inject_adapters(enc.model, "houlsby", "h", freeze=False, activate=False)
    for p in adarec.adapter_parameters(enc.model, "h").values():
        torch.nn.init.normal_(p, std=0.5)
        p.requires_grad_(False)
    items = torch.arange(N_ITEMS + 1)
    with torch.no_grad():
        a = enc(items)
        adarec.set_active_adapters(enc.model, ["default", "h"])
        b = enc(items)
    assert not torch.allclose(a, b)
    direct = model_with_side(False, loss="sampled_softmax")
    adarec.inject_adapters(direct.item_encoder.model, "houlsby", "h", freeze=False)
    for p in adarec.adapter_parameters(direct.item_encoder.model, "h").values():
        p.requires_grad_(False)
    direct.load_state_dict(model.state_dict())
    adarec.set_active_adapters(direct.item_encoder.model, ["default", "h"])
    with torch.no_grad():
        torch.testing.assert_close(b, direct.item_encoder(items), atol=1e-5, rtol=1e-4)


def test_bf16_and_memory_mapped_caches(tmp_path: torch.types.FileLike) -> None:
    items = torch.arange(N_ITEMS + 1)
    ref = model_with_side(True, loss="sampled_softmax")
    with torch.no_grad():
        exact = ref.item_encoder(items)
    table = ref.item_encoder._state_cache.table
    assert table.numel() * 4 == state_cache_bytes(N_ITEMS + 1, 1, 32)
    half = model_with_side(True, loss="sampled_softmax")
    half.item_encoder.cache_dtype = torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(half.item_encoder(items), exact, atol=5e-2, rtol=5e-2)
    assert half.item_encoder._state_cache.nbytes * 2 == ref.item_encoder._state_cache.nbytes
    disk = model_with_side(True, loss="sampled_softmax")
    disk.item_encoder.cache_dir = str(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(disk.item_encoder(items), exact, atol=0, rtol=0)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].stat().st_size == ref.item_encoder._state_cache.nbytes
    disk.item_encoder.invalidate_state_cache()
    import gc

    gc.collect()
    assert not list(tmp_path.iterdir())


def test_multimodal_side_fusion_trains_both_side_networks_and_the_inter_modal_stream() -> None:
    model = model_with_side(True, encoder="multimodal", loss="sampled_softmax")
    item = model.item_encoder
    assert item.dim == 32 + 24 + 8
    assert len(side_networks(item.text.model)) == len(side_networks(item.image.model)) == 1
    assert all(p.requires_grad for p in item.inter.parameters())
    _, grads = step(model)
    for prefix in ("item_encoder.inter.", "item_encoder.text.model.adarec_adapters.",
                   "item_encoder.image.model.adarec_adapters."):
        assert any(n.startswith(prefix) and g.abs().sum() > 0 for n, g in grads.items()), prefix
    adarec.eject_adapters(item.image.model)
    with pytest.raises(AdapterStateError, match="image encoder"):
        model.loss(batch())


def test_save_and_load_adapters_round_trip(tmp_path: torch.types.FileLike) -> None:
    model = model_with_side(True, loss="sampled_softmax")
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    step(model)
    opt.step()
    adarec.save_adapters(model, tmp_path / "ckpt")
    torch.manual_seed(0)
    fresh = TransRec(text_items(0), user_dim=16, max_len=L, dropout=0.0, loss="sampled_softmax")
    adarec.load_adapters(fresh, tmp_path / "ckpt")
    fresh.set_policy("adapters")
    assert_same_step(fresh, model)
    model.eval()
    fresh.eval()
    ids = batch()["input_ids"]
    torch.testing.assert_close(fresh.full_sort_scores(ids), model.full_sort_scores(ids),
                               atol=0, rtol=0)
    assert fresh.item_encoder._state_cache is not None


def test_save_pretrained_round_trip(tmp_path: torch.types.FileLike) -> None:
    """The self-describing checkpoint rebuilds the side set and the cache setting."""
    model = model_with_side(False, loss="sampled_softmax")
    model.eval()
    ids = batch()["input_ids"]
    model.save_pretrained(tmp_path / "model")
    base = adarec.eject_adapters(copy.deepcopy(model.item_encoder.model))
    back = TransRec.from_pretrained(tmp_path / "model", base=base)
    back.eval()
    assert back.item_encoder.cache_states is False
    assert [s.set_name for s in side_networks(back.item_encoder.model)] == ["default"]
    torch.testing.assert_close(back.full_sort_scores(ids), model.full_sort_scores(ids),
                               atol=0, rtol=0)


@pytest.mark.parametrize("encoder", ["text", "image", "multimodal"])
def test_invalidate_cache_drops_the_hidden_state_cache_after_data_writes(encoder: str) -> None:
    """The documented call after a ``.data`` write dropped the item table and the prefix cache
    but not the side network's hidden-state cache: the old states kept being served."""
    model = model_with_side(True, encoder=encoder, loss="sampled_softmax")
    model.eval()
    before = model.item_table().clone()
    backbones = [m for m in model.item_encoder.modules() if isinstance(m, tf.PreTrainedModel)]
    for hf in backbones:  # a write no version counter sees
        for p in hf.parameters():
            p.data.mul_(1.5)
    model.invalidate_cache()
    after = model.item_table()
    ref = model_with_side(False, encoder=encoder, loss="sampled_softmax")
    ref.load_state_dict(model.state_dict())
    ref.eval()
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, ref.item_table(), atol=1e-5, rtol=1e-4)
