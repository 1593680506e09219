"""Small int8 and int4 lookups in one C call, for CPU tensors (harness/workload/ckernels.py).

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

int4 rows (FBGEMM's 4-bit layout, fp16 scale and bias) the same way, against FBGEMM's 4-bit kernel: 9.9 vs
13.3 us at 26 ids, 20.2 vs 21.9 at 1,664, 26.7 vs 26.7 at 2,496. The whole int4 model at q = 1 went from
0.93-0.94x to 0.99x fp32's speed.
"""

from __future__ import annotations

import ctypes

import torch

from harness.core.precision import row_bytes
from harness.workload import ckernels

# ids per call below which this kernel beats FBGEMM's (measured above; int4 rows' FBGEMM kernel catches
# up sooner: 20.2 against 21.9 us at 1,664 ids, level at 2,496)
SMALL_MAX_LOOKUPS = {"int8": 3072, "int4": 2048}
BITS = {"int8": 8, "int4": 4}  # the storages it reads

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <string.h>

/* The row of bag (b, t)'s id l: ids [batch, tables, per_bag] are per-table, offsets[t] places table t's rows
   in the fused layout. */
#define INT8_ROW(l) (packed + (offsets[t] + ids[(b * tables + t) * per_bag + (l)]) * row_bytes)

/* An fp16 value as float32, exactly (the 4-bit rows' scale and bias). */
static inline float int8_half(uint16_t h) {
    const uint32_t sign = (uint32_t) (h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1Fu, mantissa = h & 0x3FFu, bits;
    if (exponent == 0x1Fu)
        bits = sign | 0x7F800000u | (mantissa << 13);  /* inf, NaN */
    else if (exponent != 0)
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);  /* 127 - 15 */
    else if (mantissa == 0)
        bits = sign;
    else {  /* subnormal: normalized, its exponent lowered a step per shift */
        for (exponent = 113; !(mantissa & 0x400u); mantissa <<= 1)
            --exponent;
        bits = sign | (exponent << 23) | ((mantissa & 0x3FFu) << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* A row's scale and bias: after its values, float32 (8 bits) or fp16 (4 bits); unaligned. */
static inline void int8_scale_bias(const uint8_t *row, int64_t dim, int64_t bits, float *scale, float *bias) {
    if (bits == 8) {
        float pair[2];
        memcpy(pair, row + dim, sizeof pair);
        *scale = pair[0], *bias = pair[1];
    } else {
        uint16_t pair[2];
        memcpy(pair, row + (dim + 1) / 2, sizeof pair);
        *scale = int8_half(pair[0]), *bias = int8_half(pair[1]);
    }
}

/* out[b, t] = the sum over the bag's ids of row * scale + bias, from FBGEMM's row-wise layouts (8 bits: dim
   uint8 values, then the row's float32 scale and bias; 4 bits: value 2j in byte j's low nibble, 2j + 1 in
   its high one, then an fp16 scale and bias), in FBGEMM's order: acc = fmaf(scale, q, acc + bias). */
static inline __attribute__((always_inline)) void int8_sums(const uint8_t *restrict packed, int64_t row_bytes,
                                                            const int64_t *ids, const int64_t *offsets,
                                                            int64_t batch, int64_t tables, int64_t per_bag,
                                                            int64_t dim, int64_t bits, float *restrict out) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < tables; ++t) {
            float *restrict acc = out + (b * tables + t) * dim;
            for (int64_t j = 0; j < dim; ++j)
                acc[j] = 0.0f;
            for (int64_t l = 0; l < per_bag; ++l) {
                const uint8_t *row = INT8_ROW(l);
                float scale, bias;
                int8_scale_bias(row, dim, bits, &scale, &bias);
                for (int64_t j = 0; j < dim; ++j) {
                    const int q = bits == 8 ? row[j] : (row[j >> 1] >> ((j & 1) * 4)) & 0xF;
                    acc[j] = fmaf(scale, (float) q, acc[j] + bias);
                }
            }
        }
}

/* Where the CPU has AVX2, FMA and F16C and dim is a multiple of 8 (DLRM's 16, 32, 64, 128): eight values at a
   time, bytes widened to int32 then float (exact), one fused multiply-add each, in the order above; 1.25x
   the compiler's own vectorization of int8_sums at 1,664 ids. Elsewhere fmaf is a library call a value
   (~8x slower; the same bits). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
__attribute__((target("avx2,fma,f16c"))) static void int8_sums_fma(const uint8_t *restrict packed,
                                                              int64_t row_bytes, const int64_t *ids,
                                                              const int64_t *offsets, int64_t batch,
                                                              int64_t tables, int64_t per_bag, int64_t dim,
                                                              int64_t bits, float *restrict out) {
    const __m128i low = _mm_set1_epi8(0x0F);
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < tables; ++t) {
            float *acc = out + (b * tables + t) * dim;
            for (int64_t j = 0; j < dim; j += 8)
                _mm256_storeu_ps(acc + j, _mm256_setzero_ps());
            for (int64_t l = 0; l < per_bag; ++l) {
                const uint8_t *row = INT8_ROW(l);
                float row_scale, row_bias;
                if (bits == 8)
                    int8_scale_bias(row, dim, bits, &row_scale, &row_bias);
                else {  /* F16C's conversion: exact, as int8_half */
                    uint16_t pair[2];
                    memcpy(pair, row + dim / 2, sizeof pair);
                    row_scale = _cvtsh_ss(pair[0]), row_bias = _cvtsh_ss(pair[1]);
                }
                const __m256 scale = _mm256_set1_ps(row_scale), bias = _mm256_set1_ps(row_bias);
                for (int64_t j = 0; j < dim; j += 8) {
                    __m128i bytes;
                    if (bits == 8)
                        bytes = _mm_loadl_epi64((const __m128i *) (row + j));
                    else {  /* four bytes' low and high nibbles interleaved: values j .. j + 7 in order */
                        int32_t four;
                        memcpy(&four, row + j / 2, sizeof four);
                        const __m128i packed4 = _mm_cvtsi32_si128(four);
                        bytes = _mm_unpacklo_epi8(_mm_and_si128(packed4, low),
                                                  _mm_and_si128(_mm_srli_epi16(packed4, 4), low));
                    }
                    const __m256 q = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes));
                    const __m256 sum = _mm256_add_ps(_mm256_loadu_ps(acc + j), bias);
                    _mm256_storeu_ps(acc + j, _mm256_fmadd_ps(scale, q, sum));
                }
            }
        }
}

