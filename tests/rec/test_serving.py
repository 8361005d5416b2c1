"""Serving: TransRec.recommend (full history excluded, raw ids, chunked top-k, re-ranking, new
text-only items) and self-describing checkpoints (save_pretrained / from_pretrained)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_transrec as helpers
import torch
from tiny_transrec import Tok

import adarec
from adarec.errors import CheckpointError, ConfigError, DataError, UnknownItemError
from adarec.rec import IDItemEncoder, TransRec

IDS = [None, *(f"m{i}" for i in range(1, helpers.N_ITEMS + 1))]
TEXTS = ["", *(f"movie {i}" for i in range(1, helpers.N_ITEMS + 1))]
LONG = [f"m{i}" for i in (1, 2, 3, 4, 5, 6, 7, 8)]  # longer than max_len = 5


def _trained(model: TransRec) -> TransRec:
    """Two optimizer steps (every trainable tensor moves off its init), then eval mode."""
    opt = torch.optim.AdamW(adarec.trainable_parameters(model).values(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model.loss(helpers.batch(k=0)).backward()
        opt.step()
    return model.eval()


def _model(seed: int = 0) -> TransRec:
    model = helpers.text_model(seed=seed, loss="sampled_softmax", num_negatives=0)
    model.inject_adapters(item="houlsby", user="pfeiffer")
    _trained(model).set_item_map(IDS, TEXTS)
    return model


@pytest.fixture(scope="module")
def model() -> TransRec:
    return _model()


def test_recommend_excludes_the_whole_history_not_just_the_window(model: TransRec) -> None:
    k = helpers.N_ITEMS - len(LONG)  # every item that is left
    rec = model.recommend([LONG], k=k)
    assert sorted(rec.items[0]) == sorted(set(IDS[1:]) - set(LONG))
    # the window alone (what full_sort_scores(history[-max_len:]) masks) would let m1..m3 through
    window = torch.tensor([[model.item_index(LONG)[-5:]][0]])
    scores = model.full_sort_scores(window)
    leaked = {IDS[i] for i in scores[0].topk(k).indices.tolist()} & set(LONG)
    assert leaked, "the test needs a case where the window alone leaks seen items"


def test_recommend_raw_ids_match_full_sort_scores(model: TransRec) -> None:
    rec = model.recommend([LONG, ["m3", "m9"]], k=3)
    hist = [model.item_index(h) for h in (LONG, ["m3", "m9"])]
    for row, h in enumerate(hist):
        ids = adarec.rec.pad_left([h], 5)
        scores = model.full_sort_scores(ids, exclude_ids=torch.tensor([h]))[0]
        top = scores.topk(3)
        assert rec.indices[row].tolist() == top.indices.tolist()
        assert torch.allclose(rec.scores[row], top.values, atol=1e-6)
        assert rec.items[row] == [IDS[i] for i in top.indices.tolist()]


def test_recommend_chunked_equals_unchunked(model: TransRec) -> None:
    histories = [LONG, ["m2"], ["m12", "m11", "m10"]]
    whole = model.recommend(histories, k=4, item_chunk=10_000)
    for chunk in (1, 3, 5):
        part = model.recommend(histories, k=4, item_chunk=chunk, batch_size=2)
        assert torch.equal(part.indices, whole.indices)
        assert torch.allclose(part.scores, whole.scores, atol=1e-6)


def test_recommend_candidates_rerank(model: TransRec) -> None:
    cands = [["m9", "m1", "m10", "m9", "m12"], ["m4"]]
    rec = model.recommend([LONG, ["m4"]], k=3, candidates=cands)
    assert set(rec.items[0]) == {"m9", "m10", "m12"}  # m1 was seen; m9 listed twice counts once
    assert rec.items[1] == []  # its only candidate was seen
    assert rec.scores[1].isinf().all() and (rec.indices[1] == 0).all()
    full = model.recommend([LONG], k=helpers.N_ITEMS - len(LONG))
    order = [i for i in full.items[0] if i in {"m9", "m10", "m12"}]
    assert rec.items[0] == order


def test_recommend_refusals(model: TransRec) -> None:
    with pytest.raises(UnknownItemError, match="unknown raw item ids: \\['nope'\\]"):
        model.recommend([["m1", "nope"]])
    assert model.recommend([["m1", "nope"]], unknown="skip").items
    with pytest.raises(DataError, match="no known item"):
        model.recommend([["nope"]], unknown="skip")
    with pytest.raises(ConfigError, match="k must be"):
        model.recommend([["m1"]], k=0)
    plain = helpers.text_model(seed=0)
    with pytest.raises(UnknownItemError, match="no item map"):
        plain.recommend([["m1"]])
    assert plain.recommend([[1, 2]], k=2).items[0][0] in range(3, 13)
    as_tensor = plain.recommend(torch.tensor([[0, 1, 2]]), k=2)
    assert as_tensor.items == plain.recommend([[1, 2]], k=2).items
    with pytest.raises(ConfigError, match="cannot be read as raw ids"):
        model.recommend(torch.tensor([[1, 2]]))


def test_new_text_only_items_are_ranked(model: TransRec) -> None:
    fresh = _model()
    fresh.item_encoder.tokenizer = Tok()
    before = fresh.item_table().clone()
    new = fresh.add_items(["new1", "new2"], ["a brand new movie", "another one"])
    assert new == [13, 14] and fresh.n_items == 14 and fresh.item_ids[-2:] == ["new1", "new2"]
    table = fresh.item_table()
    assert table.shape[0] == 15 and torch.allclose(table[:13], before, atol=1e-6)
    rec = fresh.recommend([LONG], k=fresh.n_items - len(LONG))
    assert {"new1", "new2"} <= set(rec.items[0])
    assert fresh.recommend([["new1"]], k=2, candidates=[["new2", "m3"]]).items[0]
    with pytest.raises(DataError, match="already present"):
        fresh.add_items(["m1"], ["again"])
    ids = TransRec(IDItemEncoder(12, 16), user_dim=16, dtl=False, max_len=5)
    with pytest.raises(ConfigError, match="cannot encode items"):
        ids.add_items([13], ["x"])


# --------------------------------------------------------------------------- checkpoints
SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from adarec.rec import TransRec
model = TransRec.from_pretrained(sys.argv[1])
rec = model.recommend({histories!r}, k=5)
torch.save({{"scores": rec.scores, "indices": rec.indices}}, sys.argv[2])
print(rec.items)
"""


