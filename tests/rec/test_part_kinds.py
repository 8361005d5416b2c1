"""Every part kind round-trips through `save_pretrained` / `from_pretrained` with identical scores
(text with its tokenizer, image with its image processor, multimodal concat and IISAN side fusion,
ID, fixed and trainable precomputed tables, a side-network text encoder, an adaptor passed as a
module); folders of format 1 still load and reproduce their recommendations; a hand-edited JSON is
refused, and the supported edit path (load, change through the model, save) works."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tiny_transrec as helpers
import torch
import transformers as tf

from adarec import adapter_sets, eject_adapters
from adarec.errors import CheckpointError, ConfigError
from adarec.rec import (
    IDItemEncoder,
    ImageItemEncoder,
    MultimodalItemEncoder,
    PrecomputedItemEncoder,
    TextItemEncoder,
    TransRec,
    WhiteningMoEAdaptor,
)
from adarec.rec.kinds import kinds

FIXTURES = Path(__file__).parents[1] / "fixtures"
N = 12
HIST = torch.tensor([[0, 0, 1, 2, 3], [4, 5, 6, 7, 8], [0, 0, 0, 0, 9]])
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(40)]]


def _tokenizer() -> Any:
    return tf.BertTokenizerFast(vocab={w: i for i, w in enumerate(WORDS)})


def _texts(n: int, offset: int = 0) -> list[str]:
    return [" ".join(f"w{(i * 7 + j + offset) % 40}" for j in range(1 + i % 5)) for i in range(n)]


def _text(seed: int = 0) -> TextItemEncoder:
    torch.manual_seed(seed)
    bert = tf.BertModel(tf.BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=32,
                                      max_position_embeddings=16, hidden_dropout_prob=0.0,
                                      attention_probs_dropout_prob=0.0))
    return TextItemEncoder.from_item_texts(bert, _tokenizer(), _texts(N), max_length=8,
                                           pooling="mean")


def _processor() -> Any:
    return tf.ViTImageProcessor(size={"height": 16, "width": 16}, do_resize=True)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.integers(0, 255, (20, 20, 3), dtype=np.uint8) for _ in range(n)]


def _image(seed: int = 0) -> ImageItemEncoder:
    torch.manual_seed(seed)
    vit = tf.ViTModel(tf.ViTConfig(image_size=16, patch_size=8, hidden_size=16,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=32, hidden_dropout_prob=0.0,
                                   attention_probs_dropout_prob=0.0), add_pooling_layer=False)
    return ImageItemEncoder.from_images(vit, _processor(), _images(N))


def _perturb(model: torch.nn.Module) -> TransRec:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()  # type: ignore[return-value]


def _side_multimodal() -> TransRec:
    model = TransRec(MultimodalItemEncoder(_text(), _image(), fusion="side", side_width=8),
                     user_dim=16, max_len=5, dropout=0.0)
    model.inject_adapters(item="side")
    return model


MODELS = {
    "text+houlsby": lambda: _with(TransRec(_text(), user_dim=16, max_len=5, dropout=0.0),
                                  item="houlsby", user="lora"),
    "text+side": lambda: _with(TransRec(_text(), user_dim=16, max_len=5, dropout=0.0),
                               item="side"),
    "image+lora": lambda: _with(TransRec(_image(), user_dim=16, max_len=5, dropout=0.0),
                                item="lora"),
    "multimodal-concat": lambda: TransRec(MultimodalItemEncoder(_text(), _image()), user_dim=16,
                                          max_len=5, dropout=0.0, dtl="moe"),
    "multimodal-side": _side_multimodal,
    "id": lambda: TransRec(IDItemEncoder(N, 16), user_dim=16, max_len=5, dtl=False),
    "precomputed": lambda: TransRec(PrecomputedItemEncoder(torch.randn(N + 1, 6)), user_dim=16,
                                    max_len=5, similarity="cosine", temperature=0.2),
    "precomputed-trainable": lambda: TransRec(
        PrecomputedItemEncoder(torch.randn(N + 1, 6), trainable=True), user_dim=16, max_len=5,
        id_fusion="gate"),
    "moe-module": lambda: TransRec(PrecomputedItemEncoder(torch.randn(N + 1, 6)), user_dim=16,
                                   max_len=5, dtl=WhiteningMoEAdaptor(6, 16, n_experts=3,
                                                                      dropout=0.0)),
}


def _with(model: TransRec, **adapters: str) -> TransRec:
    model.inject_adapters(**adapters)
    return model


@pytest.mark.filterwarnings("ignore:the base encoder")  # built from configs: base= is passed
@pytest.mark.parametrize("include_base", [True, False])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_kind_round_trips(name: str, include_base: bool, tmp_path: Path) -> None:
    model = _perturb(MODELS[name]())
    base = None
    if not include_base:
        hf = model.item_encoder.hf_models()
        if not hf:
            pytest.skip("no base encoder to leave out")
        # the same base weights, passed in as models (a dict by path when there are several)
        fresh = MODELS[name]().item_encoder.hf_models()
        for new, old in zip(fresh, hf, strict=True):
            for set_name in list(adapter_sets(new)):
                eject_adapters(new, set_name)
            new.load_state_dict({k: v for k, v in old.state_dict().items()
                                 if ".adarec_adapters." not in k}, strict=False)
        paths = {"multimodal": ["item_encoder.text.model", "item_encoder.image.model"]}
        keys = paths.get(getattr(model.item_encoder, "kind", ""), ["item_encoder.model"])
        base = dict(zip(keys, fresh, strict=True)) if len(fresh) > 1 else fresh[0]
    model.save_pretrained(tmp_path / "m", include_base=include_base)
    loaded = TransRec.from_pretrained(tmp_path / "m", base=base)
    assert type(loaded.item_encoder) is type(model.item_encoder)
    torch.testing.assert_close(loaded.full_sort_scores(HIST), model.full_sort_scores(HIST),
                               atol=0, rtol=0)
    assert torch.equal(loaded.recommend(HIST, k=4).indices, model.recommend(HIST, k=4).indices)


def test_preprocessors_travel_with_the_folder_and_new_items_encode_alike(tmp_path: Path) -> None:
    for make, kw in ((lambda: TransRec(_text(), user_dim=16, max_len=5), "texts"),
                     (lambda: TransRec(_image(), user_dim=16, max_len=5), "images")):
        model = _perturb(make())
        model.set_item_map([None, *[f"i{i}" for i in range(1, N + 1)]])
        model.save_pretrained(tmp_path / kw, include_base=True)
        loaded = TransRec.from_pretrained(tmp_path / kw)
        new = _texts(2, offset=5) if kw == "texts" else _images(2, seed=9)
        for m in (model, loaded):
            assert m.add_items(["n1", "n2"], **{kw: new}) == [N + 1, N + 2]
        torch.testing.assert_close(loaded.item_table(), model.item_table(), atol=0, rtol=0)


def test_multimodal_models_with_two_bases_need_base_by_path(tmp_path: Path) -> None:
    model = _perturb(_side_multimodal())
    with pytest.warns(UserWarning, match="loading this folder needs base="):
        model.save_pretrained(tmp_path / "m")
    with pytest.raises(ConfigError, match="2 base encoders"):
        TransRec.from_pretrained(tmp_path / "m", base=tf.BertModel(tf.BertConfig()))
    with pytest.raises(ConfigError, match="base= names"):
        TransRec.from_pretrained(tmp_path / "m", base={"item_encoder.nope": None})


def test_an_unregistered_part_is_refused_by_name(tmp_path: Path) -> None:
    class Plain(torch.nn.Module):
        dim, transferable = 4, True
        n_items = N

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return torch.zeros(ids.numel(), 4)

        def hf_models(self) -> list[torch.nn.Module]:
            return []

        def invalidate_cache(self) -> None: ...
        def add_items(self, inputs: Any, preprocessor: Any = None) -> None: ...
        def to_config(self) -> dict[str, Any]:
            return {}

    with pytest.raises(ConfigError, match="Plain, which is not a registered part kind"):
        TransRec(Plain(), user_dim=4, max_len=5).save_pretrained(tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ConfigError, match="not an item encoder"):
        TransRec(torch.nn.Linear(2, 2), user_dim=4)  # type: ignore[arg-type]
    assert {"text", "image", "multimodal", "id", "precomputed", "sasrec"} <= set(kinds())


@pytest.mark.parametrize("name", ["text", "id", "precomputed"])
def test_format_1_folders_load_and_reproduce_their_recommendations(name: str) -> None:
    reference = json.loads((FIXTURES / "transrec_reference.json").read_text())[name]
    with pytest.warns(UserWarning, match="format-1 TransRec folder"):
        model = TransRec.from_pretrained(FIXTURES / "transrec_v1" / name)
    hist = [[1, 2, 3], [5, 7], [8, 1, 4, 6]]
    if model.item_ids:
        hist = [[f"item{i}" for i in h] for h in hist]
    rec = model.recommend(hist, k=3)
    assert rec.items == reference["items"]
    np.testing.assert_allclose(rec.scores.numpy(), reference["scores"], atol=2e-5)


def _edit(folder: Path, change: Any) -> None:
    file = folder / "transrec_config.json"
    config = json.loads(file.read_text())
    change(config)
    file.write_text(json.dumps(config))


def _swap_two_ids(config: dict[str, Any]) -> None:
    ids = config["items"]["ids"]
    ids[1], ids[2] = ids[2], ids[1]


EDITS = {
    "swap two raw ids in the item map": _swap_two_ids,
    "another temperature": lambda c: c["transrec"].update(temperature=0.5),
    "an adapter set switched off": lambda c: c["adapter_sets"][0].update(active=False),
    "another pooling": lambda c: c["item_encoder"].update(pooling="cls"),
    "a base config value": lambda c: c["bases"]["item_encoder.model"]["config"].update(
        layer_norm_eps=0.1),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_hand_edited_folder_is_refused(edit: str, tmp_path: Path) -> None:
    model = _perturb(_with(TransRec(_text(), user_dim=16, max_len=5), item="houlsby"))
    model.set_item_map([None, *[f"i{i}" for i in range(1, N + 1)]])
    model.save_pretrained(tmp_path / "m", include_base=True)
    _edit(tmp_path / "m", EDITS[edit])
    with pytest.raises(CheckpointError, match="was edited after it was written"):
        TransRec.from_pretrained(tmp_path / "m")


def test_the_supported_edit_path_is_load_change_save(tmp_path: Path) -> None:
    model = _perturb(TransRec(_text(), user_dim=16, max_len=5))
    model.set_item_map([None, *[f"i{i}" for i in range(1, N + 1)]])
    model.save_pretrained(tmp_path / "m", include_base=True)
    loaded = TransRec.from_pretrained(tmp_path / "m")
    ids = list(loaded.item_ids or [])
    ids[1], ids[2] = ids[2], ids[1]
    loaded.set_item_map(ids)
    loaded.add_items(["new"], texts=_texts(1, offset=3))
    loaded.save_pretrained(tmp_path / "m", include_base=True)  # replaced atomically
    again = TransRec.from_pretrained(tmp_path / "m")
    assert again.item_ids == [*ids, "new"]
    assert again.recommend([["i2", "new"]], k=3).items == loaded.recommend(
        [["i2", "new"]], k=3).items


def test_format_1_folders_resave_as_the_current_format(tmp_path: Path) -> None:
    shutil.copytree(FIXTURES / "transrec_v1" / "text", tmp_path / "old")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = TransRec.from_pretrained(tmp_path / "old")
    model.save_pretrained(tmp_path / "new", include_base=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no format-1 warning any more
        back = TransRec.from_pretrained(tmp_path / "new")
    hist = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    torch.testing.assert_close(back.full_sort_scores(hist), model.full_sort_scores(hist),
                               atol=0, rtol=0)
    assert (tmp_path / "new" / "transrec_config.json").is_file()
    _ = helpers  # the shared tiny models live there
