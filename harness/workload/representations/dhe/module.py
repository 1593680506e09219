"""Torch module for DHE: hashing and encoding on the device (hashing.py), then all decoders as batched GEMMs.

The T decoders (one per table) share a shape, so each layer is one `baddbmm` over a [T, in, out] weight
instead of T small GEMMs in a Python loop (benchmarks/representations.py measures both). How the hash is
computed is a device setting, given by `configure` (harness/workload/device.py), never chosen here.

>>> import torch
>>> from harness.workload.representations.dhe import DheParams
>>> params = DheParams(k=8, decoder=[8, 6], m=1000, hash="multiply_shift", encoding="uniform",
...                    activation="none", batch_norm=False, seed=0)
>>> dhe = DeepHashEmbedding(features=[0, 1, 2], params=params, dim=4)
>>> dhe(torch.tensor([[[5], [7], [9]]])).shape   # ids [B=1, T=3, L=1] -> [B, T, D]
torch.Size([1, 3, 4])
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Iterable, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.core.errors import ConfigError
from harness.workload import onednn
from harness.workload.derived import Derived
from harness.workload.representations.dhe import (
    DheParams,
    first_prime_above,
    hash_coefficients,
    hashing,
    kernels,
)

if TYPE_CHECKING:
    from harness.workload.representations.dhe.cache import DheCache


class TableBatchNorm(nn.Module):
    """BatchNorm over [T, N, C]: statistics per table and channel, across the N lookups."""

    running_mean: torch.Tensor  # buffers, declared for the type checker
    running_var: torch.Tensor

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


def _out_by_in(weight: torch.Tensor) -> torch.Tensor:
    return weight.transpose(1, 2).contiguous()


class DeepHashEmbedding(nn.Module):
    """ids [B, T, L] of the given features -> [B, T, D], sum-pooled over L."""

    hash_a: torch.Tensor  # buffers, declared for the type checker
    hash_b: torch.Tensor
    hash_a_limbs: torch.Tensor
    hash_a32: torch.Tensor
    hash_b32: torch.Tensor
    cache: DheCache | None
    cache_enabled: bool

    def __init__(self, features: Iterable[int], params: DheParams, dim: int) -> None:
        super().__init__()
        self.features = [int(f) for f in features]
        tables = len(self.features)
        self.k, self.m, self.p = params.k, params.m, first_prime_above(params.m)
        self.encoding, self.dim, self.family = params.encoding, dim, params.hash
        coefficients = [hash_coefficients(params.seed, f, params.k, params.m, self.family)
                        for f in self.features]
        self.register_buffer("hash_a", torch.from_numpy(np.stack([a for a, _ in coefficients])).unsqueeze(1))
        self.register_buffer("hash_b", torch.from_numpy(np.stack([b for _, b in coefficients])).unsqueeze(1))
        widths = params.widths(dim)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            # DLRM's MLP initialisation, per table.
            self.weights.append(
                nn.Parameter(torch.randn(tables, fan_in, fan_out) * math.sqrt(2 / (fan_in + fan_out)))
            )
            self.biases.append(nn.Parameter(torch.randn(tables, 1, fan_out) * math.sqrt(1 / fan_out)))
        hidden = widths[1:-1]
        self.norms = nn.ModuleList(TableBatchNorm(tables, w) for w in hidden) if params.batch_norm else None
        self.activation = params.activation
        self.cache = None  # an MP-Cache of hot ids' vectors (dhe/cache.py), attached after training
        self.cache_enabled = False
        self.hash_method = "float64"  # hashing.METHODS; the device's setting, given by `configure`
        self.linear_kernel = "aten"  # the device's setting: onednn runs fp32 first layers per table (decode)
        self._transposed = Derived(_out_by_in)  # the first layer's weight as [T, out, in], for oneDNN
        # For the int32 method; not saved: derived from hash_a and hash_b (multiply_shift's as their bits)
        split = hashing.limbs(self.hash_a, self.p) if self.family == "universal" else None
        self.limb_bits = split[1] if split else 0
        if split:
            self.register_buffer("hash_a_limbs", split[0], persistent=False)
        if split or self.family == "multiply_shift":
            self.register_buffer("hash_b32", self.hash_b.to(torch.int32), persistent=False)
        if self.family == "multiply_shift":
            self.register_buffer("hash_a32", self.hash_a.to(torch.int32), persistent=False)

    def configure(self, settings) -> None:
        """Take the device's settings (harness/workload/device.py): here, which hash arithmetic to use."""
        if settings.hash_method == "int32" and self.family == "universal" and not self.limb_bits:
            raise ConfigError("representation.m",
                              f"{self.m:,} is too large for 32-bit hashing (p must be < 2^29)")
        self.hash_method = settings.hash_method
        self.linear_kernel = settings.linear_kernel

    def kernel_choices(self) -> dict[str, str]:
        """Which code hashes here (recorded with the run: harness/workload/device.py `recorded`)."""
        method = self.hash_method
        if method == "float64" and self.hash_a.device.type != "cpu":  # the C kernel hashes CPU tensors only
            return {"dhe_hash": "torch int64" if self.family == "multiply_shift" else "torch float64"}
        return {"dhe_hash": hashing.hash_kernel(method, self.encoding, self.weights[0].dtype, self.family)}

    def hash(self, ids: torch.Tensor, tables: slice = slice(None)) -> torch.Tensor:
        """[T, N] int64 ids -> [T, N, k] int64 buckets: the family's definition every method equals.

        `tables` selects the rows of hash coefficients (a cache computes one table's misses)."""
        if self.family == "multiply_shift":
            return hashing.buckets_multiply_shift(ids, self.hash_a[tables], self.hash_b[tables], self.m)
        return hashing.buckets_int64(ids, self.hash_a[tables], self.hash_b[tables], self.p, self.m)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T, L] -> dense codes [T, B*L, k] float32, by the configured hash method."""
        return self.encode_flat(ids.permute(1, 0, 2).reshape(ids.shape[1], -1))

    def encode_flat(self, flat: torch.Tensor, tables: slice = slice(None)) -> torch.Tensor:
        """[T', N] ids of the tables `tables` selects -> codes [T', N, k] (see `encode`)."""
        a, b = self.hash_a[tables], self.hash_b[tables]
        if self.family == "multiply_shift":
            return self._encode_multiply_shift(flat, tables)
        if self.hash_method == "int64":
            return hashing.code(hashing.buckets_int64(flat, a, b, self.p, self.m), self.encoding, self.m)
        if self.hash_method == "int32":  # no float64 on such devices either: scale in float32
            buckets = hashing.buckets_int32(flat, self.hash_a_limbs[:, tables], self.limb_bits,
                                            self.hash_b32[tables], self.p, self.m)
            return hashing.code(buckets, self.encoding, self.m, wide=torch.float32)
        # Codes straight in the decoders' dtype (bf16 when the path computes in it): one pass less.
        return hashing.codes_float64(flat, a, b, self.p, self.m, self.encoding, dtype=self.weights[0].dtype)

    def _encode_multiply_shift(self, flat: torch.Tensor, tables: slice) -> torch.Tensor:
        # Scaled in float32 on every device: the C kernel's arithmetic (hashing.py), so all give the same bits
        dtype = self.weights[0].dtype
        if self.hash_method == "float64" and self.encoding == "uniform":  # a CPU's setting: the C kernel
            # a and b as the kernel reads them (uint32 bits), made once: converting each call cost ~9 us of a
            # 0.6 ms DHE forward at q = 1
            codes = kernels.encode_uniform(flat, self.hash_a32[tables], self.hash_b32[tables], self.p, self.m,
                                           dtype, family="multiply_shift")
            if codes is not None:
                return codes
        if self.hash_method == "int32":
            buckets = hashing.buckets_multiply_shift_int32(flat, self.hash_a32[tables], self.hash_b32[tables],
                                                           self.m)
        else:
            buckets = self.hash(flat, tables)
        return hashing.code(buckets, self.encoding, self.m, wide=torch.float32)

    def _final(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation == "sigmoid":
            return torch.sigmoid(x)
        if self.activation == "mish":
            return F.mish(x)
        return x

    def _first_layer_onednn(self, x: torch.Tensor, relu: bool) -> torch.Tensor:
        """The first layer, table by table, as oneDNN's fused linear (and ReLU): aten's fp32 baddbmm ran the
        Kaggle decoders' [4096, 1024] x [1024, 128] per table at 121 GFLOP/s on 2 EPYC cores, oneDNN at
        182 (153.6 vs 231.4 ms for 26 tables); in bf16 baddbmm is the faster (353 vs 334), and keeps it."""
        weight, bias = self.weights[0], self.biases[0]
        transposed = self._transposed.get(weight)  # linear's [out, in] layout, made once per weight
        out = torch.empty(x.shape[0], x.shape[1], weight.shape[2], dtype=x.dtype)
        activation = "relu" if relu else "none"
        for t in range(x.shape[0]):
            out[t] = onednn.linear(x[t], transposed[t], bias[t, 0], activation)
        return out

    def _onednn_fits(self, x: torch.Tensor) -> bool:
        # fp32 only: in bf16 baddbmm is the faster (see `_first_layer_onednn`); `linear_kernel` is "onednn"
        # on host CPUs only (harness/workload/device.py)
        return (self.linear_kernel == "onednn" and not self.training and x.dtype == torch.float32
                and x.shape[1] >= onednn.MIN_ROWS
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weights[0].requires_grad)))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """[T, N, k] codes -> [T, N, D]: one baddbmm per layer for all tables, in the weights' dtype."""
        x = codes.to(self.weights[0].dtype)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if i == 0 and self._onednn_fits(x):
                fused_relu = 0 < last and self.norms is None
                x = self._first_layer_onednn(x, fused_relu)
                if fused_relu:
                    continue
            else:
                x = torch.baddbmm(bias, x, weight)
            if i < last:
                if self.norms is not None:
                    x = self.norms[i](x)
                # In place: a second [T, N, hidden] tensor costs a pass (13 of 49 ms for bf16 decoders at
                # 4096 on 2 cores); baddbmm and the norm keep no output for their backward.
                x = x.relu_()
        return self._final(x)

    def decode_table(self, t: int, codes: torch.Tensor) -> torch.Tensor:
        """One table's decoder on codes [N, k] -> [N, D] (eval mode: BatchNorm with running statistics)."""
        x = codes.to(self.weights[0].dtype)
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            x = torch.addmm(bias[t], x, weight[t])
            if i < last:
                if self.norms is not None:
                    n = cast(TableBatchNorm, self.norms[i])
                    scale = torch.rsqrt(n.running_var[t] + n.eps) * n.weight[t]
                    x = (x - n.running_mean[t]) * scale + n.bias[t]
                x = torch.relu(x)
        return self._final(x)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cache is not None and self.cache_enabled and not self.training:
            return self.cache.lookup(self, ids)
        batch, tables, per_bag = ids.shape
        x = self.decode(self.encode(ids)).view(tables, batch, per_bag, self.dim)
        x = x.sum(2) if per_bag > 1 else x.squeeze(2)
        return x.transpose(0, 1)
