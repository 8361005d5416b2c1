"""`AudioItemEncoder` over four tiny random families (wav2vec2 with GroupNorm, HuBERT with
LayerNorm and an attention mask, Whisper's encoder, AST): pooling ignores padding, the side
network's cache is exact, folders round-trip, WAV files equal arrays, bad input is refused."""

from __future__ import annotations

import copy
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_audio import FAMILIES, RATE, clips, tiny_audio
from tiny_transrec import N_ITEMS, L, batch, step

import adarec
from adarec.errors import ConfigError, DataError
from adarec.rec import AudioItemEncoder, kinds
from adarec.rec import audio_items as audio
from adarec.rec.transrec import TransRec


def encoder(family: str, n: int = N_ITEMS, **kw: object) -> AudioItemEncoder:
    model, extractor = tiny_audio(family)
    enc = AudioItemEncoder.from_audio(model, extractor, clips(n), sampling_rate=RATE, **kw)
    return enc.eval()


def vectors(enc: AudioItemEncoder, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return enc(torch.tensor(ids))


def test_registered_and_exported() -> None:
    assert "audio" in kinds() and AudioItemEncoder.kind == "audio"
    from adarec.rec.item_encoders import AudioItemEncoder as again
    assert again is AudioItemEncoder


@pytest.mark.parametrize("family", FAMILIES)
def test_a_clip_does_not_change_when_batched_with_a_longer_one(family: str) -> None:
    enc = encoder(family, chunk_size=None)
    lengths = enc.lengths.tolist()
    short, long = min(range(1, N_ITEMS + 1), key=lengths.__getitem__), int(enc.lengths.argmax())
    assert lengths[short] < lengths[long]
    alone, batched = vectors(enc, [short]), vectors(enc, [long, short, 3])
    torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=0)
    assert not torch.allclose(batched[0], alone[0], atol=1e-3)  # items do differ


@pytest.mark.parametrize("family", ["wav2vec2", "hubert"])
def test_padded_samples_are_never_read(family: str) -> None:
    """Garbage past each clip's length changes nothing: the frame mask and the attention mask
    (or one forward per clip) keep padding out."""
    enc = encoder(family, chunk_size=4)
    ids = list(range(1, N_ITEMS + 1))
    before = vectors(enc, ids)
    pad = torch.arange(enc.input_values.size(1))[None, :] >= enc.lengths[:, None]
    enc.input_values[pad] = 7.0
    torch.testing.assert_close(vectors(enc, ids), before, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_frame_mask_follows_the_model(family: str) -> None:
    enc = encoder(family)
    ids = torch.arange(1, N_ITEMS + 1)
    hidden, mask = enc._backbone(ids)
    assert mask is not None and mask.shape == hidden.shape[:2]
    if family in ("wav2vec2", "hubert", "whisper"):
        expected = enc.model._get_feat_extract_output_lengths(enc.lengths[ids])
        assert mask.sum(1).tolist() == expected.tolist()
    assert bool((mask.sum(1) < hidden.size(1)).any())  # some clips are padded


def side_model(family: str, cache: bool, states: str = "pooled") -> TransRec:
    enc = encoder(family, chunk_size=5)
    enc.cache_states = cache
    torch.manual_seed(1)
    model = TransRec(enc, user_dim=16, max_len=L, dropout=0.0, loss="sampled_softmax",
                     num_negatives=2)
    model.inject_adapters(item=adarec.AdapterSpec.preset("side", bottleneck=8,
                                                         side_states=states))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    return model


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("states", ["pooled", "tokens"])
def test_side_network_cached_equals_uncached(family: str, states: str) -> None:
    cached, direct = side_model(family, True, states), side_model(family, False, states)
    (la, ga), (lb, gb) = step(cached), step(direct)
    assert cached.item_encoder._state_cache is not None
    assert direct.item_encoder._state_cache is None
    assert la == pytest.approx(lb, abs=1e-5) and ga.keys() == gb.keys() and ga
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["houlsby", "lora"])
def test_adapters_train_inside_the_audio_model(family: str, method: str) -> None:
    torch.manual_seed(0)
    model = TransRec(encoder(family, chunk_size=6), user_dim=16, max_len=L, dropout=0.0)
    model.inject_adapters(item=method)
    before = {n: p.clone() for n, p in model.item_encoder.named_parameters()}
    loss = model.loss(batch())
    loss.backward()
    trained = [n for n, p in model.item_encoder.named_parameters() if p.grad is not None
               and p.grad.abs().sum() > 0]
    assert trained and all("adarec_adapters" in n or "norm" in n for n in trained)
    assert all(torch.equal(p, before[n]) for n, p in model.item_encoder.named_parameters())