def test_save_pretrained_rebuilds_in_a_fresh_process(model: TransRec, tmp_path: Path) -> None:
    histories = [LONG, ["m3", "m9"]]
    expected = model.recommend(histories, k=5)
    model.save_pretrained(tmp_path / "ckpt", include_base=True)
    out = tmp_path / "out.pt"
    code = SCRIPT.format(histories=histories)
    root = Path(__file__).resolve().parents[2]
    env = {"PYTHONPATH": str(root), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ckpt"), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    got = torch.load(out)
    assert torch.equal(got["scores"], expected.scores)
    assert torch.equal(got["indices"], expected.indices)
    assert str(expected.items) in done.stdout


def test_from_pretrained_with_a_passed_base(model: TransRec, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path / "ckpt")  # base weights left out
    config = json.loads((tmp_path / "ckpt" / "transrec_config.json").read_text())
    assert config["bases"]["item_encoder.model"]["left_out"] > 0
    names = set(config["tensors"])
    assert not any("word_embeddings" in n for n in names) and any(".adarec_adapters." in n
                                                                  for n in names)
    with pytest.raises(CheckpointError, match="no recorded path"):
        TransRec.from_pretrained(tmp_path / "ckpt")
    base = helpers.text_model(seed=0).item_encoder.model  # the same pre-trained weights
    loaded = TransRec.from_pretrained(tmp_path / "ckpt", base=base)
    assert loaded.item_ids == IDS and loaded.item_texts == TEXTS and loaded.policy == "adapters"
    assert adarec.adapter_sets(loaded.user_encoder) == adarec.adapter_sets(model.user_encoder)
    histories = [LONG, ["m3"]]
    assert torch.equal(loaded.recommend(histories).scores, model.recommend(histories).scores)


def test_from_pretrained_refusals(model: TransRec, tmp_path: Path) -> None:
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    other = helpers.text_model(seed=5).item_encoder.model  # same architecture, other weights
    with pytest.raises(CheckpointError, match="other weights"):
        TransRec.from_pretrained(folder, base=other)
    assert TransRec.from_pretrained(folder, base=other, check_base=False).n_items == 12
    import transformers as tf

    wider = tf.BertModel(tf.BertConfig(vocab_size=99, hidden_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, intermediate_size=64))
    with pytest.raises(CheckpointError, match=r"(?s)another base encoder.*hidden_size"):
        TransRec.from_pretrained(folder, base=wider)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        TransRec.from_pretrained(folder, base=other)
    model.save_pretrained(folder)
    config = json.loads((folder / "transrec_config.json").read_text())
    config["format_version"] = 99
    (folder / "transrec_config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="upgrade adarec"):
        TransRec.from_pretrained(folder)
    adarec.save_adapters(model, tmp_path / "adapters")
    with pytest.raises(CheckpointError, match="load_adapters"):
        TransRec.from_pretrained(tmp_path / "adapters")


def test_id_model_round_trip_and_top_blocks_policy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ids = TransRec(IDItemEncoder(12, 16), user_dim=16, dtl=False, max_len=5).eval()
    ids.save_pretrained(tmp_path / "id")
    back = TransRec.from_pretrained(tmp_path / "id")
    assert torch.equal(back.recommend([[1, 2, 3]]).scores, ids.recommend([[1, 2, 3]]).scores)

    text = helpers.text_model(seed=0)
    summary = text.set_policy("top_blocks", top=1)
    trainable = {n for n, p in text.named_parameters() if p.requires_grad}
    assert any(n.startswith("item_encoder.model.encoder.layer.1.") for n in trainable)
    assert not any(n.startswith(("item_encoder.model.encoder.layer.0.",
                                 "item_encoder.model.embeddings.")) for n in trainable)
    assert any(n.startswith("user_encoder.") for n in trainable) and summary.trainable > 0
    with pytest.raises(ConfigError, match="has 2 blocks"):
        text.set_policy("top_blocks", top=3)
    with pytest.raises(ConfigError, match="top=k goes with"):
        text.set_policy("full", top=1)


@pytest.mark.parametrize("kw", [{"dtl": "moe"}, {"id_fusion": "gate"},
                                {"similarity": "cosine", "temperature": 0.07},
                                {"dtl": "moe", "id_fusion": "add", "similarity": "cosine"}])
def test_item_side_options_survive_save_pretrained(kw: dict[str, object], tmp_path: Path) -> None:
    """The item-side options are part of the checkpoint: a cosine model reloaded with dot
    scores would rank differently without any error."""
    model = _trained(helpers.text_model(seed=1, loss="full_softmax", **kw))
    if model.id_fusion is not None:
        model.id_fusion.exclude([3, 7])  # the exclusions are part of the state too
    model.save_pretrained(tmp_path / "ckpt", include_base=True)
    config = json.loads((tmp_path / "ckpt" / "transrec_config.json").read_text())["transrec"]
    assert config["dtl"] == kw.get("dtl", "linear")
    assert config["id_fusion"] == kw.get("id_fusion")
    assert config["similarity"] == kw.get("similarity", "dot")
    loaded = TransRec.from_pretrained(tmp_path / "ckpt")
    assert (loaded.dtl_kind, loaded.similarity, loaded.temperature) == (
        model.dtl_kind, model.similarity, model.temperature)
    hist = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8]])
    torch.testing.assert_close(loaded.full_sort_scores(hist), model.full_sort_scores(hist),
                               atol=0, rtol=0)


