"""Torch modules for plain embedding tables.

>>> import torch
>>> tables = build_tables((10, 20), dim=4, layout="fused")
>>> tables(torch.tensor([[[1], [19]]])).shape   # ids [B=1, T=2, L=1] -> vectors [B, T, D]
torch.Size([1, 2, 4])
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import ConfigError
from harness.core.precision import QUANTIZED, row_bytes
from harness.workload.representations.table import fused_sgd, kernels


def _dlrm_init_(weight: torch.Tensor, rows: int) -> None:
    # The DLRM reference initialises each table uniformly in +-sqrt(1/rows).
    bound = math.sqrt(1.0 / rows)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class FusedTables(nn.Module):
    """All tables stacked in one weight; one embedding_bag call for every (sample, feature) bag.

    Ids are per-table (0..rows_t-1); the module adds each table's row offset, so callers never see the
    fused layout. One call instead of T keeps per-query overhead flat as the number of tables grows.
    Rows are fp32 until `store_as` (after training) stores them as fp16, int8 or int4.
    """

    # A path's compute precision never casts the rows (harness/workload/precision.py).
    keeps_storage_dtype = True
    BAG_MIN_LOOKUPS = 4096  # one-id bags from which embedding_bag's kernel beats F.embedding (see forward)
    row_offsets: torch.Tensor  # buffers, declared for the type checker
    table_sizes: torch.Tensor
    packed: torch.Tensor

    def __init__(self, table_rows: tuple[int, ...], dim: int, sparse_grad: bool = False) -> None:
        super().__init__()
        self.table_rows = tuple(int(r) for r in table_rows)
        self.dim = dim
        self.sparse_grad = sparse_grad
        # How multi-id bags are pooled, a device setting given by `configure` (harness/workload/device.py):
        # bag, F.embedding_bag (fastest on CPU and CUDA); gather_sum, F.embedding then a sum, which XLA
        # compiles natively where embedding_bag falls back to the host.
        self.pooling = "bag"
        self.weight = nn.Parameter(torch.empty(sum(self.table_rows), dim))
        starts = [0]
        for rows in self.table_rows[:-1]:
            starts.append(starts[-1] + rows)
        self.register_buffer("row_offsets", torch.tensor(starts, dtype=torch.int64), persistent=False)
        self.register_buffer("table_sizes", torch.tensor(self.table_rows, dtype=torch.int64),
                             persistent=False)
        self._starts = starts
        self._bag_starts: torch.Tensor | None = None  # 0, 1, 2, ...: one-id bags' offsets (`_one_id_offsets`)
        self.fused_sgd_lr: float | None = None  # set by enable_fused_sgd: SGD inside the backward
        self.storage = "fp32"
        self.quantized_lookup = "fbgemm"  # device setting: fbgemm (fused quantized kernel) or gather
        self.one_id_lookup = "embedding"  # device setting: embedding_bag for large one-id queries on CPUs
        self.small_quantized_lookup = "quantized_lookup"  # device setting: c_kernel, small int8/int4 queries
        for start, rows in zip(starts, self.table_rows):
            _dlrm_init_(self.weight[start : start + rows], rows)

    def configure(self, settings) -> None:
        """Take the device's settings (harness/workload/device.py): bags' pooling, quantized rows' lookup
        (small int8 queries' apart), large one-id queries' kernel."""
        self.pooling = settings.bag_pooling
        self.quantized_lookup = settings.quantized_lookup
        self.one_id_lookup = settings.one_id_lookup
        self.small_quantized_lookup = settings.small_quantized_lookup

    def kernel_choices(self) -> dict[str, str]:
        """Which code looks up small int8 or int4 queries (recorded with the run: workload/device.py)."""
        if self.storage not in kernels.BITS or self.small_quantized_lookup != "c_kernel":
            return {}
        ok, why = kernels.available()
        if self.packed.device.type != "cpu":
            ok, why = False, f"the rows are on {self.packed.device.type}"
        return {"quantized_small_lookup": "C kernel" if ok else f"{self.quantized_lookup} ({why})"}

    def store_as(self, storage: str) -> None:
        """Store the rows as `storage` from now on (inference only): fp16; int8 in FBGEMM's row-wise
        byte layout, D uint8 values then an fp32 scale and bias per row (`scale = (max - min) / 255`,
        `bias = min`: every row keeps its own range); or int4 in FBGEMM's 4-bit layout, D/2 bytes of two
        values each (the even one in the low nibble) then an fp16 scale and bias (`(max - min) / 15`)."""
        if storage == self.storage:
            return
        if self.storage != "fp32":
            raise ValueError(f"tables already stored as {self.storage}; quantize from fp32 only")
        weight = self.weight.detach()
        if storage == "fp16":
            self.weight = nn.Parameter(weight.half(), requires_grad=False)
        elif storage in QUANTIZED:
            self.register_buffer("packed", quantize_rows(weight, bits=8 if storage == "int8" else 4))
            self.register_parameter("weight", None)  # quantized rows live in `packed` alone
        else:
            raise ConfigError("representation.storage", f"unknown table storage {storage!r}")
        self.storage = storage

    def dequantized(self) -> torch.Tensor:
        """The rows as fp32, as the lookup sees them: quantized rows' values times scale plus bias."""
        if self.storage == "int8":
            return dequantize_rows(self.packed, self.dim)
        if self.storage == "int4":
            return dequantize_4bit_rows(self.packed, self.dim)
        return self.weight.detach().float()

    def enable_fused_sgd(self, lr: float) -> bool:
        """Apply SGD to this table inside the backward (fused_sgd.py) instead of producing a gradient;
        False (nothing changed) where the kernel is unavailable. The weight then never gets a .grad."""
        if not fused_sgd.available()[0]:
            return False
        self.fused_sgd_lr = lr
        return True

    def _fused_training(self) -> bool:
        return self.fused_sgd_lr is not None and torch.is_grad_enabled() and self.weight.requires_grad

    def table_weight(self, t: int) -> torch.Tensor:
        start = int(self.row_offsets[t])
        weight = self.weight if self.storage == "fp32" else self.dequantized()
        return weight[start : start + self.table_rows[t]]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch, tables, per_bag = ids.shape
        if (self.storage in kernels.BITS and self.small_quantized_lookup == "c_kernel"
                and ids.numel() < kernels.SMALL_MAX_LOOKUPS[self.storage]):
            # FBGEMM's call costs more than a few rows do (table/kernels.py): the same sums, bit for bit, the
            # row offsets added in the same C call
            out = kernels.quantized_bags(self.packed, ids, self.row_offsets, self.table_sizes, self.dim,
                                         self.storage)
            if out is not None:
                return out
        if self.storage in QUANTIZED:
            flat = (ids + self.row_offsets.view(1, tables, 1)).reshape(-1)
            return self._quantized_bags(flat, per_bag).view(batch, tables, self.dim)
        if self._fused_training():
            shifted = ids + self.row_offsets.view(1, tables, 1)
            return fused_sgd.FixedBagsSGD.apply(self.weight, shifted, self.fused_sgd_lr)
        flat = (ids + self.row_offsets.view(1, tables, 1)).view(batch * tables, per_bag)
        if per_bag == 1 and (self.one_id_lookup == "embedding_bag" and flat.shape[0] >= self.BAG_MIN_LOOKUPS
                             and self.storage == "fp32"
                             and not (torch.is_grad_enabled() and self.weight.requires_grad)):
            # Many one-id bags in CPU inference (the device setting one_id_lookup): embedding_bag's kernel
            # (FBGEMM's, which prefetches rows) gathers them 3x faster than F.embedding's index_select
            # (0.75 vs 2.3 ms for 106k rows of a 2 GB table); a bag of one id is that row, bit for bit.
            starts = self._one_id_offsets(flat.shape[0], flat.device)
            out = F.embedding_bag(flat.view(-1), self.weight, starts, mode="sum")
        elif per_bag == 1:
            # Few ids (its fixed cost is less: 3.7 vs 12 us at 26), or training (the simplest backward).
            out = F.embedding(flat.view(-1), self.weight, sparse=self.sparse_grad)
        elif self.pooling == "gather_sum" or self.storage == "fp16":
            # fp16 rows are pooled in fp32, as int8 rows are: a bag's sum keeps the rows' precision.
            out = F.embedding(flat, self.weight, sparse=self.sparse_grad).sum(1, dtype=torch.float32)
        else:
            out = F.embedding_bag(flat, self.weight, mode="sum", sparse=self.sparse_grad)
        return out.view(batch, tables, self.dim)

    def _one_id_offsets(self, n: int, device: torch.device) -> torch.Tensor:
        """0, 1, ..., n - 1, the offsets of n one-id bags, kept from the largest query so far: F.embedding_bag
        made them with an arange every call for a 2-D input (the lookup 1.06-1.10x at q = 1024, 0.95-1.01x at
        4096, two interleaved runs: docs/performance.md)."""
        starts = self._bag_starts
        if starts is None or starts.numel() < n or starts.device != device:
            starts = self._bag_starts = torch.arange(n, device=device)
        return starts[:n]

    def _quantized_bags(self, flat: torch.Tensor, per_bag: int) -> torch.Tensor:
        """Sums of bags of `per_bag` consecutive ids of `flat` from the int8 or int4 rows, in fp32."""
        int8 = self.storage == "int8"
        if self.quantized_lookup == "fbgemm":
            offsets = (self._one_id_offsets(flat.numel(), flat.device) if per_bag == 1
                       else torch.arange(0, flat.numel(), per_bag, device=flat.device))
            # FBGEMM's fused kernels: gather, dequantize and sum in one pass (int8's was 3.5x faster than
            # the gather below on a CPU at query size 4096; docs/performance.md).
            bag = (torch.ops.quantized.embedding_bag_byte_rowwise_offsets if int8
                   else torch.ops.quantized.embedding_bag_4bit_rowwise_offsets)
            return bag(self.packed, flat, offsets, False, 0, False, None, None, False)
        rows = self.packed.index_select(0, flat)
        out = dequantize_rows(rows, self.dim) if int8 else dequantize_4bit_rows(rows, self.dim)
        return out.view(-1, per_bag, self.dim).sum(1) if per_bag > 1 else out

    def forward_jagged(self, values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Ragged bags (multi-hot features of varying length) -> [B, T, D] sums; one embedding_bag call.

        The layout is TorchRec's KeyedJaggedTensor's: `lengths` [T, B] ids per (table, sample) bag and
        `values` every id, table-major (table 0's bags in sample order, then table 1's, ...). An empty bag
        sums to zeros.

        >>> tables = build_tables((10, 20), dim=4)
        >>> tables.forward_jagged(torch.tensor([1, 2, 3, 19]), torch.tensor([[2, 1], [0, 1]])).shape
        torch.Size([2, 2, 4])
        """
        if self.storage in QUANTIZED:
            raise NotImplementedError(f"ragged bags read fp32 or fp16 tables; {self.storage} tables take "
                                      "[B, T, L] ids")
        tables, batch = lengths.shape
        # Each table's ids are one contiguous run of `values`: shift the runs in place, one foreach call
        # (3x faster than adding a repeat_interleave'd offset per id: 1.5 vs 4.7 ms at 900k ids here).
        shifted = values.clone()
        torch._foreach_add_(list(shifted.split(lengths.sum(1).tolist())), self._starts)
        offsets = torch.zeros(tables * batch + 1, dtype=torch.int64, device=values.device)
        torch.cumsum(lengths.reshape(-1), 0, out=offsets[1:])
        if self._fused_training():
            out = fused_sgd.JaggedBagsSGD.apply(self.weight, shifted, lengths, offsets, self.fused_sgd_lr)
        else:
            out = F.embedding_bag(shifted, self.weight, offsets, mode="sum", sparse=self.sparse_grad,
                                  include_last_offset=True)
        # [B, T, D] as a strided view: the consumer (DLRM's interaction) concatenates it with the dense
        # vector anyway, and that copy reads the strides for free; a .contiguous() here cost 1 ms at 4096.
        return out.view(tables, batch, self.dim).transpose(0, 1)


def quantize_rows(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """fp32 rows [N, D] -> uint8 rows in FBGEMM's row-wise layout (torch's own prepack, on the CPU):
    8 bits, [N, D + 8] (fp32 scale and bias); 4 bits, [N, D/2 + 4] (fp16 scale and bias)."""
    dim = weight.shape[1]
    prepack = (torch.ops.quantized.embedding_bag_byte_prepack if bits == 8 else
               lambda part: torch.ops.quantized.embedding_bag_4bit_prepack(part, False))  # min/max qparams
    packed = torch.empty(weight.shape[0], row_bytes("int8" if bits == 8 else "int4", dim), dtype=torch.uint8)
    step = 1 << 20  # rows at a time: the temporaries stay small next to a 2 GB table
    for start in range(0, weight.shape[0], step):
        packed[start : start + step] = prepack(weight[start : start + step].float().cpu().contiguous())
    return packed.to(weight.device)


def dequantize_rows(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """uint8 [N, D + 8] rows -> fp32 [N, D]: values x scale + bias, as FBGEMM's kernels compute them."""
    scale_bias = packed[:, dim:].contiguous().view(torch.float32)  # [N, 2]
    return torch.addcmul(scale_bias[:, 1:], packed[:, :dim].float(), scale_bias[:, :1])


def dequantize_4bit_rows(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """uint8 [N, D/2 + 4] rows -> fp32 [N, D]: FBGEMM's 4-bit rows (value 2j in byte j's low nibble,
    2j + 1 in its high one; then the fp16 scale and bias), values x scale + bias as its kernels do.

    >>> rows = quantize_rows(torch.tensor([[0.0, 1.5, 3.0, 0.2]]), bits=4)   # 15 steps of 0.2 from 0
    >>> rows.shape, dequantize_4bit_rows(rows, 4)
    (torch.Size([1, 6]), tensor([[0.0000, 1.5996, 2.9993, 0.2000]]))
    """
    half = dim // 2
    nibbles = packed[:, :half]
    values = torch.stack((nibbles & 0xF, nibbles >> 4), dim=-1).view(packed.shape[0], dim)
    scale_bias = packed[:, half : half + 4].contiguous().view(torch.float16).float()  # [N, 2]
    return torch.addcmul(scale_bias[:, 1:], values.float(), scale_bias[:, :1])


class PerTableBags(nn.Module):
    """One nn.EmbeddingBag(sum) per feature: the textbook layout, kept to measure against the fused one."""

    keeps_storage_dtype = True  # fp32 rows whatever the compute precision (only fused tables store less)

    def __init__(self, table_rows: tuple[int, ...], dim: int, sparse_grad: bool = False) -> None:
        super().__init__()
        self.table_rows = tuple(int(r) for r in table_rows)
        self.dim = dim
        self.bags = nn.ModuleList(
            nn.EmbeddingBag(rows, dim, mode="sum", sparse=sparse_grad) for rows in self.table_rows
        )
        for bag, rows in zip(self.bags, self.table_rows):
            _dlrm_init_(cast(nn.EmbeddingBag, bag).weight, rows)

    def table_weight(self, t: int) -> torch.Tensor:
        return cast(nn.EmbeddingBag, self.bags[t]).weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.stack([bag(ids[:, t, :]) for t, bag in enumerate(self.bags)], dim=1)


def build_tables(table_rows: tuple[int, ...], dim: int, layout: str = "fused", sparse_grad: bool = False):
    if layout == "fused":
        return FusedTables(table_rows, dim, sparse_grad)
    if layout == "per_table":
        return PerTableBags(table_rows, dim, sparse_grad)
    raise ConfigError("representation.layout", f"unknown table layout {layout!r}")
