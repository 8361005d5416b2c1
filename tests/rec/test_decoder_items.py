"""Decoder LLMs as TransRec item encoders: last-token pooling that does not depend on the padding
side, tokenizers without a pad token, causality, save/load, adapters inside and side networks
beside them, over tiny random decoders of several families (no hub: a local WordLevel
tokenizer)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import tokenizers
import torch
import transformers as tf
from tiny_transrec import batch

import adarec
from adarec.adapters.side import pool_hidden
from adarec.errors import ConfigError, SpecError, UnsupportedModuleError
from adarec.rec.item_encoders import TextItemEncoder
from adarec.rec.recipes import apply_method
from adarec.rec.text_items import tokenize_texts
from adarec.rec.transrec import TransRec

H, L, HEADS, FF, V = 32, 3, 4, 64, 60
COMMON = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
              vocab_size=V, max_position_embeddings=64)

DECODERS: dict[str, Callable[[], torch.nn.Module]] = {
    "gpt2": lambda: tf.GPT2Model(tf.GPT2Config(n_embd=H, n_layer=L, n_head=HEADS, n_inner=FF,
                                               vocab_size=V, n_positions=64)),
    "llama": lambda: tf.LlamaModel(tf.LlamaConfig(**COMMON, num_key_value_heads=2)),
    "qwen2": lambda: tf.Qwen2Model(tf.Qwen2Config(**COMMON, num_key_value_heads=2)),
    "mistral": lambda: tf.MistralModel(tf.MistralConfig(**COMMON, num_key_value_heads=2)),
    "phi": lambda: tf.PhiModel(tf.PhiConfig(**COMMON)),
    "gpt_neox": lambda: tf.GPTNeoXModel(tf.GPTNeoXConfig(**COMMON)),
    "opt": lambda: tf.OPTModel(tf.OPTConfig(hidden_size=H, num_hidden_layers=L,
                                            num_attention_heads=HEADS, ffn_dim=FF, vocab_size=V,
                                            max_position_embeddings=64, word_embed_proj_dim=H)),
    # ALiBi positions and attention modules without ``is_causal``: causal by its architecture
    "bloom": lambda: tf.BloomModel(tf.BloomConfig(hidden_size=H, n_layer=L, n_head=HEADS,
                                                  vocab_size=V)),
}
FAMILIES = list(DECODERS)

TEXTS = ["", "toy story", "a much longer title of a film", "heat", "the usual suspects",
         "fargo", "twelve monkeys and more", "casino", "braveheart", "apollo", "babe", "seven",
         "dead man walking"]
N_ITEMS = len(TEXTS) - 1
WORDS = sorted({w for t in TEXTS for w in t.split()} | {"clueless"})


def decoder(family: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = DECODERS[family]()
    model.config.use_cache = False
    return model.eval()


def tokenizer(side: str = "right", pad: bool = False) -> tf.PreTrainedTokenizerFast:
    """A local word-level tokenizer; like GPT-2's and Llama's it has no pad token by default."""
    vocab = {"<unk>": 0, "<eos>": 1, "<pad>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = tf.PreTrainedTokenizerFast(tokenizer_object=model, unk_token="<unk>",
                                     eos_token="<eos>", pad_token="<pad>" if pad else None)
    tok.padding_side = side
    return tok


def items(family: str, side: str = "right", **kw: object) -> TextItemEncoder:
    options: dict = {"max_length": 10, "chunk_size": 4, "cache_states": False, **kw}
    return TextItemEncoder.from_texts(decoder(family), tokenizer(side), TEXTS, **options)


def left_padded(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same rows with their padding moved to the left."""
    order = mask.sort(dim=1, stable=True).indices  # zeros (padding) first, order kept
    return ids.gather(1, order), mask.gather(1, order)


def side_spec(**extra: object) -> adarec.AdapterSpec:
    return adarec.AdapterSpec.preset("side", bottleneck=8, side_pooling="last",
                                     **{f"side_{k}": v for k, v in extra.items()})


@pytest.mark.parametrize("family", FAMILIES)
def test_last_token_pooling_is_the_default_and_ignores_the_padding_side(family: str) -> None:
    enc = items(family)
    assert enc.pooling == "last"
    ids, mask = tokenize_texts(tokenizer(), TEXTS, 10)
    lids, lmask = left_padded(ids, mask)
    assert bool((lmask[:, 0] == 0).any())  # really left-padded
    right = TextItemEncoder(decoder(family), ids, mask, chunk_size=4, cache_states=False)
    left = TextItemEncoder(decoder(family), lids, lmask, chunk_size=4, cache_states=False)
    everything = torch.arange(1, N_ITEMS + 1)
    with torch.no_grad():
        out = left(everything)
        torch.testing.assert_close(out, right(everything), atol=1e-5, rtol=0)
        torch.testing.assert_close(out, enc(everything), atol=1e-5, rtol=0)
        # each pooled vector is the state at the last real token of a plain forward
        for row in range(1, N_ITEMS + 1):
            n = int(mask[row].sum())
            plain = enc.model(input_ids=ids[row : row + 1, :n]).last_hidden_state[0, -1]
            torch.testing.assert_close(out[row - 1], plain, atol=1e-5, rtol=0)


