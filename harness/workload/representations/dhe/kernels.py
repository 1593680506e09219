"""The DHE hash and uniform code in one pass, in C, for CPU tensors (harness/workload/ckernels.py).

torch computes ((a x + b) mod p) mod m, then the code (h / (m - 1)) * 2 - 1, as about ten elementwise
passes over cache-sized chunks of float64 (module.py); for the Kaggle decoders (k = 1024) that hashing
took longer than the decoders' matrix products (514 vs 465 ms at query size 4096 on 2 cores). Here each
code is computed in registers and written once as float32 (or bfloat16), the tables split across threads.
The same float64 arithmetic, every intermediate an exact integer below 2^53, so the codes are bit-identical
to module.py's (tests/test_representations.py checks it, edge cases included).

Three variants compute those same bits, the fastest the CPU runs chosen at run time (`variants`): plain C
(auto-vectorized, AVX2 clones), AVX2 with FMA, and AVX-512 (F, VL, BF16) eight codes at a time. At the
Kaggle shape (26 tables, k = 1024) on 2 EPYC (Zen 4) cores, q = 4096: plain 38.5 / 41.9 ms for fp32 /
bf16 codes, FMA 29.1 / 36.6, AVX-512 26.4 / 28.6 (1.46x); q = 1024: 1.6x.

The library also holds the multiply-shift family's kernel (multiply_shift.py), chosen by `family`.
"""

from __future__ import annotations

import ctypes

import torch

from harness.workload import ckernels
from harness.workload.representations.dhe import multiply_shift

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

/* bf16 bits of a float32 code, rounded to nearest even as torch's float -> bfloat16 conversion (codes are
   finite): codes written as bf16 equal the float32 codes .to(torch.bfloat16) bit for bit. */
static inline uint16_t dhe_bf16(float f) {
    union { float f; uint32_t u; } code = { f };
    return (uint16_t) ((code.u + 0x7FFFu + ((code.u >> 16) & 1u)) >> 16);
}

/* One id's k codes (a row of the output), for either hash family: its coefficients (double for the
   universal hash, uint32 for multiply-shift: multiply_shift.py), the id as given (x: as a double) and the
   constants; each family reads what it uses. */
typedef struct { const void *a, *b; int64_t id; double x, p, inv_p, m, scale; int64_t k; } dhe_row;

static inline float dhe_code_at(const dhe_row *r, int64_t j) {
    return dhe_code(((const double *) r->a)[j], ((const double *) r->b)[j], r->x, r->p, r->inv_p, r->m,
                    r->scale);
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DHE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define DHE_CLONES
#endif

/* A family P's scalar rows from its P##_code_at(row, j): P##_tail, the codes from column j on one at a time
   (after a vector loop), and the plain rows, the whole row as a tail (auto-vectorized, AVX2 clones). */
#define DHE_SCALAR_ROWS(P)                                                                                  \
    static inline void P##_tail(const dhe_row *r, int64_t j, void *out, int bf16) {                        \
        for (; j < r->k; ++j) {                                                                             \
            const float code = P##_code_at(r, j);                                                           \
            if (bf16) ((uint16_t *) out)[j] = dhe_bf16(code);                                               \
            else ((float *) out)[j] = code;                                                                 \
        }                                                                                                   \
    }                                                                                                       \
    DHE_CLONES static void P##_row_plain(const dhe_row *r, void *out) { P##_tail(r, 0, out, 0); }          \
    DHE_CLONES static void P##_row_bf16_plain(const dhe_row *r, void *out) { P##_tail(r, 0, out, 1); }
DHE_SCALAR_ROWS(dhe)

typedef void (*dhe_row_fn)(const dhe_row *, void *);

/* codes[t, n, :] for tables [t0, t1) and every lookup n, `size` bytes a code and `coefficient` bytes a
   hash coefficient, a row at a time. Built with
   OpenMP (-fopenmp), the rows are shared among the threads of the OpenMP runtime torch has loaded (the
   library's libgomp.so.1 is torch's, already in the process): torch's intra-op threads, so no idle
   OpenMP worker spins on a core the hash needs; without it, one thread (the caller splits the work). */