#endif

/* Whether quantized_bags may take the AVX2 and FMA loop (asked once, by the caller). */
int int8_fma(void) {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
    return 0;
#endif
}

/* out [batch, tables, dim]. Returns -1 where every id lies in its own table (0 <= id < rows[t]), else the
   flat position of the first that does not; then nothing is read. use_fma: int8_fma()'s answer. */
int64_t quantized_bags(const uint8_t *packed, int64_t row_bytes, const int64_t *ids, const int64_t *offsets,
                  const int64_t *rows, int64_t batch, int64_t tables, int64_t per_bag, int64_t dim,
                  float *out, int64_t use_fma, int64_t bits) {
    for (int64_t b = 0; b < batch; ++b)
        for (int64_t t = 0; t < tables; ++t)
            for (int64_t l = 0; l < per_bag; ++l) {
                const int64_t n = (b * tables + t) * per_bag + l;
                if (ids[n] < 0 || ids[n] >= rows[t])
                    return n;
            }
#if defined(__x86_64__) && defined(__GNUC__)
    if (use_fma && dim % 8 == 0) {
        int8_sums_fma(packed, row_bytes, ids, offsets, batch, tables, per_bag, dim, bits, out);
        return -1;
    }
#endif
    int8_sums(packed, row_bytes, ids, offsets, batch, tables, per_bag, dim, bits, out);
    return -1;
}
"""
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {"quantized_bags": [_PTR, _I64, _PTR, _PTR, _PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64],
               "int8_fma": []}
_fma: dict[ctypes.CDLL, bool] = {}  # library -> whether this CPU takes its FMA loop (asked once)


def _load():
    lib, why = ckernels.load("quantized_bags", _SOURCE, _SIGNATURES)
    if lib is not None:
        lib.quantized_bags.restype = _I64  # ctypes reads a C int otherwise
        if lib not in _fma:
            _fma[lib] = bool(lib.int8_fma())
    return lib, why


def available() -> tuple[bool, str]:
    lib, why = _load()
    return lib is not None, why


def quantized_bags(packed: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, rows: torch.Tensor,
                   dim: int, storage: str = "int8") -> torch.Tensor | None:
    """ids [B, T, L] (int64, each table's own) -> bag sums [B, T, dim] in fp32 from FBGEMM-layout rows
    `packed` (`storage` int8: [sum(rows), dim + 8]; int4: [sum(rows), dim / 2 + 4]), table t's rows from
    offsets[t]; None where the kernel cannot take them
    (no compiler, not CPU tensors, not int64 ids of T tables, rows not in that layout): the caller's torch
    path computes the same sums, or raises. An id outside its own table raises IndexError, naming it (the
    fused layout would read another table's row; torch's paths check ids against all the rows only)."""
    lib, _ = _load()
    tables = rows.numel()
    # is_cpu, not device.type: this runs per query, and a generator over devices cost 1.7 us of 8 at q = 1
    if (lib is None or ids.dtype != torch.int64 or ids.dim() != 3 or ids.shape[1] != tables
            or not (packed.is_cpu and ids.is_cpu and offsets.is_cpu and rows.is_cpu)
            or storage not in BITS or packed.dtype != torch.uint8 or packed.dim() != 2
            or packed.shape[1] != row_bytes(storage, dim)
            or not packed.is_contiguous() or offsets.dtype != torch.int64 or rows.dtype != torch.int64
            or offsets.numel() != tables or not (offsets.is_contiguous() and rows.is_contiguous())):
        return None
    ids = ids.contiguous()
    batch, _, per_bag = ids.shape
    out = torch.empty(batch, tables, dim, dtype=torch.float32, device="cpu")
    bad = lib.quantized_bags(packed.data_ptr(), packed.shape[1], ids.data_ptr(), offsets.data_ptr(),
                             rows.data_ptr(), batch, tables, per_bag, dim, out.data_ptr(), int(_fma[lib]),
                             BITS[storage])
    if bad >= 0:
        sample, rest = divmod(bad, tables * per_bag)
        table = rest // per_bag
        raise IndexError(f"{storage} table lookup: id {int(ids.view(-1)[bad])} of sample {sample}, "
                         f"table {table} "
                         f"is outside the table's {int(rows[table]):,} rows")
    return out
