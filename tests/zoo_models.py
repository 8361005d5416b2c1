"""Tiny Hugging Face models of families adarec's layout table does *not* list, with the placement a
person reading each family's source expects (so the trace is checked against a hand-written
answer, not against itself).

``EXPECT[name]`` maps each block stack to the sublayers of its first block as ``(kind, exit)``
(names relative to the block) and says where q, k and v are: three modules, or one fused module
(``fused``), and whether its q|k|v split is contiguous and therefore verifiable (``widths``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import transformers as tf

H, L, HEADS, FF = 32, 2, 4, 64
TEXT = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
            vocab_size=99, max_position_embeddings=64)
VISION = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
              image_size=16, patch_size=8)
S2S = dict(d_model=H, encoder_layers=L, decoder_layers=L, encoder_attention_heads=HEADS,
           decoder_attention_heads=HEADS, encoder_ffn_dim=FF, decoder_ffn_dim=FF, vocab_size=99,
           max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2,
           decoder_start_token_id=2)
AUDIO = dict(hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, intermediate_size=FF,
             conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 8),
             num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)

BERTISH = [("mha", "attention.output.dense"), ("ffn", "output.dense")]
QKV_BERT = ("attention.self.query", "attention.self.key", "attention.self.value")
SEQ2SEQ_ENC = [("mha", "self_attn.out_proj"), ("ffn", "fc2")]
SEQ2SEQ_DEC = [("mha", "self_attn.out_proj"), ("cross", "encoder_attn.out_proj"), ("ffn", "fc2")]
QKV_PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
W2V = [("mha", "attention.out_proj"), ("ffn", "feed_forward.output_dense")]
QKV_W2V = ("attention.q_proj", "attention.k_proj", "attention.v_proj")


@dataclass(frozen=True)
class Family:
    build: Callable[[], torch.nn.Module]
    kind: str
    """text, vision, audio (``input_values``), features (``input_features``), seq2seq, or custom
    (``example`` gives the inputs)."""
    stacks: dict[str, list[tuple[str, str]]]
    qkv: tuple[str, str, str]
    widths: bool = False
    """A fused q/k/v whose contiguous split the trace can verify ((IA)^3 can then use it)."""
    example: Callable[[], dict[str, torch.Tensor]] | None = None


def _fused(name: str) -> tuple[str, str, str]:
    return (name, name, name)


def _siglip2_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {"pixel_values": torch.randn(2, 4, 3 * 8 * 8, generator=g),
            "pixel_attention_mask": torch.ones(2, 4, dtype=torch.long),
            "spatial_shapes": torch.tensor([[2, 2], [2, 2]])}


ZOO: dict[str, Family] = {
    # ---- encoders
    "ernie": Family(lambda: tf.ErnieModel(tf.ErnieConfig(**TEXT)), "text",
                    {"encoder.layer": BERTISH}, QKV_BERT),
    "roformer": Family(lambda: tf.RoFormerModel(tf.RoFormerConfig(**TEXT)), "text",
                       {"encoder.layer": BERTISH}, QKV_BERT),
    "deberta": Family(lambda: tf.DebertaModel(tf.DebertaConfig(**TEXT)), "text",
                      {"encoder.layer": BERTISH}, _fused("attention.self.in_proj")),
    "megatron-bert": Family(lambda: tf.MegatronBertModel(tf.MegatronBertConfig(**TEXT)), "text",
                            {"encoder.layer": BERTISH}, QKV_BERT),
    "esm": Family(lambda: tf.EsmModel(tf.EsmConfig(**TEXT, pad_token_id=1, mask_token_id=2)),
                  "text", {"encoder.layer": BERTISH}, QKV_BERT),
    "rembert": Family(lambda: tf.RemBertModel(tf.RemBertConfig(
        **TEXT, input_embedding_size=16, output_embedding_size=16)), "text",
        {"encoder.layer": BERTISH}, QKV_BERT),
    "big_bird": Family(lambda: tf.BigBirdModel(tf.BigBirdConfig(
        **TEXT, attention_type="original_full")), "text", {"encoder.layer": BERTISH}, QKV_BERT),
    # ---- decoders with fused projections
    "gpt_neox": Family(lambda: tf.GPTNeoXModel(tf.GPTNeoXConfig(**TEXT)), "text",
                       {"layers": [("mha", "attention.dense"), ("ffn", "mlp.dense_4h_to_h")]},
                       _fused("attention.query_key_value")),  # heads interleaved: no split
    "bloom": Family(lambda: tf.BloomModel(tf.BloomConfig(hidden_size=H, n_layer=L, n_head=HEADS,
                                                         vocab_size=99)), "text",
                    {"h": [("mha", "self_attention.dense"), ("ffn", "mlp.dense_4h_to_h")]},
                    _fused("self_attention.query_key_value")),
    "falcon": Family(lambda: tf.FalconModel(tf.FalconConfig(
        hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, vocab_size=99)), "text",
        {"h": [("mha", "self_attention.dense"), ("ffn", "mlp.dense_4h_to_h")]},
        _fused("self_attention.query_key_value"), widths=True),  # multi-query: 32 | 8 | 8
    "gpt_bigcode": Family(lambda: tf.GPTBigCodeModel(tf.GPTBigCodeConfig(
        n_embd=H, n_layer=L, n_head=HEADS, n_inner=FF, vocab_size=99, n_positions=64)), "text",
        {"h": [("mha", "attn.c_proj"), ("ffn", "mlp.c_proj")]}, _fused("attn.c_attn"),
        widths=True),
    "phi3": Family(lambda: tf.Phi3Model(tf.Phi3Config(**TEXT, num_key_value_heads=2,
                                                      pad_token_id=0)), "text",
                   {"layers": [("mha", "self_attn.o_proj"), ("ffn", "mlp.down_proj")]},
                   _fused("self_attn.qkv_proj"), widths=True),  # grouped-query: 32 | 16 | 16
    "codegen": Family(lambda: tf.CodeGenModel(tf.CodeGenConfig(
        n_embd=H, n_layer=L, n_head=HEADS, n_inner=FF, vocab_size=99, n_positions=64,
        rotary_dim=4)), "text", {"h": [("mha", "attn.out_proj"), ("ffn", "mlp.fc_out")]},
        _fused("attn.qkv_proj")),
    "mpt": Family(lambda: tf.MptModel(tf.MptConfig(d_model=H, n_layers=L, n_heads=HEADS,
                                                   vocab_size=99, max_seq_len=64)), "text",
                  {"blocks": [("mha", "attn.out_proj"), ("ffn", "ffn.down_proj")]},
                  _fused("attn.Wqkv"), widths=True),
    "persimmon": Family(lambda: tf.PersimmonModel(tf.PersimmonConfig(**TEXT)), "text",
                        {"layers": [("mha", "self_attn.dense"), ("ffn", "mlp.dense_4h_to_h")]},
                        _fused("self_attn.query_key_value")),
    # ---- other decoders (GPT-J: attention and MLP in parallel on one input)
    "gptj": Family(lambda: tf.GPTJModel(tf.GPTJConfig(
        n_embd=H, n_layer=L, n_head=HEADS, n_inner=FF, vocab_size=99, n_positions=64,
        rotary_dim=4)), "text", {"h": [("mha", "attn.out_proj"), ("ffn", "mlp.fc_out")]},
        ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
    "opt": Family(lambda: tf.OPTModel(tf.OPTConfig(
        hidden_size=H, num_hidden_layers=L, num_attention_heads=HEADS, ffn_dim=FF, vocab_size=99,
        max_position_embeddings=64, word_embed_proj_dim=H)), "text",
        {"decoder.layers": SEQ2SEQ_ENC}, QKV_PROJ),
    "gpt_neo": Family(lambda: tf.GPTNeoModel(tf.GPTNeoConfig(
        hidden_size=H, num_layers=L, num_heads=HEADS, intermediate_size=FF, vocab_size=99,
        max_position_embeddings=64, attention_types=[[["global", "local"], 1]],
        window_size=4)), "text",
        {"h": [("mha", "attn.attention.out_proj"), ("ffn", "mlp.c_proj")]},
        ("attn.attention.q_proj", "attn.attention.k_proj", "attn.attention.v_proj")),
    "olmo": Family(lambda: tf.OlmoModel(tf.OlmoConfig(**TEXT, pad_token_id=0)), "text",
                   {"layers": [("mha", "self_attn.o_proj"), ("ffn", "mlp.down_proj")]},
                   QKV_PROJ),
    # ---- encoder-decoders (decoder blocks: self-attention, cross-attention, FFN)
    "bart": Family(lambda: tf.BartModel(tf.BartConfig(**S2S)), "seq2seq",
                   {"encoder.layers": SEQ2SEQ_ENC, "decoder.layers": SEQ2SEQ_DEC}, QKV_PROJ),
    "mbart": Family(lambda: tf.MBartModel(tf.MBartConfig(**S2S)), "seq2seq",
                    {"encoder.layers": SEQ2SEQ_ENC, "decoder.layers": SEQ2SEQ_DEC}, QKV_PROJ),
    "pegasus": Family(lambda: tf.PegasusModel(tf.PegasusConfig(**S2S)), "seq2seq",
                      {"encoder.layers": SEQ2SEQ_ENC, "decoder.layers": SEQ2SEQ_DEC}, QKV_PROJ),
    "marian": Family(lambda: tf.MarianModel(tf.MarianConfig(**S2S)), "seq2seq",
                     {"encoder.layers": SEQ2SEQ_ENC, "decoder.layers": SEQ2SEQ_DEC}, QKV_PROJ),
    "m2m_100": Family(lambda: tf.M2M100Model(tf.M2M100Config(**S2S)), "seq2seq",
                      {"encoder.layers": SEQ2SEQ_ENC, "decoder.layers": SEQ2SEQ_DEC}, QKV_PROJ),
    # ---- vision
    "vit_msn": Family(lambda: tf.ViTMSNModel(tf.ViTMSNConfig(**VISION)), "vision",
                      {"layers": [("mha", "attention.o_proj"), ("ffn", "mlp.fc2")]},
                      ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
    "yolos": Family(lambda: tf.YolosModel(tf.YolosConfig(
        **{**VISION, "image_size": [16, 16]}, num_detection_tokens=2)), "vision",
        {"encoder.layer": BERTISH},
        ("attention.attention.query", "attention.attention.key", "attention.attention.value")),
    "swin": Family(lambda: tf.SwinModel(tf.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
        window_size=4)), "vision",
        {"encoder.layers.0.blocks": [("mha", "attention.o_proj"), ("ffn", "mlp.fc2")],
         "encoder.layers.1.blocks": [("mha", "attention.o_proj"), ("ffn", "mlp.fc2")]},
        ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
    "data2vec-vision": Family(lambda: tf.Data2VecVisionModel(tf.Data2VecVisionConfig(**VISION)),
                              "vision", {"encoder.layer": BERTISH},
                              ("attention.attention.query", "attention.attention.key",
                               "attention.attention.value")),
    "ijepa": Family(lambda: tf.IJepaModel(tf.IJepaConfig(**VISION)), "vision",
                    {"layers": [("mha", "attention.o_proj"), ("ffn", "mlp.fc2")]},
                    ("attention.q_proj", "attention.k_proj", "attention.v_proj")),
    "siglip2_vision": Family(lambda: tf.Siglip2VisionModel(tf.Siglip2VisionConfig(
        **{k: v for k, v in VISION.items() if k != "image_size"}, num_patches=4)), "custom",
        {"encoder.layers": [("mha", "self_attn.out_proj"), ("ffn", "mlp.fc2")]}, QKV_PROJ,
        example=_siglip2_batch),
    # ---- speech (Conformer blocks: half-step FFN, self-attention, half-step FFN)
    "wav2vec2": Family(lambda: tf.Wav2Vec2Model(tf.Wav2Vec2Config(**AUDIO)), "audio",
                       {"encoder.layers": W2V}, QKV_W2V),
    "hubert": Family(lambda: tf.HubertModel(tf.HubertConfig(**AUDIO)), "audio",
                     {"encoder.layers": W2V}, QKV_W2V),
    "data2vec-audio": Family(lambda: tf.Data2VecAudioModel(tf.Data2VecAudioConfig(**AUDIO)),
                             "audio", {"encoder.layers": W2V}, QKV_W2V),
    "wav2vec2-conformer": Family(lambda: tf.Wav2Vec2ConformerModel(tf.Wav2Vec2ConformerConfig(
        **AUDIO, conv_depthwise_kernel_size=3)), "audio",
        {"encoder.layers": [("ffn", "ffn1.output_dense"), ("mha", "self_attn.linear_out"),
                            ("ffn", "ffn2.output_dense")]},
        ("self_attn.linear_q", "self_attn.linear_k", "self_attn.linear_v")),
    "whisper": Family(lambda: tf.WhisperModel(tf.WhisperConfig(
        d_model=H, encoder_layers=L, decoder_layers=L, encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS, encoder_ffn_dim=FF, decoder_ffn_dim=FF, vocab_size=99,
        num_mel_bins=8, max_source_positions=8, max_target_positions=16,
        decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)), "features",
        {"encoder.layers": SEQ2SEQ_ENC, "decoder.layers": SEQ2SEQ_DEC}, QKV_PROJ),
    "speech_to_text": Family(lambda: tf.Speech2TextModel(tf.Speech2TextConfig(
        **S2S, input_feat_per_channel=8, num_conv_layers=2, conv_channels=16,
        conv_kernel_sizes=(5, 5), max_source_positions=64, max_target_positions=64)), "features",
        {"encoder.layers": SEQ2SEQ_ENC, "decoder.layers": SEQ2SEQ_DEC}, QKV_PROJ),
}


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return ZOO[name].build().eval()


def batch(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """An input other than the dry run's (another seed, another length)."""
    fam = ZOO[name]
    if fam.example is not None:
        return fam.example()
    g = torch.Generator().manual_seed(7)
    config = model.config
    if fam.kind in ("text", "seq2seq"):
        ids = torch.randint(4, 99, (2, 5), generator=g)
        out: dict[str, Any] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        out["attention_mask"][0, -1] = 0
    elif fam.kind == "vision":
        size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
        out = {"pixel_values": torch.randn(2, 3, size, size, generator=g)}
    elif fam.kind == "audio":
        out = {"input_values": torch.randn(2, 1200, generator=g)}
    elif getattr(config, "num_mel_bins", None):
        out = {"input_features": torch.randn(2, config.num_mel_bins,
                                             2 * config.max_source_positions, generator=g)}
    else:
        out = {"input_features": torch.randn(2, 12, config.input_feat_per_channel, generator=g)}
    if getattr(config, "is_encoder_decoder", False):
        out["decoder_input_ids"] = torch.randint(4, 99, (2, 4), generator=g)
    return out


def output(model: torch.nn.Module, inputs: dict[str, Any]) -> torch.Tensor:
    out = model(**inputs)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
