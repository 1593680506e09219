"""The multiply-shift hash's uniform code in one C pass: the C text kernels.py appends to its library.

The universal hash ((a x + b) mod p) mod m needs a reduction mod a prime: the float64 kernel's multiply,
rounding and two corrections per code held DHE in bf16 at about 70 % of its bound (the first decoder layer
near the bf16 peak, the hash ~21 ms of ~107 at q = 4096 on 2 Zen 4 cores). Multiply-shift,
h = (a x + b) mod 2^32 and bucket = (h m) >> 32, is one 32-bit multiply-add and one 32 x 32 -> 64-bit
product per code, sixteen codes to an AVX-512 register: the same codes 2.5x sooner, at the speed the
codes can be written. The code is scaled in float32, (float) bucket * scale - 1 with two roundings (the
library is built with -ffp-contract=off), as hashing.py's torch definition computes it: the same bits.
"""

from __future__ import annotations

# Appended to kernels.py's source: it uses dhe_bf16, DHE_PARALLEL_MIN_CODES and the DHE_AVX512* targets.
SOURCE = r"""
/* One id's k multiply-shift codes (a row of the output). a, b: the hashes' coefficients as uint32. */
typedef struct { const uint32_t *a, *b; uint32_t x; uint64_t m; float scale; int64_t k; } ms_row;

static inline float ms_code(const ms_row *r, int64_t j) {
    const uint32_t h = r->a[j] * r->x + r->b[j];  /* unsigned: wraps mod 2^32 by definition */
    return (float) (uint32_t) (((uint64_t) h * r->m) >> 32) * r->scale - 1.0f;
}

static inline void ms_tail(const ms_row *r, int64_t j, void *out, int bf16) {
    for (; j < r->k; ++j) {
        const float code = ms_code(r, j);
        if (bf16) ((uint16_t *) out)[j] = dhe_bf16(code);
        else ((float *) out)[j] = code;
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void ms_row_plain(const ms_row *r, void *out) { ms_tail(r, 0, out, 0); }

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static void ms_row_bf16_plain(const ms_row *r, void *out) { ms_tail(r, 0, out, 1); }

typedef void (*ms_row_fn)(const ms_row *, void *);

/* codes[t, n, :] for tables [t0, t1), rows shared among torch's OpenMP threads as dhe_rows does. */
static void ms_rows(ms_row_fn fill, int64_t size, const int64_t *ids, const uint32_t *a, const uint32_t *b,
                    int64_t lookups, int64_t k, int64_t m, float scale, int64_t t0, int64_t t1, void *codes) {
    const int64_t first = t0 * lookups, last = t1 * lookups;
#pragma omp parallel for schedule(static) if ((last - first) * k >= DHE_PARALLEL_MIN_CODES)
    for (int64_t i = first; i < last; ++i) {
        const int64_t t = i / lookups;
        const ms_row r = { a + t * k, b + t * k, (uint32_t) ids[i], (uint64_t) m, scale, k };
        fill(&r, (char *) codes + i * k * size);
    }
}

#ifdef DHE_AVX512_OK
/* Sixteen codes: the products of even and odd lanes apart (vpmuludq takes a 64-bit lane's low half), their
   high halves blended back into place; the bucket (< 2^26) converts exactly as a signed int32. */
DHE_AVX512 static inline __m512 ms_code16(const ms_row *r, int64_t j, __m512i x, __m512i m, __m512 scale) {
    const __m512i h = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_loadu_si512(r->a + j), x),
                                       _mm512_loadu_si512(r->b + j));
    const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(h, m), 32);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(h, 32), m);
    const __m512i bucket = _mm512_mask_blend_epi32(0xAAAA, even, odd);
    return _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(bucket), scale), _mm512_set1_ps(1.0f));
}

DHE_AVX512 static void ms_row_avx512(const ms_row *r, void *out) {
    const __m512i x = _mm512_set1_epi32((int) r->x), m = _mm512_set1_epi32((int) r->m);
    const __m512 scale = _mm512_set1_ps(r->scale);
    int64_t j = 0;
    for (; j + 16 <= r->k; j += 16)
        _mm512_storeu_ps((float *) out + j, ms_code16(r, j, x, m, scale));
    ms_tail(r, j, out, 0);
}

/* bf16 by AVX512-BF16's conversion, round to nearest even as dhe_bf16 (no code is subnormal: a float32
   near 1 minus 1 is 0 or at least 2^-24). */
DHE_AVX512BF16 static void ms_row_bf16_avx512(const ms_row *r, void *out) {
    const __m512i x = _mm512_set1_epi32((int) r->x), m = _mm512_set1_epi32((int) r->m);
    const __m512 scale = _mm512_set1_ps(r->scale);
    int64_t j = 0;
    for (; j + 16 <= r->k; j += 16)
        _mm256_storeu_si256((__m256i *) ((uint16_t *) out + j),
                            (__m256i) _mm512_cvtneps_pbh(ms_code16(r, j, x, m, scale)));
    ms_tail(r, j, out, 1);
}
#endif

#define MS_ENTRY(NAME, ROW, SIZE, OUT_T)                                                                    \
    void NAME(const int64_t *ids, const uint32_t *a, const uint32_t *b, int64_t lookups, int64_t k,          \
              int64_t m, float scale, int64_t t0, int64_t t1, OUT_T *codes) {                               \
        ms_rows(ROW, SIZE, ids, a, b, lookups, k, m, scale, t0, t1, codes);                                \
    }
MS_ENTRY(ms_uniform_plain, ms_row_plain, 4, float)
MS_ENTRY(ms_uniform_bf16_plain, ms_row_bf16_plain, 2, uint16_t)
#ifdef DHE_AVX512_OK
MS_ENTRY(ms_uniform_avx512, ms_row_avx512, 4, float)
MS_ENTRY(ms_uniform_bf16_avx512, ms_row_bf16_avx512, 2, uint16_t)
#else  /* never called where dhe_level() is below 2; present so that every build has the names */
MS_ENTRY(ms_uniform_avx512, ms_row_plain, 4, float)
MS_ENTRY(ms_uniform_bf16_avx512, ms_row_bf16_plain, 2, uint16_t)
#endif
"""

# The level (kernels.py `dhe_level`) each variant needs for (float32, bfloat16) codes: plain C (AVX2
# clones, which vectorize the 32-bit arithmetic themselves), AVX-512 (F; VL and BF16 too for bf16 codes)
VARIANTS = {"plain": (0, 0), "avx512": (2, 3)}
