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

# Appended to kernels.py's source: its rows (dhe_row, DHE_SCALAR_ROWS, DHE_ENTRY) and DHE_AVX512* targets.
SOURCE = r"""
/* The code of hash j of one id: a, b as uint32; the id's low 32 bits; m and scale from the row's doubles
   (exact: m <= 2^26; the scale rounded to float32 once, as torch rounds a Python float for a float32
   tensor). */
static inline float ms_code_at(const dhe_row *r, int64_t j) {
    const uint32_t h = ((const uint32_t *) r->a)[j] * (uint32_t) r->id + ((const uint32_t *) r->b)[j];
    return (float) (uint32_t) (((uint64_t) h * (uint64_t) r->m) >> 32) * (float) r->scale - 1.0f;
}
DHE_SCALAR_ROWS(ms)

#ifdef DHE_AVX512_OK
/* Sixteen codes: the products of even and odd lanes apart (vpmuludq takes a 64-bit lane's low half), their
   high halves blended back into place; the bucket (< 2^26) converts exactly as a signed int32. */
typedef struct { __m512i x, m; __m512 scale; } ms_vec16;  /* a row's constants, in registers */

DHE_AVX512 static inline ms_vec16 ms_broadcast16(const dhe_row *r) {
    return (ms_vec16) { _mm512_set1_epi32((int) (uint32_t) r->id), _mm512_set1_epi32((int) r->m),
                        _mm512_set1_ps((float) r->scale) };
}

DHE_AVX512 static inline __m512 ms_code16(const dhe_row *r, int64_t j, ms_vec16 c) {
    const uint32_t *a = r->a, *b = r->b;
    const __m512i h = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_loadu_si512(a + j), c.x),
                                       _mm512_loadu_si512(b + j));
    const __m512i even = _mm512_srli_epi64(_mm512_mul_epu32(h, c.m), 32);
    const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(h, 32), c.m);
    const __m512i bucket = _mm512_mask_blend_epi32(0xAAAA, even, odd);
    return _mm512_sub_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(bucket), c.scale), _mm512_set1_ps(1.0f));
}

DHE_AVX512 static void ms_row_avx512(const dhe_row *r, void *out) {
    const ms_vec16 c = ms_broadcast16(r);
    int64_t j = 0;
    for (; j + 16 <= r->k; j += 16)
        _mm512_storeu_ps((float *) out + j, ms_code16(r, j, c));
    ms_tail(r, j, out, 0);
}

/* bf16 by AVX512-BF16's conversion, round to nearest even as dhe_bf16 (no code is subnormal: a float32
   near 1 minus 1 is 0 or at least 2^-24). */
DHE_AVX512BF16 static void ms_row_bf16_avx512(const dhe_row *r, void *out) {
    const ms_vec16 c = ms_broadcast16(r);
    int64_t j = 0;
    for (; j + 16 <= r->k; j += 16)
        _mm256_storeu_si256((__m256i *) ((uint16_t *) out + j),
                            (__m256i) _mm512_cvtneps_pbh(ms_code16(r, j, c)));
    ms_tail(r, j, out, 1);
}
#else  /* as kernels.py's rows: stood in for, never called where dhe_level() is below 2 */
#define ms_row_avx512 ms_row_plain
#define ms_row_bf16_avx512 ms_row_bf16_plain
#endif

DHE_ENTRY(ms_uniform_plain, ms_row_plain, 4, float, 4)
DHE_ENTRY(ms_uniform_bf16_plain, ms_row_bf16_plain, 2, uint16_t, 4)
DHE_ENTRY(ms_uniform_avx512, ms_row_avx512, 4, float, 4)
DHE_ENTRY(ms_uniform_bf16_avx512, ms_row_bf16_avx512, 2, uint16_t, 4)
"""

# The level (kernels.py `dhe_level`) each variant needs for (float32, bfloat16) codes: plain C (AVX2
# clones, which vectorize the 32-bit arithmetic themselves), AVX-512 (F; VL and BF16 too for bf16 codes)
VARIANTS = {"plain": (0, 0), "avx512": (2, 3)}
