"""The dot interaction of a bf16 path in one C pass, for CPU tensors (harness/workload/ckernels.py).

torch computes it as four passes (dlrm.py `DotInteraction._forward_16bit`): the vectors cast and copied
into one bf16 tensor, a batched GEMM of [27, 16] x [16, 27] per sample (oneDNN runs such small products
far below its peak), the 351 pairs gathered, the dense vector copied; below 64 samples, torch.cat and
index_select instead. Here each sample's vectors are rounded to bf16 in registers, transposed by gathers
into a cache-resident buffer, and only the lower triangle's dot products are computed (four rows at a time:
four independent chains of fused multiply-adds) and written straight into the output.

On 2 EPYC (Zen 4) cores, Kaggle shape (27 vectors of 16): 6.4 against 36 us at one sample, 0.25 against
0.35 ms at 1024, 1.0 against 1.4-1.6 ms at 4096. The whole bf16 table model, the two timed interleaved
in one process (medians of 7): 0.89x the time at query size 1, 0.87x at 64, 0.96x at 4096, level at 1024.

The values: the vectors are rounded to bf16 as torch rounds them (to nearest even; a NaN stays a NaN, its
bits 0x7FC0 where torch's vectorized conversion writes 0xFFFF), so each
product of two is exact in float32 (unless it underflows, below ~1e-38); the dot products accumulate in
float32 in ascending k (fused multiply-adds, the same as separate ones on exact products) and are rounded
to bf16 once. torch's bf16 batched GEMM also accumulates in float32 but in its own order: the two agree to
one bf16 rounding (tests/test_interaction.py), and this kernel's values equal, bit for bit, float32 sums in
ascending k.

AVX-512 (F, BW, VL) only: elsewhere `available` says why, and the torch path runs.
"""

from __future__ import annotations

import ctypes

import torch

from harness.workload import ckernels

MAX_VECTORS, MAX_WIDTH = 64, 64  # the kernel's stack buffers: F vectors of D values, D a multiple of 16

_SOURCE = r"""
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DOT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))
#define DOT_MAX 64
#define DOT_ROWS 4

/* bf16 bits (in the low half of each lane) of 16 float32 values, rounded to nearest even as torch rounds
   them; a NaN becomes 0x7FC0 (c10's scalar conversion; its vectorized one writes 0xFFFF: a NaN either
   way). */
DOT_AVX512 static inline __m512i dot_bf16_bits(__m512 x) {
    const __m512i u = _mm512_castps_si512(x);
    const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i half = _mm512_add_epi32(odd, _mm512_set1_epi32(0x7FFF));
    const __m512i bits = _mm512_srli_epi32(_mm512_add_epi32(u, half), 16);
    return _mm512_mask_mov_epi32(bits, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_set1_epi32(0x7FC0));
}

/* 16 values of a vector as float32 holding bf16 values: the dense one's bf16 widened, a table's fp32
   rounded to bf16 (or its bf16 widened). */
DOT_AVX512 static inline __m512 dot_widen(const uint16_t *bf16) {
    const __m256i bits = _mm256_loadu_si256((const __m256i *) bf16);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16));
}

DOT_AVX512 static inline __m512 dot_rounded(const float *fp32) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(dot_bf16_bits(_mm512_loadu_ps(fp32)), 16));
}

/* One sample: out = [dense (width), pairs (i, j < i) in row order], bf16. rows[j][k]: vector j (0 dense, then
   the tables', `stride` values apart in `sparse`); cols[k][j]: the same transposed, F padded to blocks of
   16 with zeros. */
DOT_AVX512 static void dot_sample(const uint16_t *dense, const void *sparse, int sparse_bf16, int64_t stride,
                                  int64_t vectors, int64_t width, uint16_t *out) {
    float rows[DOT_MAX * DOT_MAX], cols[DOT_MAX * DOT_MAX];
    const int64_t blocks = (vectors + 15) / 16;
    for (int64_t k = 0; k < width; k += 16) {
        _mm512_storeu_ps(rows + k, dot_widen(dense + k));
        for (int64_t j = 1; j < vectors; ++j) {
            const int64_t at = (j - 1) * stride + k;
            _mm512_storeu_ps(rows + j * width + k, sparse_bf16 ? dot_widen((const uint16_t *) sparse + at)
                                                                : dot_rounded((const float *) sparse + at));
        }
    }
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int64_t b = 0; b < blocks; ++b) {
        const int64_t left = vectors - 16 * b;
        const __mmask16 present = left >= 16 ? 0xFFFF : (__mmask16) ((1u << left) - 1);
        const __m512i index = _mm512_mullo_epi32(_mm512_add_epi32(lanes, _mm512_set1_epi32(16 * (int) b)),
                                                 _mm512_set1_epi32((int) width));
        for (int64_t k = 0; k < width; ++k)
            _mm512_storeu_ps(cols + k * 16 * blocks + 16 * b,
                             _mm512_mask_i32gather_ps(_mm512_setzero_ps(), present, index, rows + k, 4));
    }
    memcpy(out, dense, width * sizeof(uint16_t));
    /* Row i's pairs (j < i) start at i (i - 1) / 2; block b holds its j in [16 b, 16 b + 16). Four rows at a
       time: four independent chains of fused multiply-adds (one alone waits on its own latency). */
    uint16_t *pairs = out + width;
    for (int64_t b = 0; b < blocks; ++b)
        for (int64_t i0 = 16 * b + 1; i0 < vectors; i0 += DOT_ROWS) {
            const float *row[DOT_ROWS];
            for (int g = 0; g < DOT_ROWS; ++g)  /* past the last row: the last again, never stored */
                row[g] = rows + (i0 + g < vectors ? i0 + g : vectors - 1) * width;
            __m512 acc[DOT_ROWS];
            for (int g = 0; g < DOT_ROWS; ++g)
                acc[g] = _mm512_setzero_ps();
            for (int64_t k = 0; k < width; ++k) {
                const __m512 col = _mm512_loadu_ps(cols + k * 16 * blocks + 16 * b);
                for (int g = 0; g < DOT_ROWS; ++g)
                    acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(row[g][k]), col, acc[g]);
            }
            for (int g = 0; g < DOT_ROWS && i0 + g < vectors; ++g) {
                const int64_t i = i0 + g, n = i - 16 * b < 16 ? i - 16 * b : 16;
                _mm256_mask_storeu_epi16(pairs + i * (i - 1) / 2 + 16 * b, (__mmask16) ((1u << n) - 1),
                                         _mm512_cvtepi32_epi16(dot_bf16_bits(acc[g])));
            }
        }
}

/* out [batch, width + F (F - 1) / 2] bf16 from dense [batch, width] bf16 and sparse [batch, F - 1, width]
   (float32, or bf16 where sparse_bf16; its strides in values, the last dimension's 1). Built with -fopenmp
   the samples are shared among the threads of the OpenMP runtime already in the process: torch's own
   where torch's is the system's libgomp.so.1 (the loader matches the soname); a torch built with another
   runtime (libiomp) would leave this kernel a pool of its own. */
DOT_AVX512 void dot_interaction(const uint16_t *dense, const void *sparse, int64_t sparse_bf16,
                                int64_t sample_stride, int64_t vector_stride, int64_t batch, int64_t vectors,
                                int64_t width, uint16_t *out) {
    const int64_t out_width = width + vectors * (vectors - 1) / 2, item = sparse_bf16 ? 2 : 4;
#pragma omp parallel for schedule(static) if (batch >= 64)
    for (int64_t s = 0; s < batch; ++s)
        dot_sample(dense + s * width, (const char *) sparse + s * sample_stride * item, (int) sparse_bf16,
                   vector_stride, vectors, width, out + s * out_width);
}

int dot_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
           && __builtin_cpu_supports("avx512vl");
}
#else  /* never called: dot_supported() is 0 */
void dot_interaction(const uint16_t *dense, const void *sparse, int64_t sparse_bf16, int64_t sample_stride,
                     int64_t vector_stride, int64_t batch, int64_t vectors, int64_t width, uint16_t *out) {}
int dot_supported(void) { return 0; }
#endif

int dot_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
"""
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p
_SIGNATURES = {"dot_interaction": [_PTR, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _PTR],
               "dot_supported": [],
               "dot_openmp": []}
