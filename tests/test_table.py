"""Table lookups equal a manual gather-sum, in both layouts."""

from __future__ import annotations

import pytest
import torch

from harness.workload.representations.table.module import build_tables

ROWS = (11, 3, 40, 2)


@pytest.mark.parametrize("layout", ["fused", "per_table"])
@pytest.mark.parametrize("per_bag", [1, 4])
def test_lookup_equals_manual_gather_sum(layout, per_bag):
    torch.manual_seed(0)
    tables = build_tables(ROWS, dim=5, layout=layout)
    ids = torch.stack([torch.randint(0, r, (7, per_bag)) for r in ROWS], dim=1)
    out = tables(ids)
    assert out.shape == (7, len(ROWS), 5)
    for t in range(len(ROWS)):
        weight = tables.table_weight(t)
        for b in range(7):
            expected = weight[ids[b, t]].sum(0)
            torch.testing.assert_close(out[b, t], expected)


def test_fused_offsets_keep_tables_apart():
    tables = build_tables((2, 2), dim=1, layout="fused")
    with torch.no_grad():
        tables.weight.copy_(torch.tensor([[1.0], [2.0], [10.0], [20.0]]))
    out = tables(torch.tensor([[[1], [0]]]))
    assert out.flatten().tolist() == [2.0, 10.0]


def test_initialisation_is_bounded_by_dlrm_rule():
    tables = build_tables((100, 10_000), dim=8, layout="fused")
    assert tables.table_weight(0).abs().max() <= 0.1 + 1e-6
    assert tables.table_weight(1).abs().max() <= 0.01 + 1e-6


def test_ragged_bags_equal_a_manual_gather_sum_and_train_sparsely():
    """forward_jagged: TorchRec's KeyedJaggedTensor layout (table-major values, [T, B] lengths), empty
    bags included; with sparse gradients only the looked-up rows get a gradient."""
    gen = torch.Generator().manual_seed(0)
    tables = build_tables(ROWS, dim=3, layout="fused", sparse_grad=True)
    lengths = torch.randint(0, 5, (len(ROWS), 6), generator=gen)
    lengths[1, 2] = 0
    values = torch.cat([torch.randint(0, r, (int(n),), generator=gen) for r, n in zip(ROWS, lengths.sum(1))])
    out = tables.forward_jagged(values, lengths)
    assert out.shape == (6, len(ROWS), 3)
    position = 0
    for t in range(len(ROWS)):
        for b in range(6):
            n = int(lengths[t, b])
            torch.testing.assert_close(out[b, t],
                                       tables.table_weight(t)[values[position : position + n]].sum(0))
            position += n
    out.sum().backward()
    grad = tables.weight.grad
    assert grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    starts = [0, 11, 14, 54]
    expected = {starts[t] + int(v)
                for t, chunk in enumerate(values.split(lengths.sum(1).tolist())) for v in chunk}
    assert touched == expected


def _twins(rows, dim=4):
    torch.manual_seed(3)
    fused = build_tables(rows, dim=dim, layout="fused")
    sparse = build_tables(rows, dim=dim, layout="fused", sparse_grad=True)
    sparse.load_state_dict(fused.state_dict())
    return fused, sparse


def _sparse_sgd_step(module, forward, grad, lr):
    optimizer = torch.optim.SGD([module.weight], lr=lr)
    forward(module).backward(grad)
    optimizer.step()


@pytest.mark.parametrize("per_bag, threads", [(1, 1), (3, 1), (1, 3), (3, 2)])
def test_fused_sgd_equals_sparse_gradients_and_sgd(per_bag, threads, monkeypatch):
    """The update inside the backward is the sparse-gradient SGD step: duplicates across bags (tiny
    tables) accumulate; the weight gets no .grad; the forward is unchanged. On one thread and split by
    table across several."""
    from harness.workload.representations.table import fused_sgd

    if not fused_sgd.available()[0]:
        pytest.skip(fused_sgd.available()[1])  # no C compiler here: training keeps sparse gradients
    monkeypatch.setattr(fused_sgd, "_PARALLEL_MIN_IDS", 0)
    monkeypatch.setattr(fused_sgd, "_threads", lambda ids: threads)
    rows = (2, 5, 1000, 3)
    fused, sparse = _twins(rows)
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randint(0, r, (64, per_bag), generator=gen) for r in rows], dim=1)
    grad = torch.randn(64, len(rows), 4, generator=gen)
    assert fused.enable_fused_sgd(0.1)
    out = fused(ids)
    torch.testing.assert_close(out, sparse(ids).detach())
    out.backward(grad)
    _sparse_sgd_step(sparse, lambda m: m(ids), grad, 0.1)
    assert fused.weight.grad is None
    torch.testing.assert_close(fused.weight.detach(), sparse.weight.detach(), rtol=1e-6, atol=1e-6)
    with torch.no_grad():  # inference never updates
        before = fused.weight.clone()
        fused(ids)
        assert torch.equal(before, fused.weight)


