"""A tiny TransRec (random 2-layer BERT item encoder, 12 items, 4 users) shared by the tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers as tf

from adarec.rec.data import TrainCollator, TrainDataset
from adarec.rec.item_encoders import TextItemEncoder
from adarec.rec.transrec import TransRec

N_ITEMS, L = 12, 5
SEQS = [[1, 2, 3, 4, 5, 6], [3, 4, 5], [7, 8, 9, 10, 11, 12, 1], [2, 2, 6, 9]]


def tiny_bert() -> tf.BertModel:
    cfg = tf.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return tf.BertModel(cfg)


def text_items(seed: int = 0) -> TextItemEncoder:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 9, (N_ITEMS + 1,), generator=g)
    mask = (torch.arange(8) < lengths[:, None]).long()
    return TextItemEncoder(tiny_bert(), torch.randint(5, 99, (N_ITEMS + 1, 8), generator=g) * mask,
                           mask, chunk_size=5)


def text_model(seed: int = 0, **kw: object) -> TransRec:
    torch.manual_seed(seed)
    return TransRec(text_items(seed), user_dim=16, max_len=L, dropout=0.0, **kw)


def batch(k: int = 2, seqs: list[list[int]] = SEQS) -> dict[str, torch.Tensor]:
    ds = TrainDataset(seqs, L)
    return TrainCollator(N_ITEMS, L, k, seed=0)([ds[i] for i in range(len(ds))])


def step(model: torch.nn.Module) -> tuple[float, dict[str, torch.Tensor]]:
    """One loss + backward on `batch`: the loss and every gradient (for cached == uncached)."""
    model.zero_grad()
    loss = model.loss(batch())
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                         if p.grad is not None}


def resign(folder: Path) -> None:
    """Bind a hand-edited ``transrec_config.json`` into its weights file again: the folder a
    writer of those settings would have written (for tests that simulate other versions)."""
    import json

    import safetensors.torch

    from adarec.checkpoint import CONFIG_DIGEST, config_digest, write_weights

    file = folder / "transrec_config.json"
    config = json.loads(file.read_text())
    tensors = safetensors.torch.load_file(str(folder / "model.safetensors"))
    config.pop("weights", None)
    (folder / "model.safetensors").unlink()
    config["weights"] = write_weights(folder, "model.safetensors", tensors,
                                      {CONFIG_DIGEST: config_digest(config)})
    file.write_text(json.dumps(config))


class Tok:
    """A whitespace tokenizer with a fixed vocabulary (enough for add_items)."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        rows = [[2, *(5 + (hash(w) % 90) for w in t.split())][:max_length] for t in texts]
        ids = torch.zeros(len(rows), max_length, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return {"input_ids": ids, "attention_mask": mask}