@pytest.mark.parametrize("family", FAMILIES)
def test_save_and_load_round_trip(family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TransRec(encoder(family, chunk_size=5), user_dim=16, max_len=L, dropout=0.0)
    model.inject_adapters(item="lora")
    model.eval()
    ids = batch()["input_ids"]
    with torch.no_grad():
        scores = model.full_sort_scores(ids)
    with pytest.warns(UserWarning, match="built from a config"):
        model.save_pretrained(tmp_path / "m")
    base = adarec.eject_adapters(copy.deepcopy(model.item_encoder.model))
    back = TransRec.from_pretrained(tmp_path / "m", base=base)
    assert isinstance(back.item_encoder, AudioItemEncoder)
    assert back.item_encoder.feature_extractor is not None
    with torch.no_grad():
        assert torch.equal(back.full_sort_scores(ids), scores)
    model.save_pretrained(tmp_path / "whole", include_base=True)
    again = TransRec.from_pretrained(tmp_path / "whole")
    with torch.no_grad():
        assert torch.equal(again.full_sort_scores(ids), scores)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE, channels: int = 1) -> Path:
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_wav_files_give_the_vectors_of_their_arrays(family: str, tmp_path: Path) -> None:
    raw = clips(4)
    quantised = [np.round(np.clip(c, -1, 1) * 32767).astype(np.float32) / 32768 for c in raw]
    paths = [write_wav(tmp_path / f"{i}.wav", c) for i, c in enumerate(raw)]
    model, extractor = tiny_audio(family)
    a = AudioItemEncoder.from_audio(model, extractor, quantised, sampling_rate=RATE).eval()
    b = AudioItemEncoder.from_audio(model, extractor, paths).eval()
    assert torch.equal(a.input_values, b.input_values)
    torch.testing.assert_close(vectors(a, [1, 2, 3, 4]), vectors(b, [1, 2, 3, 4]),
                               atol=0, rtol=0)


def test_clips_at_another_rate_are_resampled(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def every_third(x: np.ndarray, src: int, dst: int) -> np.ndarray:
        calls.append((src, dst))
        return x[::3]

    monkeypatch.setattr(audio, "RESAMPLER", every_third)
    at_48k = [np.repeat(c, 3) for c in clips(3)]
    model, extractor = tiny_audio("hubert")
    a = AudioItemEncoder.from_audio(model, extractor, clips(3), sampling_rate=RATE)
    b = AudioItemEncoder.from_audio(model, extractor, at_48k, sampling_rate=48000)
    assert calls == [(48000, RATE)] * 3
    assert torch.equal(a.input_values, b.input_values)


def test_resampling_without_a_library_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audio, "RESAMPLER", None)
    with pytest.raises(ConfigError, match=r"adarec\[audio\]"):
        audio.load_audio(np.zeros(480, np.float32) + 0.1, 48000, RATE)
    assert audio.load_audio(np.ones(5), RATE, RATE).dtype == np.float32  # same rate: no library


def test_real_resampler_48k_to_16k() -> None:
    if audio.RESAMPLER is None:
        pytest.skip("neither torchaudio nor scipy is installed (pip install adarec[audio])")
    t = np.arange(48000) / 48000
    out = audio.load_audio(np.sin(2 * np.pi * 440 * t), 48000, RATE)
    ref = np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)
    assert out.shape == (RATE,) and np.abs(out[100:-100] - ref[100:-100]).max() < 1e-2


@pytest.mark.parametrize(("clip", "rate", "message"), [
    (np.zeros((2, 800), np.float32), RATE, "1-D mono"),
    (np.zeros(0, np.float32), RATE, "empty"),
    (np.ones(800, np.float32), None, "sampling_rate"),
    (np.ones(800, np.float32), 0, "positive"),
    (np.full(800, np.nan, np.float32), RATE, "NaN"),
    ("/no/such/clip.wav", None, "does not exist"),
])
def test_bad_clips_are_refused_by_name(clip: object, rate: int | None, message: str) -> None:
    model, extractor = tiny_audio("wav2vec2")
    with pytest.raises(DataError, match=message):
        AudioItemEncoder.from_audio(model, extractor, [clip], sampling_rate=rate)


