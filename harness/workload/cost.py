"""Analytic cost of a whole DLRM path: parameter bytes, FLOPs and bytes moved, without building it.

Counting rules (the same for every representation, so paths compare on one roofline):
- a Linear layer in -> out costs 2 x in x out FLOPs per sample (biases and activations are ignored);
- the dot interaction costs the full Gram matrix, 2 x F x F x D per sample, as the batched GEMM computes it;
- bytes read per sample = what the embedding reads per sample (rows and ids) + the dense input; the MLP
  weights (and DHE decoders) are read once per *query*, reported as `bytes_read_per_query_fixed` and
  added by `bytes_read(query_size)`;
- activation bytes per sample sum every intermediate (an upper bound on the peak in inference), so the
  dry run can tell whether the largest query of the ladder fits beside the parameters;
- MLP weights and activations take the compute precision's bytes (`precision=bf16`: 2), table rows their
  storage's (harness/core/precision.py); the dense input stays fp32.

>>> from harness.core.spec import WorkloadSpec
>>> from harness.workload.representations.table import Config
>>> config = Config(layout="fused", storage="fp32")
>>> cost = path_cost(WorkloadSpec.from_shape("kaggle", 1.0, representation=config))
>>> cost.embedding.param_bytes, cost.top_input_width
(2160804928, 367)
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.fit import fits
from harness.core.precision import compute_bytes
from harness.core.spec import WorkloadSpec, interaction_width
from harness.workload import representations
from harness.workload.representations import EmbeddingCost

FP32 = 4


def mlp_params(widths: tuple[int, ...]) -> int:
    return sum(i * o + o for i, o in zip(widths[:-1], widths[1:]))


def mlp_flops(widths: tuple[int, ...]) -> int:
    return sum(2 * i * o for i, o in zip(widths[:-1], widths[1:]))


@dataclass(frozen=True)
class PathCost:
    embedding: EmbeddingCost
    mlp_param_bytes: int
    dense_flops_per_sample: int  # bottom MLP + interaction + top MLP
    activation_bytes_per_sample: int
    num_vectors: int
    top_input_width: int

    @property
    def param_bytes(self) -> int:
        return self.embedding.param_bytes + self.mlp_param_bytes

    @property
    def flops_per_sample(self) -> int:
        return self.embedding.flops_per_sample + self.dense_flops_per_sample

    @property
    def bytes_read_per_sample(self) -> int:
        return self.embedding.bytes_read_per_sample + 13 * FP32

    def bytes_read(self, query_size: int) -> int:
        return (
            query_size * self.bytes_read_per_sample
            + self.mlp_param_bytes
            + self.embedding.bytes_read_per_query
        )

    def flops(self, query_size: int) -> int:
        return query_size * self.flops_per_sample

    def memory_needed(self, query_size: int) -> int:
        return self.param_bytes + query_size * self.activation_bytes_per_sample

    def fits(self, capacity_bytes: int, query_size: int, headroom: float) -> bool | None:
        """harness/core/fit.py's rule for this path at `query_size` (None: capacity unknown)."""
        return fits(self.memory_needed(query_size), capacity_bytes, headroom)

    def summary(self) -> dict:
        """Flat dict of the figures a dry run prints and a run logs as metrics."""
        return {
            "param_bytes": self.param_bytes,
            "embedding_param_bytes": self.embedding.param_bytes,
            "mlp_param_bytes": self.mlp_param_bytes,
            "flops_per_sample": self.flops_per_sample,
            "embedding_flops_per_sample": self.embedding.flops_per_sample,
            "dense_flops_per_sample": self.dense_flops_per_sample,
            "bytes_read_per_sample": self.bytes_read_per_sample,
            "bytes_read_per_query_fixed": self.mlp_param_bytes + self.embedding.bytes_read_per_query,
            "activation_bytes_per_sample": self.activation_bytes_per_sample,
            "top_input_width": self.top_input_width,
        }


def path_cost(spec: WorkloadSpec) -> PathCost:
    rep = representations.get(spec.representation.name)
    embedding = rep.cost(spec)
    vectors = rep.feature_vectors(spec) + 1
    top_in = interaction_width(vectors, spec.embedding_dim)
    top_widths = (top_in, *spec.top_mlp)
    dense_flops = (
        mlp_flops(spec.bottom_mlp) + 2 * vectors * vectors * spec.embedding_dim + mlp_flops(top_widths)
    )
    activations = (
        sum(spec.bottom_mlp)
        + vectors * spec.embedding_dim  # the stacked feature vectors
        + vectors * vectors  # the Gram matrix
        + sum(top_widths)
        + embedding.activation_floats_per_sample
    )
    number = compute_bytes(spec.precision)
    return PathCost(
        embedding=embedding,
        mlp_param_bytes=(mlp_params(spec.bottom_mlp) + mlp_params(top_widths)) * number,
        dense_flops_per_sample=dense_flops,
        activation_bytes_per_sample=activations * number,
        num_vectors=vectors,
        top_input_width=top_in,
    )
