"""Small int8 lookups in one C call, for CPU tensors (harness/workload/ckernels.py).

FBGEMM's fused int8 bag kernel (torch.ops.quantized.embedding_bag_byte_rowwise_offsets) is the fastest
CPU path for large queries. For a few rows its call costs more than the rows do, which made the whole int8
model 1.08-1.10x the fp32 model's time at query size 1 (docs/performance.md). This kernel adds the tables'
row offsets, checks each id against its own table, gathers, dequantizes and sums in one call, in FBGEMM's
own order of operations (per id: `acc = fma(scale, q, acc + bias)`), so its sums equal FBGEMM's bit for
bit (tests/test_table_kernels.py). One thread: it is the faster below SMALL_MAX_LOOKUPS ids. The tables'
lookup, 26 Kaggle tables (2.16 GB as fp32), 2 EPYC (Zen 4) cores, medians of 3 interleaved runs:

    ids      this kernel   FBGEMM    fp32 rows (F.embedding)
    26        8.2 us       14.5 us    9.9 us
    1,664    17.3 us       21.7 us   16.7 us
    2,496    22.3 us       25.2 us   21.5 us
    3,328    29.6 us       29.3 us   25.3 us
"""

from __future__ import annotations

import ctypes

import torch

from harness.workload import ckernels

SMALL_MAX_LOOKUPS = 3072  # ids per call below which this kernel beats FBGEMM's (measured above)

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The row of bag (b, t)'s id l: ids [batch, tables, per_bag] are per-table, offsets[t] places table t's rows
   in the fused layout. */
#define INT8_ROW(l) (packed + (offsets[t] + ids[(b * tables + t) * per_bag + (l)]) * row_bytes)

/* out[b, t] = the sum over the bag's ids of row * scale + bias, from FBGEMM's row-wise int8 layout (dim
   uint8 values, then the row's float32 scale and bias), in FBGEMM's order:
   acc = fmaf(scale, q, acc + bias). */
static inline __attribute__((always_inline)) void int8_sums(const uint8_t *restrict packed, int64_t row_bytes,
                                                            const int64_t *ids, const int64_t *offsets,
                                                            int64_t batch, int64_t tables, int64_t per_bag,
                                                            int64_t dim, float *restrict out) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < tables; ++t) {
            float *restrict acc = out + (b * tables + t) * dim;
            for (int64_t j = 0; j < dim; ++j)
                acc[j] = 0.0f;
            for (int64_t l = 0; l < per_bag; ++l) {
                const uint8_t *row = INT8_ROW(l);
                float scale_bias[2];
                memcpy(scale_bias, row + dim, sizeof scale_bias);  /* unaligned: rows are dim + 8 bytes */
                for (int64_t j = 0; j < dim; ++j)
                    acc[j] = fmaf(scale_bias[0], (float) row[j], acc[j] + scale_bias[1]);
            }
        }
}

/* Where the CPU has AVX2 and FMA and dim is a multiple of 8 (DLRM's 16, 32, 64, 128): eight values at a
   time, bytes widened to int32 then float (exact), one fused multiply-add each, in the order above; 1.25x
   the compiler's own vectorization of int8_sums at 1,664 ids. Elsewhere fmaf is a library call a value
   (~8x slower; the same bits). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2,fma"))) static void int8_sums_fma(const uint8_t *restrict packed,
                                                              int64_t row_bytes, const int64_t *ids,
                                                              const int64_t *offsets, int64_t batch,
                                                              int64_t tables, int64_t per_bag, int64_t dim,
                                                              float *restrict out) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < tables; ++t) {
            float *acc = out + (b * tables + t) * dim;
            for (int64_t j = 0; j < dim; j += 8)
                _mm256_storeu_ps(acc + j, _mm256_setzero_ps());
            for (int64_t l = 0; l < per_bag; ++l) {
                const uint8_t *row = INT8_ROW(l);
                float scale_bias[2];
                memcpy(scale_bias, row + dim, sizeof scale_bias);
                const __m256 scale = _mm256_set1_ps(scale_bias[0]), bias = _mm256_set1_ps(scale_bias[1]);
                for (int64_t j = 0; j < dim; j += 8) {
                    const __m128i bytes = _mm_loadl_epi64((const __m128i *) (row + j));
                    const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                    const __m256 sum = _mm256_add_ps(_mm256_loadu_ps(acc + j), bias);
                    _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(scale, q, sum));
                }
            }
        }
}

#endif

/* Whether int8_bags may take the AVX2 and FMA loop (asked once, by the caller). */
int int8_fma(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* out [batch, tables, dim]. Returns -1 where every id lies in its own table (0 <= id < rows[t]), else the
   flat position of the first that does not; then nothing is read. use_fma: int8_fma()'s answer. */
int64_t int8_bags(const uint8_t *packed, int64_t row_bytes, const int64_t *ids, const int64_t *offsets,
                  const int64_t *rows, int64_t batch, int64_t tables, int64_t per_bag, int64_t dim,
                  float *out, int64_t use_fma) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < tables; ++t)
            for (int64_t l = 0; l < per_bag; ++l) {
                const int64_t n = (b * tables + t) * per_bag + l;
                if (ids[n] < 0 || ids[n] >= rows[t])
                    return n;
            }
