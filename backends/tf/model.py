"""The DLRM and every representation in TensorFlow, built from a torch model's spec and weights.

`TfDLRM.from_torch(model)` walks the torch modules (the same workload, one implementation per
framework) and copies their weights, so both frameworks compute the same function and their outputs can
be compared (tests/test_backend_parity.py). Integer work (ids, TT digits, DHE hashes) stays in int64.

Precision (harness/workload/precision.py) carries over as the torch model holds it: each weight keeps its
torch dtype (bf16 or fp16 MLPs, decoders and cores; fp16, int8 or int4 table rows, the last two dequantized in
the lookup as FBGEMM does), and the DLRM casts its inputs to the compute dtype and its logits to fp32.
Keras' mixed-precision policies would keep fp32 variables and cast them at every call; casting once, as
here, is the inference form of the same arithmetic.

>>> import torch
>>> from harness.workload.dlrm import build_model
>>> from harness.core.spec import WorkloadSpec
>>> from harness.workload.representations.table import Config
>>> config = Config(layout="fused", storage="fp32")
>>> model = build_model(WorkloadSpec((5, 7), 4, (13, 8, 4), (6, 1), representation=config))
>>> tf_model = TfDLRM.from_torch(model)
>>> dense, ids = torch.rand(3, 13), torch.zeros(3, 2, 1, dtype=torch.int64)
>>> bool(abs(tf_model(dense.numpy(), ids.numpy()).numpy() - model(dense, ids).detach().numpy()).max() < 1e-5)
True
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf


def _np(t) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.is_floating_point() else t).numpy()  # numpy has no bf16: via fp32, exactly


def _const(t) -> tf.Tensor:
    """A torch tensor as a TF constant of the same dtype (bf16 and fp16 included)."""
    value = tf.constant(_np(t))
    dtype = _TF_DTYPES.get(str(t.dtype))
    return tf.cast(value, dtype) if dtype is not None else value


_TF_DTYPES = {"torch.bfloat16": tf.bfloat16, "torch.float16": tf.float16}


def _linears(sequential) -> list[tuple[tf.Variable, tf.Variable]]:
    """torch Linear layers (weight [out, in]) as TF (kernel [in, out], bias)."""
    from torch import nn

    return [(_const(m.weight.T), _const(m.bias)) for m in sequential if isinstance(m, nn.Linear)]


class Tables:
    """Fused tables: one weight (fp32, fp16, int8 rows with an fp32 scale and bias, or int4 rows with an
    fp16 scale and bias), row offsets."""

    def __init__(self, weight: tf.Tensor, offsets: np.ndarray, int8_dim: int = 0, int4_dim: int = 0) -> None:
        self.weight = weight
        self.offsets = tf.constant(offsets.astype(np.int64))
        self.int8_dim = int8_dim  # > 0: `weight` holds FBGEMM's byte rows of this many values
        self.int4_dim = int4_dim  # > 0: `weight` holds FBGEMM's 4-bit rows of this many values

    @classmethod
    def from_torch(cls, module) -> "Tables":
        if hasattr(module, "bags"):  # per-table layout: stack it into the fused one
            weights = [_np(bag.weight) for bag in module.bags]
            offsets = np.cumsum([0] + [w.shape[0] for w in weights[:-1]])
            return cls(tf.constant(np.concatenate(weights)), offsets)
        storage = getattr(module, "storage", "fp32")
        if storage == "int8":
            return cls(tf.constant(_np(module.packed)), _np(module.row_offsets), int8_dim=module.dim)
        if storage == "int4":
            return cls(tf.constant(_np(module.packed)), _np(module.row_offsets), int4_dim=module.dim)
        return cls(_const(module.weight), _np(module.row_offsets))

    def __call__(self, ids):
        flat = ids + self.offsets[None, :, None]
        rows = tf.gather(self.weight, flat)
        if self.int8_dim:  # values x scale + bias, the dequantization FBGEMM's kernel does
            tail = rows[..., self.int8_dim:]  # 8 bytes: the fp32 scale, then the fp32 bias
            scale_bias = tf.bitcast(tf.reshape(tail, tf.concat([tf.shape(tail)[:-1], [2, 4]], 0)), tf.float32)
            rows = tf.cast(rows[..., : self.int8_dim], tf.float32) * scale_bias[..., :1] + scale_bias[..., 1:]
        elif self.int4_dim:  # value 2j in byte j's low nibble, 2j + 1 in its high one; fp16 scale and bias
            half = self.int4_dim // 2
            nibbles = rows[..., :half]
            values = tf.stack([tf.bitwise.bitwise_and(nibbles, 15), tf.bitwise.right_shift(nibbles, 4)], -1)
            values = tf.reshape(values, tf.concat([tf.shape(nibbles)[:-1], [self.int4_dim]], 0))
            tail = rows[..., half : half + 4]
            scale_bias = tf.cast(tf.bitcast(tf.reshape(tail, tf.concat([tf.shape(tail)[:-1], [2, 2]], 0)),
                                            tf.float16), tf.float32)
            rows = tf.cast(values, tf.float32) * scale_bias[..., :1] + scale_bias[..., 1:]
        elif self.weight.dtype == tf.float16:  # bags of fp16 rows are pooled in fp32, as in torch
            rows = tf.cast(rows, tf.float32)
        return tf.reduce_sum(rows, axis=2)


class TensorTrain:
    """TT tables: mixed-radix digits select a slice of every core; the slices chain by matmuls."""

    def __init__(self, module) -> None:
        self.cores = [_const(c) for c in module.cores]
        self.radix = tf.constant(_np(module.radix))
        self.strides = tf.constant(_np(module.strides))
        self.offsets = tf.constant(_np(module.core_offsets))
        self.q, self.ranks, self.dim = list(module.q), list(module.ranks), module.dim

    def __call__(self, ids):
        batch, tables, per_bag = tf.shape(ids)[0], tf.shape(ids)[1], tf.shape(ids)[2]
        flat = tf.reshape(tf.transpose(ids, [0, 2, 1]), [-1, tables])
        digits = tf.math.floormod(tf.math.floordiv(flat[:, :, None], self.strides), self.radix) + self.offsets
        rows = tf.reshape(tf.transpose(digits, [2, 0, 1]), [len(self.cores), -1])
        out = tf.reshape(tf.gather(self.cores[0], rows[0]), [-1, self.q[0], self.ranks[1]])
        for k in range(1, len(self.cores)):
            piece = tf.gather(self.cores[k], rows[k])
            out = tf.linalg.matmul(out, tf.reshape(piece, [-1, self.ranks[k], self.q[k] * self.ranks[k + 1]]))
            out = tf.reshape(out, [tf.shape(out)[0], -1, self.ranks[k + 1]])
        out = tf.reshape(out, [batch, per_bag, tables, self.dim])
        return tf.reduce_sum(out, axis=1)


class DeepHash:
    """DHE: int64 hashes (the module's family), dense codes, batched decoder matmuls over tables."""

    def __init__(self, module) -> None:
        if module.cache is not None and module.cache_enabled:
            raise NotImplementedError(
                "dhe+cache (MP-Cache) runs on the torch backends; measure plain dhe on tf"
            )
        self.a = tf.constant(_np(module.hash_a))  # [T, 1, k]
        self.b = tf.constant(_np(module.hash_b))
        self.p, self.m, self.k, self.dim = module.p, module.m, module.k, module.dim
        self.family = module.family
        self.encoding, self.activation = module.encoding, module.activation
        self.layers = [(_const(w), _const(b)) for w, b in zip(module.weights, module.biases)]
        self.norms = None
        if module.norms is not None:
            self.norms = [(_const(n.running_mean), _const(n.running_var), _const(n.weight), _const(n.bias),
                           n.eps) for n in module.norms]

    def buckets(self, flat):
        """The module's definition (dhe/hashing.py): multiply_shift with a in 16-bit halves, in int64."""
        if self.family == "multiply_shift":
            x = tf.bitwise.bitwise_and(flat, 0xFFFFFFFF)[:, :, None]
            low, high = tf.bitwise.bitwise_and(self.a, 0xFFFF), tf.bitwise.right_shift(self.a, 16)
            h = x * low + tf.bitwise.bitwise_and(x * high, 0xFFFF) * 65536 + self.b
            return tf.bitwise.right_shift(tf.bitwise.bitwise_and(h, 0xFFFFFFFF) * self.m, 32)
        return tf.math.floormod(
            tf.math.floormod(tf.math.floormod(flat, self.p)[:, :, None] * self.a + self.b, self.p), self.m)

    def codes(self, flat):
        # multiply_shift's code is scaled in float32 on every device (hashing.py), the universal's in float64
        wide = tf.float32 if self.family == "multiply_shift" else tf.float64
        buckets = tf.cast(self.buckets(flat), wide)
        if self.encoding == "uniform":
            return tf.cast(buckets * (2.0 / (self.m - 1)) - 1.0, tf.float32)
        u1 = tf.cast((buckets[..., 0::2] + 1.0) / self.m, tf.float32)
        u2 = tf.cast(buckets[..., 1::2] / self.m, tf.float32)
        radius = tf.sqrt(-2.0 * tf.math.log(u1))
        angle = (2.0 * math.pi) * u2
        pairs = tf.stack([radius * tf.cos(angle), radius * tf.sin(angle)], axis=-1)
        return tf.reshape(pairs, [tf.shape(pairs)[0], tf.shape(pairs)[1], -1])

    def __call__(self, ids):
        batch, tables, per_bag = tf.shape(ids)[0], tf.shape(ids)[1], tf.shape(ids)[2]
        x = self.codes(tf.reshape(tf.transpose(ids, [1, 0, 2]), [tables, -1]))
        x = tf.cast(x, self.layers[0][0].dtype)  # codes in the decoders' precision
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            x = tf.linalg.matmul(x, w) + b
            if i < last:
                if self.norms is not None:
                    mean, var, gamma, beta, eps = self.norms[i]
                    x = (x - mean) * tf.math.rsqrt(var + eps) * gamma + beta
                x = tf.nn.relu(x)
        if self.activation == "sigmoid":
            x = tf.sigmoid(x)
        elif self.activation == "mish":
            x = x * tf.tanh(tf.math.softplus(x))
        x = tf.reduce_sum(tf.reshape(x, [tables, batch, per_bag, self.dim]), axis=2)
        return tf.transpose(x, [1, 0, 2])


class Mixed:
    """Parts that each embed some features, outputs put back in feature order."""

    def __init__(self, module) -> None:
        self.parts = [(tf.constant(_np(module.part_features(i))), convert(part))
                      for i, part in enumerate(module.parts)]
        self.restore = tf.constant(_np(module.restore))

    def __call__(self, ids):
        # Parts may differ in dtype (fp32 tables beside bf16 decoders): joined in fp32, as torch promotes.
        outs = [tf.cast(part(tf.gather(ids, features, axis=1)), tf.float32) for features, part in self.parts]
        return tf.gather(tf.concat(outs, axis=1), self.restore, axis=1)


class Hybrid:
    def __init__(self, module) -> None:
        self.tables, self.dhe = convert(module.tables), convert(module.dhe)

    def __call__(self, ids):
        return tf.concat([tf.cast(self.tables(ids), tf.float32), tf.cast(self.dhe(ids), tf.float32)], axis=1)


_CONVERTERS = {"FusedTables": Tables.from_torch, "PerTableBags": Tables.from_torch, "TTTables": TensorTrain,
               "DeepHashEmbedding": DeepHash, "MixedEmbedding": Mixed, "HybridEmbedding": Hybrid}


def convert(module):
    """The TF twin of a torch representation module."""
    try:
        return _CONVERTERS[type(module).__name__](module)
    except KeyError:
        raise NotImplementedError(
            f"no TensorFlow implementation of {type(module).__name__}: add one to backends/tf/model.py"
        ) from None


class TfDLRM(tf.Module):
    """dense [B, 13] float32, ids [B, T, L] int64 -> logits [B], the torch DLRM's twin."""

    def __init__(self, bottom, sparse, pair_index, top, jit_compile: bool = False) -> None:
        super().__init__()
        self.bottom, self.sparse, self.pair_index, self.top = bottom, sparse, pair_index, top
        self.dtype = bottom[0][0].dtype  # the compute dtype: the MLPs' (fp32 unless the path is reduced)
        self.forward = tf.function(self._forward, jit_compile=jit_compile, reduce_retracing=True)

    @classmethod
    def from_torch(cls, model, jit_compile: bool = False) -> "TfDLRM":
        return cls(_linears(model.dense_arch.mlp), convert(model.sparse_arch),
                   tf.constant(_np(model.interaction.pair_index)), _linears(model.over_arch.mlp), jit_compile)

    def _forward(self, dense, ids):
        x = tf.cast(dense, self.dtype)
        for w, b in self.bottom:
            x = tf.nn.relu(tf.linalg.matmul(x, w) + b)
        vectors = tf.concat([x[:, None, :], tf.cast(self.sparse(ids), self.dtype)], axis=1)
        gram = tf.linalg.matmul(vectors, vectors, transpose_b=True)
        pairs = tf.gather(tf.reshape(gram, [tf.shape(gram)[0], -1]), self.pair_index, axis=1)
        z = tf.concat([x, pairs], axis=1)
        last = len(self.top) - 1
        for i, (w, b) in enumerate(self.top):
            z = tf.linalg.matmul(z, w) + b
            if i < last:
                z = tf.nn.relu(z)
        return tf.cast(tf.squeeze(z, -1), tf.float32)

    def __call__(self, dense, ids):
        return self.forward(tf.convert_to_tensor(dense), tf.convert_to_tensor(ids, dtype=tf.int64))
