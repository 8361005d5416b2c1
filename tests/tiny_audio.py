"""Tiny random audio encoders (wav2vec2, HuBERT, Whisper's encoder, AST) with their feature
extractors, and generated clips: tones and noise of different lengths at 16 kHz."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import transformers as tf

FAMILIES = ("wav2vec2", "hubert", "whisper", "ast")
RATE = 16000


def tiny_audio(family: str, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """A random tiny model of ``family`` and the feature extractor it takes."""
    torch.manual_seed(seed)
    drop = dict(hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                feat_proj_dropout=0.0, layerdrop=0.0)
    conv = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 4),
                num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=2, **drop)
    if family == "wav2vec2":  # GroupNorm over the clip, like wav2vec2-base
        return (tf.Wav2Vec2Model(tf.Wav2Vec2Config(feat_extract_norm="group", **conv)),
                tf.Wav2Vec2FeatureExtractor(return_attention_mask=False))
    if family == "hubert":  # LayerNorm per frame, attention mask, like hubert-large
        return (tf.HubertModel(tf.HubertConfig(feat_extract_norm="layer", do_stable_layer_norm=True,
                                               conv_bias=True, **conv)),
                tf.Wav2Vec2FeatureExtractor(return_attention_mask=True))
    if family == "whisper":  # 1 s windows of 100 mel frames
        config = tf.WhisperConfig(d_model=16, encoder_layers=2, encoder_attention_heads=2,
                                  encoder_ffn_dim=32, decoder_layers=1, decoder_attention_heads=2,
                                  decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=50,
                                  vocab_size=64, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=2, decoder_start_token_id=3, dropout=0.0,
                                  attention_dropout=0.0, activation_dropout=0.0)
        return tf.WhisperModel(config), tf.WhisperFeatureExtractor(feature_size=8, chunk_length=1)
    if family == "ast":
        config = tf.ASTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=32, patch_size=4, frequency_stride=4,
                              time_stride=4, max_length=32, num_mel_bins=8,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        return tf.ASTModel(config), tf.ASTFeatureExtractor(num_mel_bins=8, max_length=32)
    raise ValueError(family)


def clips(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` clips of 0.1 .. 0.3 s: a tone per item plus a little noise."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        length = 1600 + (i * 977) % 3200
        t = np.arange(length) / RATE
        out.append((0.5 * np.sin(2 * np.pi * (110 + 40 * i) * t)
                    + 0.05 * g.standard_normal(length)).astype(np.float32))
    return out
