"""`AudioItemEncoder`: a Hugging Face audio encoder (wav2vec2, HuBERT, Whisper's encoder, AST)
over a table of preprocessed clips, with side networks over cached hidden states
(`adarec.rec.side_encoding`).

Clips are given as 1-D arrays (numpy or torch) with their sample rate, or as paths of PCM WAV
files (read with the standard library's `wave`); a clip at another rate than the feature
extractor's is resampled with torchaudio or scipy (``pip install adarec[audio]``).
"""

from __future__ import annotations

import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import transformers
from torch import Tensor, nn

from adarec.errors import ConfigError, DataError
from adarec.rec.data import refuse_identical_items
from adarec.rec.item_encoder import (
    ItemEncoderBase,
    check_pooling,
    dtype_name,
    hf_config,
    last_hidden,
)
from adarec.rec.kinds import PartSource, register_kind
from adarec.rec.side_encoding import SideEncoding
from adarec.rec.state_cache import HiddenStateCache

Resampler = Callable[[np.ndarray, int, int], np.ndarray]


def _find_resampler() -> Resampler | None:
    """torchaudio's resampler if installed, else scipy's polyphase one, else None."""
    try:
        import torchaudio.functional as taf  # optional dependency

        def by_torchaudio(x: np.ndarray, src: int, dst: int) -> np.ndarray:
            return cast(np.ndarray, taf.resample(torch.from_numpy(x), src, dst).numpy())

        return by_torchaudio
    except ImportError:
        pass
    try:
        import scipy.signal  # optional dependency

        def by_scipy(x: np.ndarray, src: int, dst: int) -> np.ndarray:
            g = int(np.gcd(src, dst))
            return cast(np.ndarray, scipy.signal.resample_poly(x, dst // g, src // g))

        return by_scipy
    except ImportError:
        return None


RESAMPLER: Resampler | None = _find_resampler()
"""The resampler `load_audio` uses (None: neither torchaudio nor scipy is installed)."""


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A mono PCM WAV file as float32 samples in [-1, 1] and its sample rate."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"audio file {str(p)!r} does not exist")
    try:
        with wave.open(str(p), "rb") as f:
            channels, width, rate = f.getnchannels(), f.getsampwidth(), f.getframerate()
            raw = f.readframes(f.getnframes())
    except (wave.Error, EOFError) as exc:
        raise DataError(f"{p}: not a PCM WAV file ({exc}); convert it or pass an array") from None
    if channels != 1:
        raise DataError(f"{p}: {channels} channels; an item's clip must be mono (mix it down)")
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width in (2, 4):
        dtype = np.int16 if width == 2 else np.int32
        x = np.frombuffer(raw, dtype).astype(np.float32) / float(2 ** (8 * width - 1))
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 2**23, v - 2**24, v)).astype(np.float32) / float(2**23)
    else:
        raise DataError(f"{p}: {8 * width}-bit samples are not supported")
    return x, rate


def load_audio(clip: Any, sampling_rate: int | None, target_rate: int) -> np.ndarray:
    """One clip (a 1-D array with its ``sampling_rate``, an ``(array, rate)`` pair, or a WAV
    path) as float32 samples at ``target_rate``. Pairs let `TransRec.add_items`, which passes
    clips alone, carry each clip's rate."""
    if isinstance(clip, tuple):
        if len(clip) != 2:
            raise DataError(f"an audio pair must be (samples, sampling_rate), got {len(clip)} "
                            "items")
        clip, sampling_rate = clip
    if isinstance(clip, (str, Path)):
        x, rate = read_wav(clip)
        where = str(clip)
    else:
        if sampling_rate is None:
            raise DataError("an audio array needs its sampling_rate (the rate it was recorded "
                            "at); pass sampling_rate=")
        x = clip.detach().cpu().numpy() if isinstance(clip, Tensor) else np.asarray(clip)
        rate, where = int(sampling_rate), "audio array"
    if x.ndim != 1:
        raise DataError(f"{where}: shape {tuple(x.shape)}; a clip must be 1-D mono samples "
                        "(for stereo, mix down or pick one channel)")
    if x.size == 0:
        raise DataError(f"{where}: the clip is empty")
    if rate <= 0:
        raise DataError(f"{where}: sampling_rate={rate} must be positive")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{where}: the clip holds NaN or infinite samples")
    if rate == target_rate:
        return x
    if RESAMPLER is None:
        raise ConfigError(f"{where}: recorded at {rate} Hz, the feature extractor wants "
                          f"{target_rate} Hz; resampling needs torchaudio or scipy "
                          "(pip install adarec[audio]), or pass clips at that rate")
    return RESAMPLER(x, rate, target_rate).astype(np.float32)