#if defined(__x86_64__) && defined(__GNUC__)
    if (use_fma && dim % 8 == 0) {
        int8_sums_fma(packed, row_bytes, ids, offsets, batch, tables, per_bag, dim, out);
        return -1;
    }
#endif
    int8_sums(packed, row_bytes, ids, offsets, batch, tables, per_bag, dim, out);
    return -1;
}
"""
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {"int8_bags": [_PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _PTR, _I64],
               "int8_fma": []}
_fma: dict[ctypes.CDLL, bool] = {}  # library -> whether this CPU takes its FMA loop (asked once)


def _load():
    lib, why = ckernels.load("int8_bags", _SOURCE, _SIGNATURES)
    if lib is not None:
        lib.int8_bags.restype = _I64  # ctypes reads a C int otherwise
        if lib not in _fma:
            _fma[lib] = bool(lib.int8_fma())
    return lib, why


def available() -> tuple[bool, str]:
    lib, why = _load()
    return lib is not None, why


def int8_bags(packed: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor,
              dim: int) -> torch.Tensor | None:
    """ids [B, T, L] (int64, each table's own) -> bag sums [B, T, dim] in fp32 from FBGEMM-layout int8 rows
    `packed` [sum(rows), dim + 8], table t's rows from offsets[t]; None where the kernel cannot take them
    (no compiler, not CPU tensors, not int64 ids of T tables, rows not in that layout): the caller's torch
    path computes the same sums, or raises. An id outside its own table raises IndexError, naming it (the
    fused layout would read another table's row; torch's paths check ids against all the rows only)."""
    lib, _ = _load()
    tables = rows.numel()
    # is_cpu, not device.type: this runs per query, and a generator over devices cost 1.7 us of 8 at q = 1
    if (lib is None or ids.dtype != torch.int64 or ids.dim() != 3 or ids.shape[1] != tables
            or not (packed.is_cpu and ids.is_cpu and offsets.is_cpu and rows.is_cpu)
            or packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != dim + 8
            or not packed.is_contiguous() or offsets.dtype != torch.int64 or rows.dtype != torch.int64
            or offsets.numel() != tables or not (offsets.is_contiguous() and rows.is_contiguous())):
        return None
    ids = ids.contiguous()
    batch, _, per_bag = ids.shape
    out = torch.empty(batch, tables, dim, dtype=torch.float32, device="cpu")
    bad = lib.int8_bags(packed.data_ptr(), packed.shape[1], ids.data_ptr(), offsets.data_ptr(),
                        rows.data_ptr(), batch, tables, per_bag, dim, out.data_ptr(), int(_fma[lib]))
    if bad >= 0:
        sample, rest = divmod(bad, tables * per_bag)
        table = rest // per_bag
        raise IndexError(f"int8 table lookup: id {int(ids.view(-1)[bad])} of sample {sample}, table {table} "
                         f"is outside the table's {int(rows[table]):,} rows")
    return out