# Built without OpenMP the kernel runs on one thread: slower than torch's two from here (0.46 against
# 0.35 ms at 1024 samples)
SERIAL_MAX_BATCH = 256


def _load():
    return ckernels.load("dot_interaction", _SOURCE, _SIGNATURES, optional_flags=("-fopenmp",))


_supported: dict[ctypes.CDLL, bool] = {}  # library -> whether this CPU runs it (asked once)
_threaded: dict[ctypes.CDLL, bool] = {}  # library -> whether it was built with OpenMP


def available() -> tuple[bool, str]:
    """(True, "compiled C kernel") where this CPU runs the kernel, else (False, why not)."""
    lib, why = _load()
    if lib is None:
        return False, why
    if lib not in _supported:
        _supported[lib] = bool(lib.dot_supported())
    if not _supported[lib]:
        return False, "the C dot interaction needs AVX-512 (F, BW, VL)"
    return True, why


def fits(dense: torch.Tensor, sparse: torch.Tensor) -> bool:
    """Whether the kernel takes these inputs: CPU, dense bf16 [B, D], tables' vectors [B, F - 1, D] fp32 or
    bf16 (any strides but the last, 1), D a multiple of 16, within its buffers, no autograd."""
    if dense.dim() != 2 or sparse.dim() != 3 or sparse.shape[0] != dense.shape[0] \
            or sparse.shape[2] != dense.shape[1] or sparse.stride(2) != 1:
        return False
    vectors, width = sparse.shape[1] + 1, dense.shape[1]
    return (dense.device.type == "cpu" and sparse.device.type == "cpu" and dense.dtype == torch.bfloat16
            and sparse.dtype in (torch.float32, torch.bfloat16) and width % 16 == 0
            and width <= MAX_WIDTH and vectors <= MAX_VECTORS
            and not (dense.requires_grad or sparse.requires_grad))


def dot_interaction(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor | None:
    """[B, D] bf16 and [B, F - 1, D] -> [B, D + F(F-1)/2] bf16 (dlrm.py `DotInteraction`); None where the
    kernel cannot run here or take these inputs (`fits`): the caller's torch path computes it."""
    if not fits(dense, sparse) or not available()[0]:
        return None
    lib, _ = _load()
    if lib not in _threaded:
        _threaded[lib] = bool(lib.dot_openmp())
    if not _threaded[lib] and dense.shape[0] > SERIAL_MAX_BATCH:
        return None
    dense = dense.contiguous()  # [B, D]: an MLP's output, contiguous; the tables' vectors keep their strides
    batch, width = dense.shape
    vectors = sparse.shape[1] + 1
    out = torch.empty(batch, width + vectors * (vectors - 1) // 2, dtype=torch.bfloat16, device="cpu")
    lib.dot_interaction(dense.data_ptr(), sparse.data_ptr(), int(sparse.dtype == torch.bfloat16),
                        sparse.stride(0), sparse.stride(1), batch, vectors, width, out.data_ptr())
    return out