#define DHE_PARALLEL_MIN_CODES (1 << 18)
static void dhe_rows(dhe_row_fn fill, int64_t size, int64_t coefficient, const int64_t *y, const void *a,
                     const void *b, int64_t lookups, int64_t k, double p, double m, double scale, int64_t t0,
                     int64_t t1, void *codes) {
    const int64_t first = t0 * lookups, last = t1 * lookups;
#pragma omp parallel for schedule(static) if ((last - first) * k >= DHE_PARALLEL_MIN_CODES)
    for (int64_t i = first; i < last; ++i) {
        const int64_t t = i / lookups, offset = t * k * coefficient;
        const dhe_row r = { (const char *) a + offset, (const char *) b + offset, y[i], (double) y[i], p,
                            1.0 / p, m, scale, k };
        fill(&r, (char *) codes + i * k * size);
    }
}

/* The threshold, for the caller that splits the work itself where the kernel is built without OpenMP. */
int64_t dhe_parallel_min_codes(void) { return DHE_PARALLEL_MIN_CODES; }

int dhe_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define DHE_FMA __attribute__((target("avx2,fma")))
/* AVX512-BF16 needs GCC 11 or clang 12 (its target name and __builtin_cpu_supports); an older compiler
   builds the rest, and the AVX-512 variant is then not offered (dhe_level caps at 1). */
#if defined(__clang__) ? __clang_major__ >= 12 : __GNUC__ >= 11
#define DHE_AVX512_OK 1
#define DHE_AVX512 __attribute__((target("avx2,fma,avx512f")))
#define DHE_AVX512BF16 __attribute__((target("avx2,fma,avx512f,avx512vl,avx512bf16")))
#endif

/* Four codes of one id in AVX2 with FMA, the same bits as dhe_code: a x + b and v - q p are exact integers
   whether fused or not; q = v / p rounded once (fused) instead of twice is still within one of v / p,
   which the corrections allow. The corrections select on the sign bit (v - q p is never -0: an exact zero
   sum of opposite signs is +0), and the code's own multiply and subtract stay two roundings: the library
   is built with -ffp-contract=off, so the compiler fuses nothing itself. */
typedef struct { __m256d x, p, inv_p, m, scale; } dhe_vec4;  /* a row's constants, in registers */

DHE_FMA static inline dhe_vec4 dhe_broadcast4(const dhe_row *r) {
    return (dhe_vec4) { _mm256_set1_pd(r->x), _mm256_set1_pd(r->p), _mm256_set1_pd(r->inv_p),
                        _mm256_set1_pd(r->m), _mm256_set1_pd(r->scale) };
}

DHE_FMA static inline __m256d dhe_code4(const double *a, const double *b, dhe_vec4 c) {
    const __m256d magic = _mm256_set1_pd(6755399441055744.0);
    __m256d v = _mm256_fmadd_pd(_mm256_loadu_pd(a), c.x, _mm256_loadu_pd(b));
    const __m256d q = _mm256_sub_pd(_mm256_fmadd_pd(v, c.inv_p, magic), magic);
    v = _mm256_fnmadd_pd(q, c.p, v);
    v = _mm256_blendv_pd(v, _mm256_add_pd(v, c.p), v);  /* below 0: + p */
    const __m256d w = _mm256_sub_pd(v, c.m);
    v = _mm256_blendv_pd(w, v, w);                       /* below m: v as it is */
    return _mm256_sub_pd(_mm256_mul_pd(v, c.scale), _mm256_set1_pd(1.0));
}

DHE_FMA static void dhe_row_fma(const dhe_row *r, void *out) {
    const dhe_vec4 c = dhe_broadcast4(r);
    const double *a = r->a, *b = r->b;
    float *codes = out;
    int64_t j = 0;
    for (; j + 4 <= r->k; j += 4)
        _mm_storeu_ps(codes + j, _mm256_cvtpd_ps(dhe_code4(a + j, b + j, c)));
    dhe_tail(r, j, out, 0);
}

