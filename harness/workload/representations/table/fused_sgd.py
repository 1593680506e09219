"""SGD applied inside the backward of a table lookup, as TorchRec's fused collections do, on the CPU.

With sparse gradients, torch's SGD step adds a sparse gradient of one row per looked-up id into the table
(`dense.add_(sparse)`), a per-row loop costing ~60 ns a row here, after the backward has expanded each
bag's gradient to every id in it; at 900k ids a step (Kaggle, 1-16 ids per feature, query size 4096) that
was 82 ms against TorchRec's 34 ms. Every torch scatter-add we tried was slower than that (index_add_
220 ms, index_put_ 150, scatter_add_ 57 plus the expansion, a sort and segment sum 113, torch.compile
108; docs/performance.md). This module does what fbgemm does: one pass that subtracts lr x the bag's
gradient from each id's row, in C, with the tables split across threads (rows of different tables never
alias, so threads never race). The same arithmetic as sparse-gradient SGD: W[id] -= lr x sum of the
gradients of the bags it is in (summed in another order: equal within float rounding).

The kernel is compiled on first use (harness/workload/ckernels.py). No compiler: `available()` says why,
and training keeps sparse gradients and the optimizer (the same result).
"""

from __future__ import annotations

import ctypes
import functools

import torch

from harness.workload import ckernels

_SOURCE = r"""
#include <stdint.h>
/* Sample-major bags of a fixed length: bag (s, t) holds ids[(s*T + t)*L .. +L); tables [t0, t1) only. */
void sgd_fixed(float *w, const int64_t *ids, const float *g, int64_t batch, int64_t tables, int64_t per_bag,
               int64_t t0, int64_t t1, int64_t d, float lr) {
    for (int64_t s = 0; s < batch; ++s)
        for (int64_t t = t0; t < t1; ++t) {
            const int64_t b = s * tables + t;
            const float *grad = g + b * d;
            for (int64_t j = 0; j < per_bag; ++j) {
                float *row = w + ids[b * per_bag + j] * d;
                for (int64_t k = 0; k < d; ++k) row[k] -= lr * grad[k];
            }
        }
}
/* Ragged bags: id i belongs to bag bag[i]; ids [v0, v1) only (whole tables: table-major values). */
void sgd_jagged(float *w, const int64_t *ids, const int64_t *bag, const float *g, int64_t v0, int64_t v1,
                int64_t d, float lr) {
    for (int64_t i = v0; i < v1; ++i) {
        float *row = w + ids[i] * d;
        const float *grad = g + bag[i] * d;
        for (int64_t k = 0; k < d; ++k) row[k] -= lr * grad[k];
    }
}
"""

_NAME = "fused_sgd"
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {
    "sgd_fixed": [_PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, ctypes.c_float],
    "sgd_jagged": [_PTR, _PTR, _PTR, _PTR, _I64, _I64, _I64, ctypes.c_float],
}
# Below this many ids one thread does the update: starting work on another costs more than it saves.
_PARALLEL_MIN_IDS = 32_768


def _lib():
    return ckernels.load(_NAME, _SOURCE, _SIGNATURES)


def available() -> tuple[bool, str]:
    """Whether the kernel is built and loaded (building it on the first call), and if not, why."""
    lib, why = _lib()
    return lib is not None, why


def _threads(ids: int) -> int:
    return ckernels.threads_for(ids, _PARALLEL_MIN_IDS)


def _check(weight: torch.Tensor, *tensors: torch.Tensor) -> None:
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or not weight.is_contiguous():
        raise ValueError("fused SGD: the table must be a contiguous float32 CPU tensor")
    if any(not t.is_contiguous() for t in tensors):
        raise ValueError("fused SGD: ids and gradients must be contiguous")


def update_fixed(weight: torch.Tensor, ids: torch.Tensor, grad: torch.Tensor, tables: int, lr: float) -> None:
    """weight[ids[s, t, j]] -= lr * grad[s, t] for ids [B, T, L] (already offset into the fused table)."""
    batch, _, per_bag = ids.shape
    grad = grad.reshape(batch * tables, -1).contiguous()
    ids = ids.contiguous()
    _check(weight, ids, grad)
    lib, d = _lib()[0], weight.shape[1]
    calls = [functools.partial(lib.sgd_fixed, weight.data_ptr(), ids.data_ptr(), grad.data_ptr(), batch,
                               tables, per_bag, t0, t1, d, lr)
             for t0, t1 in ckernels.spans([1] * tables, _threads(ids.numel()))]
    ckernels.run_parallel(calls)


def update_jagged(weight: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor, grad: torch.Tensor,
                  lr: float) -> None:
    """weight[v] -= lr * grad of v's bag, for table-major jagged ids (TorchRec's layout); grad [T*B, D]."""
    tables, batch = lengths.shape
    flat = lengths.reshape(-1)
    bag = torch.repeat_interleave(torch.arange(flat.numel()), flat, output_size=values.numel())
    grad = grad.contiguous()
    values = values.contiguous()
    _check(weight, values, grad)
    per_table = lengths.sum(1).tolist()
    starts = [0]
    for n in per_table:
        starts.append(starts[-1] + n)
    lib, d = _lib()[0], weight.shape[1]
    calls = [functools.partial(lib.sgd_jagged, weight.data_ptr(), values.data_ptr(), bag.data_ptr(),
                               grad.data_ptr(), starts[a], starts[b], d, lr)
             for a, b in ckernels.spans(per_table, _threads(values.numel()))]
    ckernels.run_parallel(calls)


class FixedBagsSGD(torch.autograd.Function):
    """Lookup of [B, T, L] offset ids whose backward applies SGD to the table and returns no gradient."""

    @staticmethod
    def forward(ctx, weight, shifted, lr):
        ctx.save_for_backward(shifted)
        ctx.lr, ctx.weight = lr, weight
        batch, tables, per_bag = shifted.shape
        flat = shifted.view(batch * tables, per_bag)
        out = (weight[flat.view(-1)] if per_bag == 1 else torch.nn.functional.embedding_bag(flat, weight,
                                                                                            mode="sum"))
        return out.view(batch, tables, -1)

    @staticmethod
    def backward(ctx, grad_out):
        (shifted,) = ctx.saved_tensors
        with torch.no_grad():
            update_fixed(ctx.weight.data, shifted, grad_out, shifted.shape[1], ctx.lr)
        return None, None, None


class JaggedBagsSGD(torch.autograd.Function):
    """Lookup of table-major jagged offset ids; the backward applies SGD to the table."""

    @staticmethod
    def forward(ctx, weight, shifted, lengths, offsets, lr):
        ctx.save_for_backward(shifted, lengths)
        ctx.lr, ctx.weight = lr, weight
        return torch.nn.functional.embedding_bag(shifted, weight, offsets, mode="sum",
                                                 include_last_offset=True)

    @staticmethod
    def backward(ctx, grad_out):
        shifted, lengths = ctx.saved_tensors
        with torch.no_grad():
            update_jagged(ctx.weight.data, shifted, lengths, grad_out, ctx.lr)
        return None, None, None, None, None