def test_pool_hidden_last_reads_the_mask_not_position_minus_one() -> None:
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])  # right- and left-padded
    assert pool_hidden(hidden, mask, "last").flatten().tolist() == [1.0, 7.0]
    assert pool_hidden(hidden, mask, "cls").flatten().tolist() == [0.0, 5.0]
    assert pool_hidden(hidden, torch.zeros(2, 4), "last").flatten().tolist() == [0.0, 4.0]
    with pytest.raises(SpecError, match="pooling='first' is not one of"):
        pool_hidden(hidden, mask, "first")


@pytest.mark.parametrize("family", FAMILIES)
def test_a_later_token_never_changes_an_earlier_state(family: str) -> None:
    """Causality: the last-token vector of a prefix is that of the prefix alone, whatever
    follows it in a longer row."""
    model = decoder(family)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [5, 6, 7, 20, 21, 22]])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
    torch.testing.assert_close(hidden[0, :3], hidden[1, :3], atol=1e-5, rtol=0)
    assert not torch.allclose(hidden[0, 3:], hidden[1, 3:], atol=1e-4)
    enc = TextItemEncoder(model, torch.cat([ids, ids[:1, :3].repeat(1, 2)]),
                          torch.tensor([[1] * 6, [1] * 6, [1, 1, 1, 0, 0, 0]]),
                          cache_states=False)
    with torch.no_grad():
        prefix = enc(torch.tensor([2]))
    torch.testing.assert_close(prefix[0], hidden[0, 2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_give_equal_scores(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TransRec(items(family, template='This item: "{text}" means in one word:',
                           append_eos=True), user_dim=16, max_len=5, dropout=0.0)
    model.eval()
    history = batch()["input_ids"]
    expected = model.full_sort_scores(history)
    model.save_pretrained(tmp_path / "model", include_base=True)
    back = TransRec.from_pretrained(tmp_path / "model")
    back.eval()
    enc = back.item_encoder
    assert (enc.pooling, enc.template, enc.append_eos) == (
        "last", 'This item: "{text}" means in one word:', True)
    assert torch.equal(back.full_sort_scores(history), expected)
    model.item_encoder.add_texts(["seven heat"])
    enc.add_texts(["seven heat"])  # the loaded tokenizer and recorded template agree
    assert torch.equal(enc.input_ids, model.item_encoder.input_ids)


def test_tokenizer_without_pad_token_is_used_unchanged() -> None:
    tok = tokenizer()
    assert tok.pad_token is None
    enc = TextItemEncoder.from_texts(decoder("gpt2"), tok, TEXTS, max_length=6,
                                     cache_states=False)
    assert tok.pad_token is None and enc.tokenizer is tok  # the caller's object, not mutated
    ids, mask = enc.input_ids, enc.attention_mask
    assert ids[mask == 0].eq(tok.eos_token_id).all()  # padded with EOS under a zero mask
    assert mask[0].tolist() == [1, 0, 0, 0, 0, 0]  # "" (no token) became one real token
    with torch.no_grad():
        assert torch.isfinite(enc(torch.arange(0, N_ITEMS + 1))).all()
    # a tokenizer with a pad token pads with it ("" becomes that pad token)
    padded = tokenize_texts(tokenizer(pad=True), TEXTS, 6)[0]
    assert padded[mask == 0].eq(2).all() and padded[0, 0] == 2
    assert torch.equal(padded[1:][mask[1:] == 1], ids[1:][mask[1:] == 1])


def test_append_eos_survives_truncation_and_template_wraps_texts() -> None:
    tok = tokenizer()
    ids, mask = tokenize_texts(tok, ["a much longer title of a film"], 4, append_eos=True)
    assert mask.tolist() == [[1, 1, 1, 1]] and ids[0, -1] == tok.eos_token_id
    ids, _ = tokenize_texts(tok, ["heat"], 6, template="the {text} film")
    assert ids[0, :3].tolist() == tok("the heat film")["input_ids"]
    with pytest.raises(ConfigError, match="must be a string holding"):
        tokenize_texts(tok, ["heat"], 6, template="no placeholder")
    with pytest.raises(ConfigError, match="must be a string holding"):
        items("gpt2", template="no placeholder")


def test_cls_on_a_causal_model_is_refused_and_encoders_keep_cls() -> None:
    with pytest.raises(ConfigError, match="causal model: its first token has seen nothing"):
        items("llama", pooling="cls")
    assert items("llama", pooling="mean").pooling == "mean"
    bert = tf.BertModel(tf.BertConfig(vocab_size=V, hidden_size=H, num_hidden_layers=1,
                                      num_attention_heads=HEADS, intermediate_size=FF))
    enc = TextItemEncoder.from_texts(bert, tokenizer(pad=True), TEXTS, max_length=8)
    assert enc.pooling == "cls"


def test_old_folders_without_the_new_keys_load_with_the_old_behaviour() -> None:
    config = items("gpt2").to_config()
    assert config["template"] is None and config["append_eos"] is False
    old = {k: v for k, v in config.items() if k not in ("template", "append_eos")}

    class Source:
        def model(self, name: str) -> torch.nn.Module:
            return decoder("gpt2")

        def feature(self, name: str) -> torch.Tensor:
            return getattr(items("gpt2"), name)

        def preprocessor(self, name: str, cls: object) -> object:
            return tokenizer()

    back = TextItemEncoder.from_config(old, Source())  # type: ignore[arg-type]
    assert (back.template, back.append_eos, back.pooling) == (None, False, "last")


@pytest.mark.parametrize("method", ["lora", "houlsby", "ia3"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "bloom"])
def test_adapters_inside_a_decoder_item_encoder_train(family: str, method: str) -> None:
    torch.manual_seed(0)
    model = TransRec(items(family), user_dim=16, max_len=5, dropout=0.0)
    if (family, method) == ("bloom", "ia3"):  # Bloom interleaves q/k/v per head in one Linear
        with pytest.raises(UnsupportedModuleError, match="interleaved heads"):
            model.inject_adapters(item=method)
        return
    summary = model.inject_adapters(item=method)
    assert summary is not None and 0 < summary.trainable < summary.total
    params = adarec.trainable_parameters(model)
    inside = {n: p.detach().clone() for n, p in params.items()
              if n.startswith("item_encoder.model.")}
    assert inside and not any("embed" in n or "wte" in n for n in inside)
    opt = torch.optim.AdamW(params.values(), lr=1e-2)
    model.train()
    losses = []
    for _ in range(3):
        opt.zero_grad()
        loss = model.loss(batch())
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    moved = [n for n, p in params.items() if n in inside and not torch.equal(p, inside[n])]
    assert moved  # the adapters inside the decoder received gradients


@pytest.mark.parametrize("states", ["pooled", "tokens"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox", "bloom"])
def test_side_network_on_a_decoder_cached_equals_uncached(family: str, states: str) -> None:
    out = {}
    for cache in (False, True):
        torch.manual_seed(0)
        enc = items(family, cache_states=cache)
        model = TransRec(enc, user_dim=16, max_len=5, dropout=0.0)
        model.inject_adapters(item=side_spec(states=states, stride=2))
        torch.manual_seed(3)
        with torch.no_grad():
            for side in adarec.adapters.side.side_networks(enc.model, active_only=False):
                assert side.slots == [0, 2]  # every 2nd block, ending at the last
                for p in side.parameters():
                    p.add_(torch.randn_like(p) * 0.3)
        model.zero_grad()
        loss = model.loss(batch())
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        assert grads and all(not n.startswith("item_encoder.model.") or ".adarec" in n
                             or "side" in n for n in grads)
        out[cache] = (loss.item(), grads)
        assert (enc._state_cache is not None) is cache
    (la, ga), (lb, gb) = out[False], out[True]
    assert la == pytest.approx(lb, abs=1e-5)
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


def test_side_network_reads_the_last_real_token_of_each_tapped_block() -> None:
    enc = items("llama")
    adarec.inject_adapters(enc.model, side_spec(stride=1))
    side = adarec.adapters.side.side_networks(enc.model)[0]
    ids = torch.tensor([3, 1])
    with torch.no_grad():
        _, states = enc.side_encode(ids, with_states=True)
        row = enc.input_ids[3:4, : int(enc.lengths[3])]
        plain = enc.model(input_ids=row, output_hidden_states=True).hidden_states
    assert states.shape == (2, len(side.slots), H)
    for i, slot in enumerate(side.slots):  # hidden_states[slot + 1] is block slot's output
        if slot + 1 < len(plain) - 1:  # the last entry has the final norm applied
            torch.testing.assert_close(states[0, i], plain[slot + 1][0, -1], atol=1e-5, rtol=0)


def test_side_network_refuses_cls_on_a_causal_model() -> None:
    with pytest.raises(UnsupportedModuleError, match="side_pooling='cls' would read an empty"):
        adarec.inject_adapters(decoder("gpt2"), adarec.AdapterSpec.preset("side", bottleneck=8))
    adarec.inject_adapters(copy.deepcopy(decoder("gpt2")), side_spec())  # 'last' is fine


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_frozen_layer_cache_on_a_decoder_matches_the_plain_forward(family: str) -> None:
    """The quickstart encodes with ``cache_frozen_layers=True``: on a decoder (rotary or learnt
    positions) the cached path gives the plain forward's vectors, without falling back."""
    enc = items(family, cache_frozen_layers=True)
    adarec.inject_adapters(enc.model, adarec.AdapterSpec.preset("lora", layers=(2,)))
    adarec.mark_only_adapters_trainable(enc.model)
    everything = torch.arange(1, N_ITEMS + 1)
    with torch.no_grad():
        cached = enc(everything)
        assert enc.cache_frozen_layers and enc._prefix is not None
        enc.cache_frozen_layers = False
        torch.testing.assert_close(cached, enc(everything), atol=1e-5, rtol=0)


def test_the_docs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    text = (Path(__file__).parents[2] / "docs" / "transrec.md").read_text()
    start = text.index("## Decoder LLM as item encoder\n")
    end = text.find("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", text[start:end], re.S)
    assert len(blocks) == 1
    exec(compile(blocks[0], "docs/transrec.md", "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out.split() == ["torch.Size([1,", "6])", "torch.float32"]


def test_the_side_recipe_on_a_decoder_reads_the_last_token() -> None:
    """`apply_method(model, "side")` (the quickstart's default) works on a decoder item encoder:
    its side network takes the item encoder's last-token pooling."""
    torch.manual_seed(0)
    model = TransRec(items("qwen2"), user_dim=16, max_len=5, dropout=0.0)
    apply_method(model, "side")
    (side,) = adarec.adapters.side.side_networks(model.item_encoder.model)
    assert side.options.pooling == "last"
    model.loss(batch()).backward()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gradient_checkpointing_and_bf16_autocast_run_and_agree(family: str) -> None:
    """Hugging Face gradient checkpointing passes through (same loss and LoRA gradients), and
    a bf16-autocast step is close to the float32 one."""
    def step(checkpointing: bool, bf16: bool) -> tuple[float, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        model = TransRec(items(family), user_dim=16, max_len=5, dropout=0.0)
        model.inject_adapters(item="lora")
        if checkpointing:
            model.item_encoder.model.gradient_checkpointing_enable()
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(batch())
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                             if p.grad is not None and "lora" in n}

    plain, ckpt, bf16 = step(False, False), step(True, False), step(False, True)
    assert plain[1] and plain[1].keys() == ckpt[1].keys()
    assert ckpt[0] == pytest.approx(plain[0], abs=1e-6)
    for n in plain[1]:
        torch.testing.assert_close(ckpt[1][n], plain[1][n], atol=1e-6, rtol=1e-5, msg=n)
    assert bf16[0] == pytest.approx(plain[0], rel=5e-2)


@pytest.mark.parametrize("method", sorted(adarec.spec.METHODS))
def test_bf16_weights_item_encoder_trains_every_method(method: str) -> None:
    """An item encoder loaded in bf16 (``dtype=resolve_precision("auto")`` on hardware that
    computes it natively) trains with every method: its vectors reach the DTL in the
    recommender's float32, the adapters take the encoder's dtype and receive gradients, and the
    loss stays close to the float32 model's (same weights)."""
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        torch.manual_seed(0)
        enc = TextItemEncoder.from_texts(decoder("llama").to(dtype), tokenizer(), TEXTS,
                                         max_length=10, chunk_size=4, cache_states=False)
        model = TransRec(enc, user_dim=16, max_len=5, dropout=0.0)
        spec = side_spec() if method == "side" else adarec.AdapterSpec.preset(method)
        model.inject_adapters(item=spec)
        inside = {n: p for n, p in model.named_parameters()
                  if p.requires_grad and n.startswith("item_encoder.")}
        assert inside and {p.dtype for p in inside.values()} == {dtype}
        assert model.dtl[0].weight.dtype == torch.float32
        loss = model.loss(batch())
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in inside.values())
        with torch.no_grad():
            assert model.item_table().dtype == torch.float32
        losses[dtype] = loss.item()
    assert losses[torch.bfloat16] == pytest.approx(losses[torch.float32], rel=5e-2)
