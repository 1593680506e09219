"""The DHE hash and uniform code in one pass, in C, for CPU tensors (harness/workload/ckernels.py).

torch computes ((a x + b) mod p) mod m, then the code (h / (m - 1)) * 2 - 1, as about ten elementwise
passes over cache-sized chunks of float64 (module.py); for the Kaggle decoders (k = 1024) that hashing
took longer than the decoders' matrix products (514 vs 465 ms at query size 4096 on 2 cores). Here each
code is computed in registers and written once as float32, the tables split across threads. The same
float64 arithmetic, every intermediate an exact integer below 2^53, so the codes are bit-identical to
module.py's (tests/test_representations.py checks it, edge cases included).
"""

from __future__ import annotations

import ctypes

import torch

from harness.workload import ckernels

_SOURCE = r"""
#include <stdint.h>
/* The code of bucket j of one id: (float)((((a y + b) mod p) mod m) * scale - 1). y = id mod p (< 2^26),
   a, b < p: a y + b < 2^53, exact in double. q = v / p rounded to the nearest integer by adding and
   subtracting 1.5 * 2^52 (plain adds, so the loop vectorizes; no -ffast-math may fold them), then v - q p
   lies in (-p/2, p/2] up to rounding and one correction makes it [0, p). p < 2m: one subtraction reduces
   mod m. */
static inline float dhe_code(double a, double b, double x, double p, double inv_p, double m, double scale) {
    double v = a * x + b;
    const double q = (v * inv_p + 6755399441055744.0) - 6755399441055744.0;
    v -= q * p;
    v += v < 0 ? p : 0.0;
    v -= v >= m ? m : 0.0;
    return (float) (v * scale - 1.0);
}

/* codes[t, n, j] for tables [t0, t1), as float32. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void dhe_uniform(const int64_t *y, const double *a, const double *b, int64_t lookups, int64_t k,
                 double p, double m, double scale, int64_t t0, int64_t t1, float *codes) {
    const double inv_p = 1.0 / p;
    for (int64_t t = t0; t < t1; ++t) {
        const double *at = a + t * k, *bt = b + t * k;
        for (int64_t n = 0; n < lookups; ++n) {
            const double x = (double) y[t * lookups + n];
            float *out = codes + (t * lookups + n) * k;
            for (int64_t j = 0; j < k; ++j)
                out[j] = dhe_code(at[j], bt[j], x, p, inv_p, m, scale);
        }
    }
}

/* The same codes written as bfloat16 (for decoders in bf16): the float32 code rounded to nearest even,
   as torch's float -> bfloat16 conversion does (codes are finite), so the result equals
   dhe_uniform's codes .to(torch.bfloat16) bit for bit, without a float32 pass through memory. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
void dhe_uniform_bf16(const int64_t *y, const double *a, const double *b, int64_t lookups, int64_t k,
                      double p, double m, double scale, int64_t t0, int64_t t1, uint16_t *codes) {
    const double inv_p = 1.0 / p;
    for (int64_t t = t0; t < t1; ++t) {
        const double *at = a + t * k, *bt = b + t * k;
        for (int64_t n = 0; n < lookups; ++n) {
            const double x = (double) y[t * lookups + n];
            uint16_t *out = codes + (t * lookups + n) * k;
            for (int64_t j = 0; j < k; ++j) {
                union { float f; uint32_t u; } code = { dhe_code(at[j], bt[j], x, p, inv_p, m, scale) };
                out[j] = (uint16_t) ((code.u + 0x7FFFu + ((code.u >> 16) & 1u)) >> 16);
            }
        }
    }
}
"""
_I64, _PTR, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double
_SIGNATURES = {"dhe_uniform": [_PTR, _PTR, _PTR, _I64, _I64, _F64, _F64, _F64, _I64, _I64, _PTR],
               "dhe_uniform_bf16": [_PTR, _PTR, _PTR, _I64, _I64, _F64, _F64, _F64, _I64, _I64, _PTR]}
_OUTPUTS = {torch.float32: "dhe_uniform", torch.bfloat16: "dhe_uniform_bf16"}  # codes' dtype -> function
_PARALLEL_MIN_CODES = 1 << 18


def available() -> tuple[bool, str]:
    lib, why = ckernels.load("dhe_hash", _SOURCE, _SIGNATURES)
    return lib is not None, why


def encode_uniform(flat: torch.Tensor, hash_a: torch.Tensor, hash_b: torch.Tensor, p: int, m: int,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor | None:
    """[T, N] ids -> [T, N, k] uniform codes in `dtype` (float32 or bfloat16), or None where the kernel
    is unavailable or has no such output."""
    lib, _ = ckernels.load("dhe_hash", _SOURCE, _SIGNATURES)
    if lib is None or flat.device.type != "cpu" or dtype not in _OUTPUTS:
        return None
    encode = getattr(lib, _OUTPUTS[dtype])
    tables, lookups = flat.shape
    k = hash_a.shape[-1]
    y = torch.remainder(flat, p).contiguous()
    a = hash_a.reshape(tables, k).to(torch.float64).contiguous()
    b = hash_b.reshape(tables, k).to(torch.float64).contiguous()
    codes = torch.empty(tables, lookups, k, dtype=dtype)
    scale = 2.0 / (m - 1)
    parts = ckernels.threads_for(tables * lookups * k, _PARALLEL_MIN_CODES)

    def call(t0: int, t1: int, lo: int, hi: int):
        # Tables [t0, t1), or lookups [lo, hi) of a single table (t0 = 0, t1 = 1): pointers moved to lo.
        return lambda: encode(y.data_ptr() + lo * 8, a.data_ptr(), b.data_ptr(), hi - lo, k, float(p),
                              float(m), scale, t0, t1, codes.data_ptr() + lo * k * codes.element_size())

    if tables == 1:  # e.g. a cache's misses of one table: split its lookups
        bounds = [lookups * i // parts for i in range(parts + 1)]
        calls = [call(0, 1, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    else:
        calls = [call(t0, t1, 0, lookups) for t0, t1 in ckernels.spans([1] * tables, parts)]
    ckernels.run_parallel(calls)
    return codes