def test_fused_sgd_on_ragged_bags_equals_sparse_gradients_and_sgd(monkeypatch):
    from harness.workload.representations.table import fused_sgd

    rows = (2, 700, 40)
    if not fused_sgd.available()[0]:
        pytest.skip(fused_sgd.available()[1])
    fused, sparse = _twins(rows)
    gen = torch.Generator().manual_seed(1)
    lengths = torch.randint(0, 17, (len(rows), 50), generator=gen)
    values = torch.cat([torch.randint(0, r, (int(n),), generator=gen) for r, n in zip(rows, lengths.sum(1))])
    grad = torch.randn(50, len(rows), 4, generator=gen)
    assert fused.enable_fused_sgd(0.05)
    monkeypatch.setattr(fused_sgd, "_threads", lambda ids: 2)
    fused.forward_jagged(values, lengths).backward(grad)
    _sparse_sgd_step(sparse, lambda m: m.forward_jagged(values, lengths), grad, 0.05)
    torch.testing.assert_close(fused.weight.detach(), sparse.weight.detach(), rtol=1e-6, atol=1e-6)


def test_without_the_kernel_training_keeps_sparse_gradients(monkeypatch, tmp_path):
    from harness.workload import ckernels
    from harness.workload.representations.table import fused_sgd
    from harness.workload.training import enable_fused_sgd, make_optimizer

    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("MPREC_KERNEL_DIR", str(tmp_path))  # no cached build: it must compile, and cannot
    ckernels.forget("fused_sgd")
    try:
        ok, why = fused_sgd.available()
        assert not ok and "unavailable" in why
        tables = build_tables(ROWS, dim=3, sparse_grad=True)
        model = torch.nn.Sequential(tables)
        assert enable_fused_sgd(model, 0.1) == 0 and tables.fused_sgd_lr is None
        assert make_optimizer(model, "sgd", 0.1).param_groups[0]["params"] == [tables.weight]
    finally:
        ckernels.forget("fused_sgd")
    monkeypatch.delenv("CC")
    monkeypatch.delenv("MPREC_KERNEL_DIR")
    if fused_sgd.available()[0]:  # with the kernel: the table's weight is left out of the optimizer
        assert enable_fused_sgd(model, 0.1) == 1
        with pytest.raises(ValueError, match="empty parameter list"):
            make_optimizer(model, "sgd", 0.1)


def test_thread_spans_cover_every_table_once():
    from harness.workload.ckernels import spans as _spans

    for weights, parts in [([1] * 26, 2), ([5, 1, 1, 1, 100, 1], 3), ([7], 4), ([1, 1], 8)]:
        spans = _spans(weights, parts)
        assert spans[0][0] == 0 and spans[-1][1] == len(weights) and len(spans) <= parts
        assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_one_id_bags_keep_their_offsets_across_query_sizes():
    """Large one-id queries on CPUs take embedding_bag with offsets kept from the largest query so far:
    every size, larger then smaller, still sums the right rows (each bag's one row)."""
    tables = build_tables((5000, 300), dim=8).eval()
    tables.one_id_lookup = "embedding_bag"
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for batch in (2048, 4096, 2500, 3000):  # 2 tables: 4096 to 8192 bags, past BAG_MIN_LOOKUPS
            ids = torch.stack([torch.randint(0, r, (batch, 1), generator=gen) for r in (5000, 300)], dim=1)
            expected = torch.stack([tables.table_weight(t)[ids[:, t, 0]] for t in range(2)], dim=1)
            assert torch.equal(tables(ids), expected), batch
    assert tables._bag_starts is not None and tables._bag_starts.numel() == 8192