def test_stereo_and_non_wav_files_are_refused(tmp_path: Path) -> None:
    stereo = write_wav(tmp_path / "s.wav", np.zeros(1600, np.float32), channels=2)
    with pytest.raises(DataError, match="2 channels"):
        audio.read_wav(stereo)
    (tmp_path / "x.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(DataError, match="not a PCM WAV"):
        audio.read_wav(tmp_path / "x.wav")


def test_unknown_model_and_bad_tables_are_refused() -> None:
    from tiny_transrec import tiny_bert
    with pytest.raises(ConfigError, match="model types"):
        AudioItemEncoder(tiny_bert(), torch.randn(3, 100), torch.tensor([1, 50, 100]))
    model, _ = tiny_audio("wav2vec2")
    with pytest.raises(DataError, match="lengths"):
        AudioItemEncoder(model, torch.randn(3, 100), torch.tensor([1, 50, 101]))
    with pytest.raises(DataError, match="from_audio"):
        AudioItemEncoder(model, torch.randn(3, 8, 100), torch.tensor([1, 50, 100]))


@pytest.mark.parametrize("family", ["wav2vec2", "whisper"])
def test_add_items_equals_building_with_every_clip(family: str) -> None:
    full = encoder(family, n=6)
    grown = encoder(family, n=4)
    grown.add_items(clips(6)[4:], sampling_rate=RATE)
    assert grown.n_items == 6
    torch.testing.assert_close(vectors(grown, [1, 5, 6]), vectors(full, [1, 5, 6]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("fusion", ["concat", "side"])
def test_audio_with_text_in_a_multimodal_encoder(fusion: str, tmp_path: Path) -> None:
    """The second encoder of `MultimodalItemEncoder` may be an audio one: it trains, its side
    network fuses with the text's, and the folder round-trips."""
    from tiny_transrec import text_items

    from adarec.rec import MultimodalItemEncoder

    torch.manual_seed(0)
    item = MultimodalItemEncoder(text_items(), encoder("hubert", chunk_size=5), fusion=fusion,
                                 **({"side_width": 8, "side_levels": 1} if fusion == "side"
                                    else {}))
    model = TransRec(item, user_dim=16, max_len=L, dropout=0.0, loss="sampled_softmax")
    model.inject_adapters(item="side" if fusion == "side" else "lora")
    loss = model.loss(batch())
    loss.backward()
    audio_grads = [n for n, p in model.named_parameters()
                   if n.startswith("item_encoder.image.") and p.grad is not None]
    assert audio_grads
    model.eval()
    ids = batch()["input_ids"]
    with torch.no_grad():
        scores = model.full_sort_scores(ids)
    model.save_pretrained(tmp_path / "m", include_base=True)
    back = TransRec.from_pretrained(tmp_path / "m")
    assert isinstance(back.item_encoder.image, AudioItemEncoder)
    with torch.no_grad():
        assert torch.equal(back.full_sort_scores(ids), scores)


def test_serving_add_items_takes_clips_with_their_rates() -> None:
    """The serving path passes clips alone: ``(array, rate)`` pairs carry the rate."""
    from adarec.rec import serving

    full = encoder("hubert", n=6)
    torch.manual_seed(0)
    model = TransRec(encoder("hubert", n=4), user_dim=16, max_len=L, dropout=0.0)
    assert serving.add_items(model, [5, 6], [(c, RATE) for c in clips(6)[4:]]) == [5, 6]
    assert model.item_encoder.n_items == 6
    torch.testing.assert_close(vectors(model.item_encoder, [5, 6]), vectors(full, [5, 6]),
                               atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="sampling_rate"):
        serving.add_items(model, [7], [clips(1)[0]])
    with pytest.raises(DataError, match="pair"):
        audio.load_audio((clips(1)[0], RATE, 1), None, RATE)


def test_transrec_add_items_takes_audio_and_refuses_two_kinds(tmp_path: Path) -> None:
    """``add_items(ids, audio=...)`` on a model and on its saved folder encode the clips as a
    table built with them does; ``inputs=`` hands anything through; two kinds are refused."""
    full = encoder("hubert", n=6)
    torch.manual_seed(0)
    model = TransRec(encoder("hubert", n=4), user_dim=16, max_len=L, dropout=0.0)
    model.set_item_map([None, *[f"c{i}" for i in range(1, 5)]])
    model.save_pretrained(tmp_path / "m", include_base=True)
    loaded = TransRec.from_pretrained(tmp_path / "m")
    new = [(c, RATE) for c in clips(6)[4:]]
    assert model.add_items(["c5", "c6"], audio=new) == [5, 6]
    assert loaded.add_items(["c5", "c6"], inputs=new) == [5, 6]
    for m in (model, loaded):
        torch.testing.assert_close(vectors(m.item_encoder, [5, 6]), vectors(full, [5, 6]),
                                   atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.item_table(), model.item_table(), atol=0, rtol=0)
    with pytest.raises(ConfigError, match="one of them"):
        model.add_items(["c7"], texts=["x"], audio=new[:1])
    with pytest.raises(ConfigError, match="one of them"):
        model.add_items(["c7"])
    with pytest.raises(ConfigError, match="tokenizer goes with texts"):
        model.add_items(["c7"], None, object(), audio=new[:1])
