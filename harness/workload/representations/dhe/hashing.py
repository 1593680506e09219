"""The DHE hashes and dense code: ids -> k bucket indices -> a float32 code, in three arithmetics.

Two hash families, a choice of the representation (`hash`): `universal`, ((a x + b) mod p) mod m, and
`multiply_shift`, floor(h m / 2^32) with h = (a x + b) mod 2^32 on the id's low 32 bits. For either, every
method gives the same buckets, so the same id gets the same code on every device; which method a model
uses is a device setting (harness/workload/device.py), never a choice of the representation. For
`universal`:

- `float64` (CPUs): (a x + b) mod p = (a (x mod p) + b) mod p < p^2 + p < 2^53 is exact in float64, where
  the reductions are a few vectorised multiply/floor passes over cache-sized chunks, instead of int64
  division or libm's fmod (~5 ns per element here); for the uniform code on CPU tensors, one C pass
  (kernels.py) does it all in registers. 3x faster than int64 at query size 4096 (docs/performance.md).
- `int64` (GPUs): the definition in one pass. On an H200 the chunked float64 path was launch-bound
  (~10 small kernels per chunk): 21.2 ms at query size 1024, against 1.18 ms in one int64 pass.
- `int32` (TPU, IPU: no 64-bit arithmetic): Horner's rule over limbs of `a`, reducing mod p at every step.

`multiply_shift` needs no division at all: in int64 (GPUs, and CPUs without the C kernel) the product in
16-bit halves of `a`; in int32, h in wrapping 32-bit arithmetic (two's complement, as torch's int32 ops on
CPUs; TPUs and IPUs not exercised here) and h m by limbs; on CPUs one C pass (kernels.py), 2.5x faster
than the universal hash's. Its uniform code is scaled in float32 on every device: the C kernel's
arithmetic, so all methods give the same bits.
"""

from __future__ import annotations

import math

import torch

from harness.workload.representations.dhe import kernels

METHODS = ("float64", "int64", "int32")
# Elements of the float64 hash intermediate per chunk (2 MB per buffer): measured best of 2^15..2^21 at
# query size 4096 on the development machine (570 ms vs 790 ms at 2^16 and 980 ms at 2^19).
CHUNK_ELEMENTS = 1 << 18


def buckets_int64(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: int, m: int) -> torch.Tensor:
    """[T, N] ids -> [T, N, k] int64 buckets: the definition, ((a x + b) mod p) mod m.

    64-bit arithmetic throughout: a < p ~ 1e6 times an id up to ~1e7 is ~1e13, and a 32-bit product would
    overflow and silently change every code. Reducing x mod p first (the same value) keeps a (x mod p) + b
    < p^2 + p, so raw 64-bit hashed ids cannot overflow either.
    """
    return ((ids % p).unsqueeze(-1) * a + b) % p % m