@dataclass(frozen=True)
class _Family:
    """How one model family takes its input: the keyword, the time axis of a feature row, and
    whether the extractor pads every clip to one fixed length (Whisper, AST)."""

    input_name: str
    time_axis: int
    fixed: bool


_FAMILIES = {
    "wav2vec2": _Family("input_values", 0, False),
    "hubert": _Family("input_values", 0, False),
    "whisper": _Family("input_features", 1, True),
    "audio-spectrogram-transformer": _Family("input_values", 0, True),
}


def _family(model: nn.Module) -> _Family:
    kind = str(getattr(hf_config(model), "model_type", ""))
    if kind not in _FAMILIES:
        raise ConfigError(f"AudioItemEncoder knows the model types {sorted(_FAMILIES)}, got "
                          f"{kind!r} ({type(model).__name__})")
    return _FAMILIES[kind]


def _encoder_of(model: nn.Module) -> nn.Module:
    """Whisper's encoder out of a whole Whisper model (the decoder is not an item encoder)."""
    if getattr(hf_config(model), "model_type", "") == "whisper" and hasattr(model, "get_encoder"):
        return cast(nn.Module, cast(Any, model).get_encoder())
    return model


def _deterministic(model: nn.Module) -> None:
    """No SpecAugment masks and no layer drop in training mode: an item's vector is a function
    of its clip (and side networks see every block run)."""
    config = hf_config(model)
    if hasattr(config, "apply_spec_augment"):
        config.apply_spec_augment = False
    for name in ("layerdrop", "encoder_layerdrop"):
        if hasattr(config, name):
            setattr(config, name, 0.0)
    if hasattr(model, "layerdrop"):
        cast(Any, model).layerdrop = 0.0


