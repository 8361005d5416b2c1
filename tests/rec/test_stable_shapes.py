"""Training shapes that repeat: under CPU bf16 autocast every new matmul shape costs a oneDNN
kernel kept for the process, so the batch-dependent sizes (distinct items, target positions,
candidates) are padded to `stable_size`; the padding must not change the loss or gradients."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import adarec.rec.item_tower as item_tower
import adarec.rec.losses as losses
from adarec.precision import SIZES_PER_OCTAVE, stable_size
from adarec.rec.data import TrainCollator, TrainDataset
from adarec.rec.objective import next_item_loss
from tests.tiny_transrec import text_model

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


def test_stable_size_is_identity_without_cpu_autocast() -> None:
    assert [stable_size(n) for n in (0, 1, 17, 700, 1283)] == [0, 1, 17, 700, 1283]
    with torch.autocast(**BF16):
        assert stable_size(700, "cuda") == 700  # only CPU kernels are kept per shape


def test_stable_size_rounds_up_to_few_sizes_per_octave() -> None:
    with torch.autocast(**BF16):
        sizes = {n: stable_size(n) for n in range(1, 5000)}
    assert all(n <= s <= max(16, n * (1 + 1 / SIZES_PER_OCTAVE)) for n, s in sizes.items())
    for k in range(5, 12):  # n in (2^k, 2^(k+1)] lands on at most 8 sizes
        assert len({sizes[n] for n in range(2**k + 1, 2 ** (k + 1) + 1)}) <= SIZES_PER_OCTAVE
    assert all(sizes[s] == s for s in sizes.values() if s < 5000)  # a padded size stays put


def _pad_by(extra: int):  # type: ignore[no-untyped-def]
    return lambda n, device="cpu": n + extra if n else n


def _loss_and_grads(users: Tensor, cands: Tensor, *args: object) -> tuple[Tensor, ...]:
    u, c = users.clone().requires_grad_(), cands.clone().requires_grad_()
    loss = losses.sampled_softmax_loss(u, c, *args)  # type: ignore[arg-type]
    return (loss.detach(), *torch.autograd.grad(loss, (u, c)))


def test_padded_sampled_softmax_is_the_same_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(0)
    users, cands = torch.randn(37, 8, generator=g), torch.randn(45, 8, generator=g)
    pos = torch.randint(0, 45, (37,), generator=g)
    ids = torch.randint(0, 30, (45,), generator=g)
    logq = torch.randn(45, generator=g)
    for args in ((pos,), (pos, logq, 0.5, ids)):
        plain = _loss_and_grads(users, cands, *args)
        monkeypatch.setattr(losses, "stable_size", _pad_by(11))
        padded = _loss_and_grads(users, cands, *args)
        monkeypatch.undo()
        for a, b in zip(plain, padded, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_padded_item_encoding_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    model = text_model()
    ids = torch.tensor([3, 1, 3, 7, 0, 12, 7])

    def run() -> tuple[Tensor, ...]:
        model.zero_grad()
        out = item_tower.encode_items(model, ids)
        out.square().sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return (out.detach(), *grads)

    plain = run()
    monkeypatch.setattr(item_tower, "stable_size", _pad_by(5))
    seen: list[int] = []
    model.dtl.register_forward_pre_hook(lambda _m, a: seen.append(a[0].size(0)))
    padded = run()
    assert seen == [5 + 5]  # 5 distinct ids, padded by 5 copies
    for a, b in zip(plain, padded, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_under_bf16_autocast_sees_few_shapes() -> None:
    """Batches with 20..120 distinct items: without padding most counts would be a new DTL
    shape; padded, they land on the few sizes of the ladder."""
    n = 200
    model = text_model(loss="sampled_softmax", num_negatives=0)
    model.item_encoder.input_ids = torch.randint(5, 99, (n + 1, 8))
    model.item_encoder.attention_mask = torch.ones(n + 1, 8, dtype=torch.long)
    model.item_encoder.lengths = torch.full((n + 1,), 8)
    shapes: set[tuple[int, ...]] = set()
    model.dtl.register_forward_pre_hook(lambda _m, a: shapes.add(tuple(a[0].shape)))
    g = torch.Generator().manual_seed(0)
    counts = set()
    for size in range(8, 40):
        seqs = [torch.randint(1, n + 1, (size,), generator=g).tolist() for _ in range(3)]
        data = TrainDataset(seqs, 5)
        b = TrainCollator(n, 5, 0, seed=0)([data[i] for i in range(len(data))])
        counts.add(int(torch.unique(torch.cat([b["input_ids"].flatten(),
                                               b["target_ids"].flatten()])).numel()))
        with torch.autocast(**BF16):
            next_item_loss(model, b).backward()
    with torch.autocast(**BF16):
        ladder = {stable_size(c) for c in counts}
    assert len(counts) > len(ladder) + 8 and min(counts) > 16
    rows = {r for r, _ in shapes}
    with torch.autocast(**BF16):
        assert all(stable_size(r) == r for r in rows), sorted(rows)
    assert len(rows) <= len(ladder), sorted(rows)