/* bf16 from eight float32 codes: round to nearest even on the bits, as dhe_bf16. */
DHE_FMA static void dhe_row_bf16_fma(const dhe_row *r, void *out) {
    const dhe_vec4 c = dhe_broadcast4(r);
    const double *a = r->a, *b = r->b;
    int64_t j = 0;
    for (; j + 8 <= r->k; j += 8) {
        const __m128 lo = _mm256_cvtpd_ps(dhe_code4(a + j, b + j, c)),
                     hi = _mm256_cvtpd_ps(dhe_code4(a + j + 4, b + j + 4, c));
        const __m256i u = _mm256_castps_si256(_mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1));
        const __m256i odd = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
        const __m256i rounded = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7FFF)), odd);
        const __m256i bits = _mm256_srli_epi32(rounded, 16);
        const __m256i packed = _mm256_packus_epi32(bits, bits);  /* per half: b0..b3 b0..b3 | b4..b7 b4..b7 */
        _mm_storeu_si128((__m128i *) ((uint16_t *) out + j),
                         _mm256_castsi256_si128(_mm256_permute4x64_epi64(packed, 0x08)));
    }
    dhe_tail(r, j, out, 1);
}

#ifdef DHE_AVX512_OK
/* Eight codes at once in AVX-512, the corrections as masked adds: the same bits again. bf16 is written by
   AVX512-BF16's conversion (round to nearest even; it would flush a float32 subnormal to zero, and no code
   is one: v * scale - 1 is 0 or at least 2^-53 in magnitude, far above 2^-126). On 2 EPYC (Zen 4) cores
   1.5x the plain kernel's speed. */
typedef struct { __m512d x, p, inv_p, m, scale; } dhe_vec8;

DHE_AVX512 static inline dhe_vec8 dhe_broadcast8(const dhe_row *r) {
    return (dhe_vec8) { _mm512_set1_pd(r->x), _mm512_set1_pd(r->p), _mm512_set1_pd(r->inv_p),
                        _mm512_set1_pd(r->m), _mm512_set1_pd(r->scale) };
}

DHE_AVX512 static inline __m256 dhe_code8(const double *a, const double *b, dhe_vec8 c) {
    const __m512d magic = _mm512_set1_pd(6755399441055744.0);
    __m512d v = _mm512_fmadd_pd(_mm512_loadu_pd(a), c.x, _mm512_loadu_pd(b));
    const __m512d q = _mm512_sub_pd(_mm512_fmadd_pd(v, c.inv_p, magic), magic);
    v = _mm512_fnmadd_pd(q, c.p, v);
    v = _mm512_mask_add_pd(v, _mm512_cmp_pd_mask(v, _mm512_setzero_pd(), _CMP_LT_OQ), v, c.p);
    v = _mm512_mask_sub_pd(v, _mm512_cmp_pd_mask(v, c.m, _CMP_GE_OQ), v, c.m);
    return _mm512_cvtpd_ps(_mm512_sub_pd(_mm512_mul_pd(v, c.scale), _mm512_set1_pd(1.0)));
}

DHE_AVX512 static void dhe_row_avx512(const dhe_row *r, void *out) {
    const dhe_vec8 c = dhe_broadcast8(r);
    const double *a = r->a, *b = r->b;
    float *codes = out;
    int64_t j = 0;
    for (; j + 8 <= r->k; j += 8)
        _mm256_storeu_ps(codes + j, dhe_code8(a + j, b + j, c));
    dhe_tail(r, j, out, 0);
}