def extract(extractor: Any, clips: Sequence[Any],
            sampling_rate: int | Sequence[int] | None) -> tuple[Tensor, Tensor]:
    """The extractor's features of ``clips`` ``[n, ...]`` and each clip's length in the units
    of the feature's time axis (samples, or mel frames for Whisper and AST)."""
    if not len(clips):
        raise DataError("no audio clips given")
    rates = (list(sampling_rate) if isinstance(sampling_rate, Sequence)
             else [sampling_rate] * len(clips))
    if len(rates) != len(clips):
        raise DataError(f"{len(clips)} clips but {len(rates)} sampling rates")
    target = int(extractor.sampling_rate)
    waves = [load_audio(c, r, target) for c, r in zip(clips, rates, strict=True)]
    kind = type(extractor).__name__
    if kind.startswith("Whisper"):
        out = extractor(waves, sampling_rate=target, return_tensors="pt",
                        return_attention_mask=True)
        return out["input_features"], out["attention_mask"].long().sum(1)
    if kind.startswith("AST"):
        out = extractor(waves, sampling_rate=target, return_tensors="pt")
        frames = out["input_values"].size(1)
        # kaldi fbank: 25 ms windows every 10 ms
        shift, window = target // 100, target * 25 // 1000
        n = torch.tensor([1 + (w.size - window) // shift for w in waves]).clamp(1, frames)
        return out["input_values"], n
    out = extractor(waves, sampling_rate=target, return_tensors="pt", padding=True,
                    return_attention_mask=True)
    return out["input_values"], out["attention_mask"].long().sum(1)


@register_kind("audio")
class AudioItemEncoder(SideEncoding, ItemEncoderBase):
    """A Hugging Face audio encoder over a feature table ``[n_items + 1, ...]`` (row 0 = padding
    item) and each clip's length, pooled by a mean over the frames of the clip itself: the frame
    mask comes from the sample lengths through the model's ``_get_feat_extract_output_lengths``
    (wav2vec2, HuBERT, Whisper) or the patch grid (AST), so padding is never averaged in.

    wav2vec2/HuBERT models that normalise over the whole clip (``feat_extract_norm="group"``,
    e.g. wav2vec2-base) run each clip at its own length, so its vector does not depend on what
    it is batched with; layer-norm models (``"layer"``) run padded batches with the attention
    mask. Whisper's encoder and AST take fixed-length input, padded or cropped by their
    extractor (Whisper: 30 s of audio by default), and their masks only shape the pooling.
    SpecAugment and layer drop are switched off on the model's config.

    Side networks and their hidden-state cache work as in `TextItemEncoder`.
    """

    transferable = True
    input_values: Tensor
    lengths: Tensor

    def __init__(
        self,
        hf_audio_model: nn.Module,
        input_values: Tensor,
        lengths: Tensor,
        pooling: str = "mean",
        chunk_size: int | None = 64,
        cache_states: bool = True,
        cache_dtype: torch.dtype | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        model = _encoder_of(hf_audio_model)
        self.family = _family(model)
        if input_values.dim() != (2 if self.family.input_name == "input_values" and
                                  not self.family.fixed else 3):
            raise DataError(f"input_values {tuple(input_values.shape)} do not fit a "
                            f"{type(model).__name__}: make them with AudioItemEncoder.from_audio")
        if lengths.shape != (input_values.size(0),):
            raise DataError(f"lengths {tuple(lengths.shape)} must be [n_items + 1] = "
                            f"[{input_values.size(0)}]")
        span = input_values.size(1 + self.family.time_axis)
        if bool((lengths[1:] < 1).any()) or bool((lengths > span).any()):
            raise DataError(f"lengths must lie in [1, {span}] (the feature's time axis)")
        refuse_identical_items(input_values, "audio features")
        self.model = model
        self.pooling = check_pooling(pooling)
        self.chunk_size = chunk_size
        config = hf_config(model)
        self.dim = int(config.hidden_size)
        _deterministic(model)
        self.per_clip = getattr(config, "feat_extract_norm", None) == "group"
        self.register_buffer("input_values", input_values.float(), persistent=False)
        self.register_buffer("lengths", lengths.long().clamp(min=1), persistent=False)
        self.cache_states, self.cache_dtype, self.cache_dir = cache_states, cache_dtype, cache_dir
        self._state_cache: HiddenStateCache | None = None
        self._n_tokens: int | None = None
        self.feature_extractor: Any = None
        """The feature extractor the table was made with, when known (`from_audio` keeps it):
        used by `add_items` and saved by `TransRec.save_pretrained`."""

    @classmethod
    def from_audio(cls, hf_audio_model: nn.Module, feature_extractor: Any, clips: Sequence[Any],
                   sampling_rate: int | Sequence[int] | None = None,
                   **kwargs: Any) -> AudioItemEncoder:
        """Preprocess the clips of items ``1..n`` (``clips[0]`` is item 1: 1-D arrays recorded
        at ``sampling_rate``, ``(array, rate)`` pairs, or WAV paths) with the model's own
        feature extractor; the padding row is silence."""
        values, lengths = extract(feature_extractor, clips, sampling_rate)
        # the padding row: silence as long as the shortest clip (a model's convolutions need
        # some samples to run on)
        encoder = cls(hf_audio_model, torch.cat([values[:1] * 0, values]),
                      torch.cat([lengths.min()[None], lengths]), **kwargs)
        encoder.feature_extractor = feature_extractor
        return encoder

    def add_items(self, inputs: Sequence[Any], preprocessor: Any = None,
                  sampling_rate: int | Sequence[int] | None = None) -> None:
        """Append items from their clips, preprocessed like the table."""
        extractor = preprocessor if preprocessor is not None else self.feature_extractor
        if extractor is None:
            raise ConfigError("no feature extractor: pass the one the table was made with")
        if not inputs:
            return
        values, lengths = extract(extractor, inputs, sampling_rate)
        values = values.to(self.input_values)
        if self.family.fixed and values.shape[1:] != self.input_values.shape[1:]:
            raise DataError(f"the extractor gives features {tuple(values.shape[1:])}, the table "
                            f"holds {tuple(self.input_values.shape[1:])}")
        if not self.family.fixed:
            width = max(values.size(1), self.input_values.size(1))
            values = nn.functional.pad(values, (0, width - values.size(1)))
            self.input_values = nn.functional.pad(
                self.input_values, (0, width - self.input_values.size(1)))
        self.input_values = torch.cat([self.input_values, values])
        self.lengths = torch.cat([self.lengths, lengths.to(self.lengths)])
        self.invalidate_cache()

    def to_config(self) -> dict[str, Any]:
        return {"pooling": self.pooling, "chunk_size": self.chunk_size,
                "cache_states": self.cache_states, "cache_dtype": dtype_name(self.cache_dtype)}

    def features(self) -> dict[str, Tensor]:
        return {"input_values": self.input_values, "lengths": self.lengths}

    def preprocessors(self) -> dict[str, Any]:
        return {"feature_extractor": self.feature_extractor}

    @classmethod
    def from_config(cls, config: dict[str, Any], source: PartSource) -> AudioItemEncoder:
        dtype = config.get("cache_dtype")
        encoder = cls(source.model("model"), source.feature("input_values"),
                      source.feature("lengths"), pooling=config.get("pooling", "mean"),
                      chunk_size=config.get("chunk_size"),
                      cache_states=bool(config.get("cache_states", True)),
                      cache_dtype=getattr(torch, dtype) if dtype else None)
        encoder.feature_extractor = source.preprocessor("feature_extractor",
                                                        transformers.AutoFeatureExtractor)
        return encoder

    @property
    def n_items(self) -> int:
        return self.input_values.size(0) - 1

    def hf_models(self) -> list[nn.Module]:
        return [self.model]

    # ------------------------------------------------------------------ frames and masks
    def frames(self, lengths: Tensor) -> Tensor:
        """Output frames of clips of ``lengths`` (in the feature's time units)."""
        if self.family.input_name == "input_values" and self.family.fixed:  # AST: patch columns
            config = hf_config(self.model)
            return (lengths - config.patch_size) // config.time_stride + 1
        fn = cast(Any, self.model)._get_feat_extract_output_lengths
        return cast(Tensor, fn(lengths)).long().clamp(min=1)

    def _ast_grid(self) -> tuple[int, int]:
        config = hf_config(self.model)
        f = (config.num_mel_bins - config.patch_size) // config.frequency_stride + 1
        t = (config.max_length - config.patch_size) // config.time_stride + 1
        return f, t

    def _mask(self, ids: Tensor, width: int) -> Tensor | None:
        n = self.frames(self.lengths[ids]).clamp(min=1)
        if self.family.input_name == "input_values" and self.family.fixed:
            f, t = self._ast_grid()  # tokens: [CLS], distillation, then patches (freq, time)
            cols = torch.arange(t, device=ids.device).repeat(f)
            keep = cols[None, :] < n[:, None]
            return torch.cat([keep.new_zeros(ids.numel(), 2), keep], dim=1).long()
        return (torch.arange(width, device=ids.device)[None, :] < n[:, None]).long()

    def _width(self, ids: Tensor) -> int:
        if self.family.fixed:
            if self._n_tokens is None:
                with torch.no_grad():
                    self._n_tokens = int(self._run(ids[:1]).size(1))
            return self._n_tokens
        return int(self.frames(self.lengths[ids].max()[None])[0])

    def _order(self, ids: Tensor) -> Tensor:
        return self.lengths[ids].argsort(stable=True)

    # ------------------------------------------------------------------ the model
    def _run(self, ids: Tensor) -> Tensor:
        """Final states of rows ``ids`` in one forward (trimmed to their longest clip)."""
        values = self.input_values[ids]
        kwargs: dict[str, Tensor] = {}
        if not self.family.fixed:
            width = int(self.lengths[ids].max())
            values = values[:, :width]
            if not self.per_clip:
                kwargs["attention_mask"] = (torch.arange(width, device=ids.device)[None, :]
                                            < self.lengths[ids][:, None]).long()
        return last_hidden(self.model(**{self.family.input_name: values}, **kwargs))

    def _backbone(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        hidden = self._run(ids)
        return hidden, self._mask(ids, hidden.size(1))

    def _computed(self, ids: Tensor, sides: Any, slots: Any,
                  tokens: bool) -> tuple[Tensor, Tensor | None]:
        if not self.per_clip or ids.numel() <= 1:
            return super()._computed(ids, sides, slots, tokens)
        width = self._width(ids)  # one forward per clip: the model normalises over the clip
        rows = [super(AudioItemEncoder, self)._computed(i[None], sides, slots, tokens)[0]
                for i in ids]
        if tokens:
            rows = [nn.functional.pad(r, (0, 0, 0, 0, 0, width - r.size(1))) for r in rows]
        return torch.cat(rows), self._mask(ids, width)

    def _pool(self, hidden: Tensor, mask: Tensor | None) -> Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if mask is None:
            return hidden.mean(1)
        m = mask[:, : hidden.size(1)].unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)

    def _features(self) -> list[Tensor]:
        return [self.input_values, self.lengths]

    def _encode(self, ids: Tensor) -> Tensor:
        if self.per_clip and ids.numel() > 1:
            return torch.cat([self._encode(i[None]) for i in ids])
        hidden, mask = self._backbone(ids)
        return self._pool(hidden, mask)

    def forward(self, item_ids: Tensor) -> Tensor:
        ids = item_ids.reshape(-1).to(self.input_values.device)
        if ids.numel() == 0:
            return self.input_values.new_zeros(0, self.dim)
        sides = self.side_networks()
        if sides:
            return cast(Tensor, self.side_encode(ids, sides))
        chunk = self.chunk_size or ids.numel()
        order = self._order(ids)
        out = torch.cat([self._encode(ids[o]) for o in order.split(chunk)])
        return out[order.argsort()]


__all__ = ["AudioItemEncoder", "extract", "load_audio", "read_wav"]