def test_a_checkpoint_with_a_boolean_dtl_still_loads(model: TransRec, tmp_path: Path) -> None:
    """Folders written before the adaptor name was recorded say ``"dtl": true``."""
    model.save_pretrained(tmp_path / "ckpt", include_base=True)
    file = tmp_path / "ckpt" / "transrec_config.json"
    config = json.loads(file.read_text())
    for key in ("id_fusion", "similarity"):
        del config["transrec"][key]
    config["transrec"]["dtl"] = True
    file.write_text(json.dumps(config))
    helpers.resign(tmp_path / "ckpt")
    loaded = TransRec.from_pretrained(tmp_path / "ckpt")
    assert loaded.dtl_kind == "linear" and loaded.similarity == "dot"
    hist = torch.tensor([[0, 0, 1, 2, 3]])
    torch.testing.assert_close(loaded.full_sort_scores(hist), model.full_sort_scores(hist))


def test_a_custom_dtl_module_is_refused_by_save_pretrained(tmp_path: Path) -> None:
    base = helpers.text_model(seed=0)
    model = TransRec(base.item_encoder, user_dim=16, max_len=5,
                     dtl=torch.nn.Linear(base.item_encoder.dim, 16))
    with pytest.raises(ConfigError, match="Linear, which is not a registered part kind"):
        model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
