"""Torch module for DHE: hashing and encoding on the device, then all decoders as batched GEMMs.

The T decoders (one per table) share a shape, so each layer is one `baddbmm` over a [T, in, out] weight
instead of T small GEMMs in a Python loop (benchmarks/representations.py measures both).

>>> import torch
>>> from harness.workload.representations.dhe import DheParams
>>> params = DheParams(k=8, decoder=[8, 6], m=1000, encoding="uniform", activation="none",
...                    batch_norm=False, seed=0)
>>> dhe = DeepHashEmbedding(features=[0, 1, 2], params=params, dim=4)
>>> dhe(torch.tensor([[[5], [7], [9]]])).shape   # ids [B=1, T=3, L=1] -> [B, T, D]
torch.Size([1, 3, 4])
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.workload.representations.dhe import DheParams, first_prime_above, hash_coefficients

# Elements of the float64 hash intermediate per chunk (2 MB per buffer): measured best of 2^15..2^21 at
# query size 4096 on the development machine (570 ms vs 790 ms at 2^16 and 980 ms at 2^19).
_CHUNK_ELEMENTS = 1 << 18


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


class TableBatchNorm(nn.Module):
    """BatchNorm over [T, N, C]: statistics per table and channel, across the N lookups."""

    def __init__(self, tables: int, width: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(tables, 1, width))
        self.bias = nn.Parameter(torch.zeros(tables, 1, width))
        self.register_buffer("running_mean", torch.zeros(tables, 1, width))
        self.register_buffer("running_var", torch.ones(tables, 1, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean = x.mean(1, keepdim=True)
            var = x.var(1, unbiased=False, keepdim=True)
            with torch.no_grad():
                n = x.shape[1]
                unbiased = var * n / max(n - 1, 1)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(unbiased, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (x - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias


class DeepHashEmbedding(nn.Module):
    """ids [B, T, L] of the given features -> [B, T, D], sum-pooled over L."""

    def __init__(self, features: Iterable[int], params: DheParams, dim: int) -> None:
        super().__init__()
        self.features = [int(f) for f in features]
        tables = len(self.features)
        self.k, self.m, self.p = params.k, params.m, first_prime_above(params.m)
        self.encoding, self.dim = params.encoding, dim
        coefficients = [hash_coefficients(params.seed, f, params.k, params.m) for f in self.features]
        self.register_buffer("hash_a", torch.from_numpy(np.stack([a for a, _ in coefficients])).unsqueeze(1))
        self.register_buffer("hash_b", torch.from_numpy(np.stack([b for _, b in coefficients])).unsqueeze(1))
        widths = params.widths(dim)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            # DLRM's MLP initialisation, per table.
            self.weights.append(nn.Parameter(torch.randn(tables, fan_in, fan_out) * math.sqrt(2 / (fan_in + fan_out))))
            self.biases.append(nn.Parameter(torch.randn(tables, 1, fan_out) * math.sqrt(1 / fan_out)))
        hidden = widths[1:-1]
        self.norms = nn.ModuleList(TableBatchNorm(tables, w) for w in hidden) if params.batch_norm else None
        self.activation = params.activation
        self.cache = None  # an MP-Cache of hot ids' vectors (dhe/cache.py), attached after training
        self.cache_enabled = False
        # How the hash is computed; all give the same buckets. float64: fastest on CPUs (the default);
        # int64: the definition; int32: for devices without 64-bit arithmetic (TPU, IPU), exact by limbs.
        # Backend adapters pick one in prepare(); the representation never knows the device.
        self.hash_arithmetic = "float64"
        # Elements per pass of the float64 hash: cache-sized chunks on CPUs; None (one pass) on GPUs,
        # where each chunk's ten small kernels cost more in launches than the cache saves (backends/cuda.py).
        self.hash_chunk_elements: int | None = _CHUNK_ELEMENTS
        # a split into limbs of `limb_bits` (most significant first) for the int32 Horner evaluation.
        self.limb_bits = 30 - self.p.bit_length()
        if self.limb_bits >= 1:
            limbs, a = [], self.hash_a.clone()
            for _ in range(-(-self.p.bit_length() // self.limb_bits)):
                limbs.append((a % (1 << self.limb_bits)).to(torch.int32))
                a = a // (1 << self.limb_bits)
            self.register_buffer("hash_a_limbs", torch.stack(limbs[::-1]), persistent=False)
            self.register_buffer("hash_b32", self.hash_b.to(torch.int32), persistent=False)

    def hash(self, ids: torch.Tensor, tables: slice = slice(None)) -> torch.Tensor:
        """[T, N] int64 ids -> [T, N, k] int64 buckets: the definition, ((a x + b) mod p) mod m.

        `encode` computes the same buckets faster; tests hold it to this. `tables` selects the rows of
        hash coefficients (a cache computes one table's misses).
        """
        # 64-bit arithmetic throughout: a < p ~ 1e6 times an id up to ~1e7 is ~1e13, and a 32-bit product
        # would overflow and silently change every code. Reducing x mod p first (the same value) keeps
        # a (x mod p) + b < p^2 + p, so raw 64-bit hashed ids cannot overflow either.
        return ((ids % self.p).unsqueeze(-1) * self.hash_a[tables] + self.hash_b[tables]) % self.p % self.m

    def hash_int32(self, ids: torch.Tensor, tables: slice = slice(None)) -> torch.Tensor:
        """The same buckets with 32-bit integers only: Horner's rule over limbs of a, reducing mod p
        after every step. With y = x mod p < 2^k and limbs of 30 - k bits, r * 2^limb < 2^30 and
        limb * y < 2^30, so no intermediate reaches 2^31 (p < 2^20 for the default m: two limbs)."""
        if self.limb_bits < 1:
            raise ValueError(f"representation.m={self.m:,} is too large for 32-bit hashing (p must be < 2^29)")
        y = torch.remainder(ids, self.p).to(torch.int32).unsqueeze(-1)
        r = torch.zeros(1, dtype=torch.int32, device=ids.device)
        shift = 1 << self.limb_bits
        for limb in self.hash_a_limbs[:, tables]:
            r = torch.remainder(r * shift + limb * y, self.p)
        r = torch.remainder(r + self.hash_b32[tables], self.p)
        return torch.where(r >= self.m, r - self.m, r)

    def _code(self, buckets: torch.Tensor) -> torch.Tensor:
        # Integer buckets become float64 for the scaling where the device has it (bit-identical codes on
        # every such device); int32 hashing means no float64 either: scale in float32 (within 1e-7).
        wide = torch.float32 if self.hash_arithmetic == "int32" else torch.float64
        buckets = buckets.to(wide)
        if self.encoding == "uniform":
            return (buckets * (2.0 / (self.m - 1)) - 1.0).to(torch.float32)
        # gaussian: Box-Muller on consecutive pairs; u1 in (0, 1] keeps the log finite.
        u1 = ((buckets[..., 0::2] + 1.0) / self.m).to(torch.float32)
        u2 = (buckets[..., 1::2] / self.m).to(torch.float32)
        radius = torch.sqrt(-2.0 * torch.log(u1))
        angle = (2.0 * math.pi) * u2
        return torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=-1).flatten(-2)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T, L] -> dense codes [T, B*L, k] float32, bit-identical to `_code(hash(ids))`.

        (a x + b) mod p = (a (x mod p) + b) mod p, and with x mod p < p < 2^20 the value stays below 2^41:
        exact in float64, where the reductions are a few vectorised multiply/floor passes instead of
        int64 division or libm's fmod (both ~5 ns per element here). Lookups go in cache-sized chunks
        through preallocated scratch, so no pass allocates or leaves the cache. 3x faster than int64
        arithmetic at query size 4096 (docs/performance.md).
        """
        return self.encode_flat(ids.permute(1, 0, 2).reshape(ids.shape[1], -1))

    def encode_flat(self, flat: torch.Tensor, tables: slice = slice(None)) -> torch.Tensor:
        """[T', N] ids of the tables `tables` selects -> codes [T', N, k] (see `encode`)."""
        if self.hash_arithmetic != "float64":
            hashed = self.hash if self.hash_arithmetic == "int64" else self.hash_int32
            return self._code(hashed(flat, tables))
        if self.encoding == "uniform" and self.hash_chunk_elements is not None:  # CPU: one C pass if we can
            from harness.workload.representations.dhe.kernels import encode_uniform

            codes = encode_uniform(flat, self.hash_a[tables], self.hash_b[tables], self.p, self.m)
            if codes is not None:
                return codes
        y = torch.remainder(flat, self.p).to(torch.float64).unsqueeze(-1)
        tables_n, lookups = y.shape[0], y.shape[1]
        a, b = self.hash_a[tables].to(torch.float64), self.hash_b[tables].to(torch.float64)
        chunk = self.hash_chunk_elements or tables_n * lookups * self.k  # None: one pass
        rows = max(1, min(lookups, chunk // (tables_n * self.k)))
        value = torch.empty(tables_n, rows, self.k, dtype=torch.float64, device=flat.device)
        scratch = torch.empty_like(value)
        codes = torch.empty(tables_n, lookups, self.k, dtype=torch.float32, device=flat.device)
        for start in range(0, lookups, rows):
            n = min(rows, lookups - start)
            t, s = value[:, :n], scratch[:, :n]
            torch.mul(y[:, start : start + n], a, out=t)
            t.add_(b)
            _reduce_large(t, s, self.p)  # t = (a x + b) mod p
            _reduce_small(t, s, self.m)  # t = that mod m (p < 2m: one step)
            if self.encoding == "uniform":
                torch.mul(t, 2.0 / (self.m - 1), out=s)
                codes[:, start : start + n] = s.sub_(1.0)
            else:
                codes[:, start : start + n] = self._code(t)
        return codes

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        if self.activation == "mish":
            return F.mish(x)
        return x

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[T, N, k] codes -> [T, N, D]: one baddbmm per layer for all tables."""
        x = codes
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(bias, x, weight)
            if i < last:
                if self.norms is not None:
                    x = self.norms[i](x)
                x = torch.relu(x)
        return self._final(x)

    def decode_table(self, t: int, codes: torch.Tensor) -> torch.Tensor:
        """One table's decoder on codes [N, k] -> [N, D] (eval mode: BatchNorm with running statistics)."""
        x = codes
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.addmm(bias[t], x, weight[t])
            if i < last:
                if self.norms is not None:
                    n = self.norms[i]
                    x = (x - n.running_mean[t]) * torch.rsqrt(n.running_var[t] + n.eps) * n.weight[t] + n.bias[t]
                x = torch.relu(x)
        return self._final(x)

    def decode_per_table(self, codes: torch.Tensor) -> torch.Tensor:
        """`decode` as a Python loop of per-table GEMMs: the layout `decode` replaces, kept to measure it."""
        if self.norms is not None:
            raise NotImplementedError("decode_per_table is a benchmark baseline without BatchNorm")
        last = len(self.weights) - 1
        out = []
        for t in range(codes.shape[0]):
            x = codes[t]
            for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
                x = torch.addmm(bias[t], x, weight[t])
                if i < last:
                    x = torch.relu(x)
            out.append(self._final(x))
        return torch.stack(out)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cache is not None and self.cache_enabled and not self.training:
            return self.cache.lookup(self, ids)
        batch, tables, per_bag = ids.shape
        x = self.decode(self.encode(ids)).view(tables, batch, per_bag, self.dim)
        x = x.sum(2) if per_bag > 1 else x.squeeze(2)
        return x.transpose(0, 1)