DHE_AVX512BF16 static void dhe_row_bf16_avx512(const dhe_row *r, void *out) {
    const dhe_vec8 c = dhe_broadcast8(r);
    const double *a = r->a, *b = r->b;
    uint16_t *codes = out;
    int64_t j = 0;
    for (; j + 8 <= r->k; j += 8)
        _mm_storeu_si128((__m128i *) (codes + j), (__m128i) _mm256_cvtneps_pbh(dhe_code8(a + j, b + j, c)));
    dhe_tail(r, j, out, 1);
}

#endif

/* What this build runs on this CPU: 0 the plain rows only; 1 also the _fma ones (AVX2 and FMA); 2 also
   dhe_uniform_avx512 (AVX-512 F); 3 also dhe_uniform_bf16_avx512 (AVX-512 VL and BF16 too). A variant above
   the level must not be called. */
int dhe_level(void) {
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")))
        return 0;
#ifdef DHE_AVX512_OK
    if (!__builtin_cpu_supports("avx512f"))
        return 1;
    return __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16") ? 3 : 2;
#else
    return 1;
#endif
}
#define DHE_VECTOR_ROWS 1
#else
int dhe_level(void) { return 0; }
#endif

/* The entry points: codes[t, n, j] for tables [t0, t1), as float32 or (_bf16) bfloat16, by variant, from
   COEF-byte coefficients (one signature for both families: p is the universal hash's alone). */
#define DHE_ENTRY(NAME, ROW, SIZE, OUT_T, COEF)                                                             \
    void NAME(const int64_t *y, const void *a, const void *b, int64_t lookups, int64_t k, double p,         \
              double m, double scale, int64_t t0, int64_t t1, OUT_T *codes) {                               \
        dhe_rows(ROW, SIZE, COEF, y, a, b, lookups, k, p, m, scale, t0, t1, codes);                        \
    }
/* A build without a variant's instructions stands the next simpler rows in for it, so that every build has
   every name; they are never called (dhe_level() is below what the variant needs). */
#ifndef DHE_VECTOR_ROWS
#define dhe_row_fma dhe_row_plain
#define dhe_row_bf16_fma dhe_row_bf16_plain
#endif
#ifndef DHE_AVX512_OK
#define dhe_row_avx512 dhe_row_fma
#define dhe_row_bf16_avx512 dhe_row_bf16_fma
#endif
DHE_ENTRY(dhe_uniform_plain, dhe_row_plain, 4, float, 8)
DHE_ENTRY(dhe_uniform_bf16_plain, dhe_row_bf16_plain, 2, uint16_t, 8)
DHE_ENTRY(dhe_uniform_fma, dhe_row_fma, 4, float, 8)
DHE_ENTRY(dhe_uniform_bf16_fma, dhe_row_bf16_fma, 2, uint16_t, 8)
DHE_ENTRY(dhe_uniform_avx512, dhe_row_avx512, 4, float, 8)
DHE_ENTRY(dhe_uniform_bf16_avx512, dhe_row_bf16_avx512, 2, uint16_t, 8)
"""
_I64, _PTR, _F64 = ctypes.c_int64, ctypes.c_void_p, ctypes.c_double
# The same codes, bit for bit, by the level (dhe_level) each needs for (float32, bfloat16) codes: plain C
# (AVX2 clones), AVX2 with FMA, AVX-512 (F; VL and BF16 too for bf16 codes)
VARIANTS = {"plain": (0, 0), "fma": (1, 1), "avx512": (2, 3)}
_ARGS = [_PTR, _PTR, _PTR, _I64, _I64, _F64, _F64, _F64, _I64, _I64, _PTR]
_SIGNATURES = {f"dhe_uniform{out}_{variant}": _ARGS for out in ("", "_bf16") for variant in VARIANTS}
_SIGNATURES.update({f"ms_uniform{out}_{variant}": _ARGS for out in ("", "_bf16")
                    for variant in multiply_shift.VARIANTS})
_SIGNATURES["dhe_level"] = _SIGNATURES["dhe_openmp"] = _SIGNATURES["dhe_parallel_min_codes"] = []
_OUTPUTS = {torch.float32: "_uniform", torch.bfloat16: "_uniform_bf16"}  # codes' dtype -> function
_FAMILIES = {"universal": ("dhe", VARIANTS), "multiply_shift": ("ms", multiply_shift.VARIANTS)}


def _load():
    # OpenMP where the compiler has it: the rows on torch's own OpenMP threads (dhe_rows says why)
    lib, why = ckernels.load("dhe_hash", _SOURCE + multiply_shift.SOURCE, _SIGNATURES,
                             optional_flags=("-fopenmp",))
    if lib is not None:
        lib.dhe_parallel_min_codes.restype = ctypes.c_int64  # ctypes reads a C int otherwise
    return lib, why


def available() -> tuple[bool, str]:
    lib, why = _load()
    return lib is not None, why


def variants(dtype: torch.dtype = torch.float32, family: str = "universal") -> list[str]:
    """The variants this CPU runs for `family`'s codes in `dtype`, fastest last; none without the kernel."""
    lib, _ = _load()
    if lib is None:
        return []
    if dtype not in _OUTPUTS:
        return []
    level = lib.dhe_level()
    return [name for name, needs in _FAMILIES[family][1].items() if needs[dtype == torch.bfloat16] <= level]