def limbs(a: torch.Tensor, p: int) -> tuple[torch.Tensor, int] | None:
    """`a` split into int32 limbs of `30 - bits(p)` bits (most significant first), or None if p is too
    large for 32-bit hashing. With y = x mod p < 2^bits(p), r * 2^limb < 2^30 and limb * y < 2^30, so no
    intermediate of `buckets_int32` reaches 2^31 (p < 2^20 for the default m: two limbs)."""
    bits = 30 - p.bit_length()
    if bits < 1:
        return None
    parts, rest = [], a.clone()
    for _ in range(-(-p.bit_length() // bits)):
        parts.append((rest % (1 << bits)).to(torch.int32))
        rest = rest // (1 << bits)
    return torch.stack(parts[::-1]), bits


def buckets_int32(ids: torch.Tensor, a_limbs: torch.Tensor, limb_bits: int, b32: torch.Tensor, p: int,
                  m: int) -> torch.Tensor:
    """The same buckets as `buckets_int64` with 32-bit integers only (see `limbs`)."""
    y = torch.remainder(ids, p).to(torch.int32).unsqueeze(-1)
    r = torch.zeros(1, dtype=torch.int32, device=ids.device)
    shift = 1 << limb_bits
    for limb in a_limbs:
        r = torch.remainder(r * shift + limb * y, p)
    r = torch.remainder(r + b32, p)
    return torch.where(r >= m, r - m, r)


def buckets_multiply_shift(ids: torch.Tensor, a: torch.Tensor, b: torch.Tensor, m: int) -> torch.Tensor:
    """[T, N] ids -> [T, N, k] int64 buckets: the definition, floor(((a x + b) mod 2^32) m / 2^32), x the
    id's low 32 bits. a x mod 2^32 is taken in 16-bit halves of a, so no product passes 2^49 (a full
    32 x 32-bit product would overflow int64's sign)."""
    x = (ids & 0xFFFFFFFF).unsqueeze(-1)
    low, high = a & 0xFFFF, a >> 16
    h = (x * low + ((x * high) & 0xFFFF) * 65536 + b) & 0xFFFFFFFF
    return (h * m) >> 32


def buckets_multiply_shift_int32(ids: torch.Tensor, a32: torch.Tensor, b32: torch.Tensor,
                                 m: int) -> torch.Tensor:
    """The same buckets with 32-bit integers only: h = a x + b wraps mod 2^32 (a32, b32: a, b's bits as
    int32), then h m / 2^32 from 16-bit limbs of h and 13-bit limbs of m (m <= 2^26), every partial product
    and carry below 2^30."""
    h = ids.to(torch.int32).unsqueeze(-1) * a32 + b32
    h_low, h_high = h & 0xFFFF, (h >> 16) & 0xFFFF  # the arithmetic shift's sign bits masked off
    m_low, m_high = m & 0x1FFF, m >> 13
    carry = h_low * m_high + ((h_low * m_low) >> 13)  # h m = t3 2^29 + t2 2^16 + t1 2^13 + t0
    carry = h_high * m_low + (carry >> 3)
    return (h_high * m_high + (carry >> 13)) >> 3  # what remains below 2^29 cannot reach 2^32


def code(buckets: torch.Tensor, encoding: str, m: int, wide: torch.dtype = torch.float64) -> torch.Tensor:
    """Integer buckets [..., k] -> float32 codes: uniform in [-1, 1], or gaussian by Box-Muller on pairs.

    The scaling runs in `wide` precision: float64 gives bit-identical codes on every device that has it;
    float32 (devices without float64) agrees within 1e-7.
    """
    buckets = buckets.to(wide)
    if encoding == "uniform":
        return (buckets * (2.0 / (m - 1)) - 1.0).to(torch.float32)
    # gaussian: u1 in (0, 1] keeps the log finite.
    u1 = ((buckets[..., 0::2] + 1.0) / m).to(torch.float32)
    u2 = (buckets[..., 1::2] / m).to(torch.float32)
    radius = torch.sqrt(-2.0 * torch.log(u1))
    angle = (2.0 * math.pi) * u2
    return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(-2)


def _reduce_small(t: torch.Tensor, scratch: torch.Tensor, modulus: int) -> None:
    """t <- t mod modulus, in place, for integer-valued float64 t in [-modulus, 2 modulus).

    (t + 0.5) / modulus is never within 0.5 / modulus of an integer, far more than float64's error on
    values this small, so its floor is exact.
    """
    inv = 1.0 / modulus
    torch.mul(t, inv, out=scratch)
    scratch.add_(0.5 * inv).floor_()
    t.add_(scratch, alpha=-modulus)


def _reduce_large(t: torch.Tensor, scratch: torch.Tensor, modulus: int) -> None:
    """t <- t mod modulus, in place, for integer-valued float64 0 <= t < 2^52."""
    # floor(t / modulus) from a rounded product may be off by one: t lands in [-modulus, 2 modulus).
    torch.mul(t, 1.0 / modulus, out=scratch)
    t.add_(scratch.floor_(), alpha=-modulus)
    _reduce_small(t, scratch, modulus)


def hash_kernel(method: str, encoding: str, dtype: torch.dtype, family: str = "universal") -> str:
    """What computes the codes for `method` on a CPU: the C kernel's variant ("C avx512"), or torch."""
    fallback = "torch int64" if family == "multiply_shift" and method == "float64" else f"torch {method}"
    if method != "float64" or encoding != "uniform":
        return fallback
    runs = kernels.variants(dtype, family)
    if runs:
        return f"C {runs[-1]}"
    available, why = kernels.available()
    return fallback + ("" if available else f" ({why})")


def codes_float64(flat: torch.Tensor, a: torch.Tensor, b: torch.Tensor, p: int, m: int, encoding: str,
                  chunk_elements: int = CHUNK_ELEMENTS, use_kernel: bool = True,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[T, N] ids -> [T, N, k] codes, bit-identical to `code(buckets_int64(...))` (then cast to `dtype`,
    the decoders' precision: writing bf16 codes directly saves a pass over the largest tensor of DHE).

    Lookups go in chunks of about `chunk_elements` through preallocated scratch, so no pass allocates or
    leaves the cache; the uniform code on CPU tensors takes the one-pass C kernel where it is built
    (`use_kernel=False` keeps the torch path, which tests hold to the kernel).
    """
    if encoding == "uniform" and use_kernel:
        codes = kernels.encode_uniform(flat, a, b, p, m, dtype)
        if codes is not None:
            return codes
    y = torch.remainder(flat, p).to(torch.float64).unsqueeze(-1)
    tables, lookups, k = y.shape[0], y.shape[1], a.shape[-1]
    a, b = a.to(torch.float64), b.to(torch.float64)
    rows = max(1, min(lookups, chunk_elements // (tables * k)))
    value = torch.empty(tables, rows, k, dtype=torch.float64, device=flat.device)
    scratch = torch.empty_like(value)
    if dtype != torch.float32:  # fp32 first, then one rounding: the same codes as the kernel's
        return codes_float64(flat, a, b, p, m, encoding, chunk_elements, use_kernel).to(dtype)
    codes = torch.empty(tables, lookups, k, dtype=torch.float32, device=flat.device)
    for start in range(0, lookups, rows):
        n = min(rows, lookups - start)
        t, s = value[:, :n], scratch[:, :n]
        torch.mul(y[:, start : start + n], a, out=t)
        t.add_(b)
        _reduce_large(t, s, p)  # t = (a x + b) mod p
        _reduce_small(t, s, m)  # t = that mod m (p < 2m: one step)
        if encoding == "uniform":
            torch.mul(t, 2.0 / (m - 1), out=s)
            codes[:, start : start + n] = s.sub_(1.0)
        else:
            codes[:, start : start + n] = code(t, encoding, m)
    return codes
