"""The small-query int8/int4 kernel (harness/workload/representations/table/kernels.py): FBGEMM's sums bit
for bit, ids checked before any row is read, taken only below its threshold, FBGEMM where it cannot run."""

from __future__ import annotations

import pytest
import torch

from harness.workload import ckernels
from harness.workload.device import DeviceCapabilities, configure_for
from harness.workload.representations.table import kernels
from harness.workload.representations.table.module import FusedTables, quantize_rows

pytestmark = pytest.mark.skipif(not kernels.available()[0], reason="no C compiler")


def _fbgemm(packed: torch.Tensor, flat: torch.Tensor, per_bag: int, storage: str = "int8") -> torch.Tensor:
    offsets = torch.arange(0, flat.numel(), per_bag)
    bag = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if storage == "int8"
           else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
    return bag(packed, flat, offsets, False, 0, False, None, None, False)


ROWS = (300, 40)  # two tables, fused: table 1's rows from 300


def _rows(dim: int, seed: int = 0, storage: str = "int8") -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(sum(ROWS), dim, generator=gen) * torch.logspace(-3, 2, sum(ROWS)).unsqueeze(1)
    weight[0] = 0.0  # a constant row: scale 0
    weight[1] = 7.5  # another, not at zero
    weight[2, ::2] = -1e4  # a wide range
    return quantize_rows(weight, bits=8 if storage == "int8" else 4)


def _lookup(packed: torch.Tensor, ids: torch.Tensor, dim: int, storage: str = "int8") -> torch.Tensor | None:
    return kernels.quantized_bags(packed, ids, torch.tensor([0, ROWS[0]]), torch.tensor(ROWS), dim, storage)


@pytest.mark.parametrize("storage, dim", [("int8", 16), ("int8", 7), ("int8", 64), ("int4", 16), ("int4", 6),
                                          ("int4", 64)])  # 7, 6: the plain loop; 16, 64: the AVX2 one too
@pytest.mark.parametrize("per_bag", [1, 3])
def test_the_kernel_sums_equal_fbgemms_bit_for_bit(storage, dim, per_bag):
    packed = _rows(dim, storage=storage)
    gen = torch.Generator().manual_seed(dim)
    ids = torch.stack([torch.randint(0, r, (20, per_bag), generator=gen) for r in ROWS], 1)  # [20, 2, L]
    ids[0, 0, 0], ids[1, 0, 0], ids[2, 0, 0], ids[3, 1, 0] = 0, 1, 2, ROWS[1] - 1  # the edge rows
    got = _lookup(packed, ids, dim, storage)
    assert got is not None and got.shape == (20, 2, dim) and got.dtype == torch.float32
    flat = (ids + torch.tensor([0, ROWS[0]]).view(1, 2, 1)).reshape(-1)
    assert torch.equal(got.view(-1, dim), _fbgemm(packed, flat, per_bag, storage))
    if kernels._fma[kernels._load()[0]] and dim % 8 == 0:  # the plain loop gives the same bits
        kernels._fma[kernels._load()[0]] = False
        try:
            assert torch.equal(_lookup(packed, ids, dim, storage), got)
        finally:
            kernels._fma[kernels._load()[0]] = True


@pytest.mark.parametrize("table, bad", [(0, 300), (0, -1), (1, 40), (1, 10**12)])
def test_an_id_outside_its_own_table_is_named_not_read(table, bad):
    # 40 in table 1 is row 340 of the fused rows, which exist: the fused layout would read it.
    ids = torch.tensor([[[5], [6]], [[7], [8]]])
    ids[1, table, 0] = bad
    rows = ROWS[table]
    named = rf"id {bad} of sample 1, table {table} is outside the table's {rows} rows"
    with pytest.raises(IndexError, match=named):
        _lookup(_rows(16), ids, 16)


def test_ids_it_cannot_take_go_back_to_the_caller():
    packed = _rows(16)
    ids = torch.tensor([[[1], [2]]])
    assert _lookup(packed, ids.to(torch.int32), 16) is None
    assert _lookup(packed, ids[:, :1], 16) is None  # one table's ids for two tables: torch's path raises
    assert _lookup(packed, torch.tensor([[[1], [2], [3]]]), 16) is None  # three: it would read past `rows`
    assert _lookup(packed, ids[0], 16) is None  # not [B, T, L]
    assert _lookup(packed, ids, 8) is None  # rows are dim + 8 bytes: not these
    assert _lookup(packed, ids, 16, "int4") is None  # nor dim / 2 + 4
    assert _lookup(packed, ids, 16, "fp16") is None
    wide = torch.cat([packed, packed], 1)[:, : packed.shape[1]]  # the same bytes, not contiguous
    assert not wide.is_contiguous() and _lookup(wide, ids, 16) is None
    strided = torch.tensor([[[1, 9], [2, 9]]])[..., ::2]  # not contiguous: copied, same sums
    assert torch.equal(_lookup(packed, strided, 16), _lookup(packed, ids, 16))


def _int8_tables(caps: DeviceCapabilities, storage: str = "int8") -> FusedTables:
    torch.manual_seed(0)  # the same rows in every copy
    tables = FusedTables((100, 3000), dim=16).eval()
    tables.store_as(storage)
    configure_for(tables, caps)
    return tables


def test_the_kernel_is_chosen_only_where_fbgemm_takes_the_large_queries():
    # its sums are FBGEMM's bits: a device without FBGEMM's kernels gathers at every size, as one
    assert _int8_tables(DeviceCapabilities(cpu_kernels=True, quantized_bag=False)).small_quantized_lookup \
        == "quantized_lookup"


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_small_queries_take_the_kernel_and_large_ones_fbgemm(monkeypatch, storage):
    tables = _int8_tables(DeviceCapabilities(cpu_kernels=True), storage)
    assert tables.small_quantized_lookup == "c_kernel"
    assert tables.kernel_choices() == {"quantized_small_lookup": "C kernel"}
    calls = []
    real = kernels.quantized_bags
    monkeypatch.setattr(kernels, "quantized_bags", lambda *a: calls.append(a[1].numel()) or real(*a))
    reference = _int8_tables(DeviceCapabilities(), storage)  # the default device: FBGEMM at every size
    assert reference.kernel_choices() == {}
    below = kernels.SMALL_MAX_LOOKUPS[storage] // 2  # bags of 2 tables: the limit - 2 ids, then as many
    for batch in (1, below - 1, below):
        ids = torch.stack([torch.randint(0, 100, (batch, 1)), torch.randint(0, 3000, (batch, 1))], 1)
        with torch.inference_mode():
            assert torch.equal(tables(ids), reference(ids))
    assert calls == [2, 2 * (below - 1)]  # SMALL_MAX_LOOKUPS ids went to FBGEMM


def test_without_a_compiler_fbgemm_looks_up_and_the_run_records_why(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("MPREC_KERNEL_DIR", str(tmp_path))
    ckernels.forget("quantized_bags")
    try:
        tables = _int8_tables(DeviceCapabilities(cpu_kernels=True))
        choice = tables.kernel_choices()["quantized_small_lookup"]
        assert choice.startswith("fbgemm (C kernel quantized_bags unavailable")
        ids = torch.randint(0, 100, (4, 2, 1))
        with torch.inference_mode():
            assert torch.equal(tables(ids), _int8_tables(DeviceCapabilities())(ids))
    finally:
        ckernels.forget("quantized_bags")