def encode_uniform(flat: torch.Tensor, hash_a: torch.Tensor, hash_b: torch.Tensor, p: int, m: int,
                   dtype: torch.dtype = torch.float32, variant: str | None = None,
                   family: str = "universal") -> torch.Tensor | None:
    """[T, N] ids -> [T, N, k] uniform codes of the hash `family` in `dtype` (float32 or bfloat16), or None
    where the kernel is unavailable or has no such output. `variant`: the CPU's best unless named (tests
    compare them). `p` is the universal hash's prime (multiply_shift has none)."""
    lib, _ = _load()
    if lib is None or flat.device.type != "cpu" or dtype not in _OUTPUTS:
        return None
    runs = variants(dtype, family)
    variant = variant or runs[-1]
    if variant not in runs:
        raise ValueError(f"DHE hash variant {variant!r} for {dtype} codes: this CPU runs {runs}")
    encode = getattr(lib, f"{_FAMILIES[family][0]}{_OUTPUTS[dtype]}_{variant}")
    tables, lookups = flat.shape
    k = hash_a.shape[-1]
    if family == "multiply_shift":  # the ids as they are (the kernel takes their low 32 bits); a, b as uint32
        y, coefficients = flat.contiguous(), torch.int32
    else:
        y, coefficients = torch.remainder(flat, p).contiguous(), torch.float64
    a, b = (c.reshape(tables, k).to(coefficients).contiguous() for c in (hash_a, hash_b))
    constants = (float(p), float(m), 2.0 / (m - 1))
    codes = torch.empty(tables, lookups, k, dtype=dtype)
    if lib.dhe_openmp():  # one call: its rows shared among torch's OpenMP threads inside
        encode(y.data_ptr(), a.data_ptr(), b.data_ptr(), lookups, k, *constants, 0, tables, codes.data_ptr())
        return codes
    parts = ckernels.threads_for(tables * lookups * k, lib.dhe_parallel_min_codes())  # OpenMP's own threshold

    def call(t0: int, t1: int, lo: int, hi: int):
        # Tables [t0, t1), or lookups [lo, hi) of a single table (t0 = 0, t1 = 1): pointers moved to lo.
        return lambda: encode(y.data_ptr() + lo * 8, a.data_ptr(), b.data_ptr(), hi - lo, k, *constants,
                              t0, t1, codes.data_ptr() + lo * k * codes.element_size())

    if tables == 1:  # e.g. a cache's misses of one table: split its lookups
        bounds = [lookups * i // parts for i in range(parts + 1)]
        calls = [call(0, 1, lo, hi) for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    else:
        calls = [call(t0, t1, 0, lookups) for t0, t1 in ckernels.spans([1] * tables, parts)]
    ckernels.run_parallel(calls)
    return codes
