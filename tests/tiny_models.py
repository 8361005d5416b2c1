"""Tiny randomly initialised Hugging Face models, one per architecture family adarec supports."""

from __future__ import annotations

from collections.abc import Callable

import torch
import transformers as tf

H, L, HEADS, FF = 32, 2, 4, 64
COMMON = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF)
TEXT = dict(vocab_size=99, max_position_embeddings=64)


def _text(cfg_cls, model_cls, **kw) -> Callable[[], torch.nn.Module]:
    return lambda: model_cls(cfg_cls(**{**COMMON, **TEXT, **kw}))


def _vision(cfg_cls, model_cls, **kw) -> Callable[[], torch.nn.Module]:
    return lambda: model_cls(cfg_cls(**{**COMMON, "image_size": 16, "patch_size": 8, **kw}))


ARCHS: dict[str, Callable[[], torch.nn.Module]] = {
    "bert": _text(tf.BertConfig, tf.BertModel),
    "roberta": _text(tf.RobertaConfig, tf.RobertaModel),
    "xlm-roberta": _text(tf.XLMRobertaConfig, tf.XLMRobertaModel),
    "distilbert": lambda: tf.DistilBertModel(
        tf.DistilBertConfig(dim=H, n_layers=L, n_heads=HEADS, hidden_dim=FF, **TEXT)
    ),
    "albert": _text(tf.AlbertConfig, tf.AlbertModel, embedding_size=16),
    "electra": _text(tf.ElectraConfig, tf.ElectraModel, embedding_size=H),
    "deberta-v2": _text(tf.DebertaV2Config, tf.DebertaV2Model),
    "mpnet": _text(tf.MPNetConfig, tf.MPNetModel),
    "modernbert": _text(tf.ModernBertConfig, tf.ModernBertModel, pad_token_id=0, bos_token_id=1,
                        eos_token_id=2, cls_token_id=1, sep_token_id=2),
    "vit": _vision(tf.ViTConfig, tf.ViTModel),
    "vit_mae": _vision(tf.ViTMAEConfig, tf.ViTMAEModel, mask_ratio=0.0),
    "deit": _vision(tf.DeiTConfig, tf.DeiTModel),
    "beit": _vision(tf.BeitConfig, tf.BeitModel),
    "dinov2": _vision(tf.Dinov2Config, tf.Dinov2Model),
    "clip_text": lambda: tf.CLIPTextModel(tf.CLIPTextConfig(**COMMON, **TEXT)),
    "clip_vision": _vision(tf.CLIPVisionConfig, tf.CLIPVisionModel),
    "siglip_vision": _vision(tf.SiglipVisionConfig, tf.SiglipVisionModel),
    "siglip_text": lambda: tf.SiglipTextModel(tf.SiglipTextConfig(**COMMON, **TEXT)),
    "gpt2": lambda: tf.GPT2Model(
        tf.GPT2Config(n_embd=H, n_layer=L, n_head=HEADS, n_inner=FF, vocab_size=99, n_positions=64)
    ),
    "llama": _text(tf.LlamaConfig, tf.LlamaModel, num_key_value_heads=2),
    "qwen2": _text(tf.Qwen2Config, tf.Qwen2Model, num_key_value_heads=2),
    "t5_encoder": lambda: tf.T5EncoderModel(
        tf.T5Config(d_model=H, d_kv=8, d_ff=FF, num_layers=L, num_heads=HEADS, vocab_size=99)
    ),
}

VISION = {"vit", "vit_mae", "deit", "beit", "dinov2", "clip_vision", "siglip_vision"}


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ARCHS[arch]()
    return model.eval()


def inputs(arch: str, batch: int = 2, seq: int = 7, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if arch in VISION:
        out = {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
        if arch == "vit_mae":  # fixed noise: MAE otherwise shuffles patches at random
            out["noise"] = torch.arange(4, dtype=torch.float).expand(batch, 4).clone()
        return out
    ids = torch.randint(3, 99, (batch, seq), generator=g)
    out = {"input_ids": ids}
    if arch not in {"clip_text", "siglip_text"}:
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, -2:] = 0
        out["attention_mask"] = mask
    return out


def output(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The last hidden state, whatever the output class calls it."""
    out = model(**batch)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
