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
    assert out.shape == (6, len(ROWS), 3) and out.is_contiguous()
    position = 0
    for t in range(len(ROWS)):
        for b in range(6):
            n = int(lengths[t, b])
            torch.testing.assert_close(out[b, t], tables.table_weight(t)[values[position : position + n]].sum(0))
            position += n
    out.sum().backward()
    grad = tables.weight.grad
    assert grad.is_sparse
    touched = set(grad.coalesce().indices()[0].tolist())
    starts = [0, 11, 14, 54]
    expected = {starts[t] + int(v) for t, chunk in enumerate(values.split(lengths.sum(1).tolist())) for v in chunk}
    assert touched == expected
