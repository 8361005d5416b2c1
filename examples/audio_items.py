"""Audio items in TransRec: each item is a clip; a small recommender trains over them.

What it shows: the calls, end to end -- clips (synthetic tones, written as WAV files and read
back) -> `AudioItemEncoder.from_audio` with the model's own feature extractor -> a side network
in the frozen audio encoder -> training on synthetic users (low-pitched vs high-pitched
listeners) -> ranking metrics -> `save_pretrained` / `from_pretrained` giving the same scores.

What it cannot show: the encoder is a tiny *random* HuBERT (no pre-trained audio weights are
available offline), so its item vectors carry no learnt audio knowledge; the metrics say only
that the loop runs. With real weights pass ``--model facebook/hubert-base-ls960`` (or a local
copy) on a machine that has it.

    python examples/audio_items.py --out runs/audio [--model PATH_OR_HUB_ID] [--epochs 3]
"""

from __future__ import annotations

import argparse
import wave
from pathlib import Path
from typing import Any

RATE = 16000
N_ITEMS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/audio"), help="output folder")
    p.add_argument("--model", default=None,
                   help="a local path or hub id of a wav2vec2/HuBERT/Whisper/AST model "
                        "(default: a tiny random HuBERT)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def write_tones(folder: Path) -> list[Path]:
    """One 16-bit mono WAV per item: a tone at an item-specific pitch, 0.2 .. 0.4 s long."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(N_ITEMS):
        t = np.arange(3200 + 200 * i) / RATE
        tone = 0.5 * np.sin(2 * np.pi * (120 * 1.15 ** i) * t)
        path = folder / f"item{i + 1}.wav"
        with wave.open(str(path), "wb") as f:
            f.setnchannels(1)
            f.setsampwidth(2)
            f.setframerate(RATE)
            f.writeframes((tone * 32767).astype("<i2").tobytes())
        paths.append(path)
    return paths


def audio_model(name: str | None) -> tuple[Any, Any]:
    import transformers as tf

    if name is not None:
        return (tf.AutoModel.from_pretrained(name, local_files_only=True),
                tf.AutoFeatureExtractor.from_pretrained(name, local_files_only=True))
    config = tf.HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4),
                             conv_kernel=(10, 4), num_conv_pos_embeddings=8,
                             num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                             do_stable_layer_norm=True)
    return tf.HubertModel(config), tf.Wav2Vec2FeatureExtractor(return_attention_mask=True)


def users(seed: int) -> list[list[int]]:
    """Low listeners play items 1..8, high listeners 9..16, in random orders."""
    import random

    g = random.Random(seed)
    half = N_ITEMS // 2
    return [g.sample(range(1, half + 1) if u % 2 else range(half + 1, N_ITEMS + 1), 6)
            for u in range(24)]


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    import torch

    from adarec.rec import AudioItemEncoder, TrainCollator, TrainDataset, TransRec

    torch.manual_seed(args.seed)
    model_, extractor = audio_model(args.model)
    clips = write_tones(args.out / "clips")
    items = AudioItemEncoder.from_audio(model_, extractor, clips, chunk_size=8)
    model = TransRec(items, user_dim=32, max_len=5, dropout=0.0, loss="sampled_softmax",
                     num_negatives=4)
    model.inject_adapters(item="side")
    seqs = users(args.seed)
    train = [s[:-1] for s in seqs]
    valid = [(s[:-1][-5:], s[-1]) for s in seqs]
    data = TrainDataset(train, 5)
    collate = TrainCollator(N_ITEMS, 5, 4, seed=args.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(data)).tolist()
        total = 0.0
        for start in range(0, len(order), 16):
            loss = model.loss(collate([data[i] for i in order[start:start + 16]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        print(f"epoch {epoch}: train loss {total:.3f}")
    metrics = model.evaluate_ranking(valid, ks=(5,))
    print({k: round(float(v), 4) for k, v in metrics.items()})
    model.save_pretrained(args.out / "model", include_base=True)
    back = TransRec.from_pretrained(args.out / "model")
    ids = torch.tensor([v[0] for v in valid[:4]])
    model.eval()
    with torch.no_grad():
        same = torch.equal(back.full_sort_scores(ids), model.full_sort_scores(ids))
    print(f"saved to {args.out / 'model'}; reloaded scores identical: {same}")
    return {k: float(v) for k, v in metrics.items()}


if __name__ == "__main__":
    main()
