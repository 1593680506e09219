"""The DLRM model in torch, split into small modules (dense, sparse, interaction, over).

The sparse part is whichever embedding representation the spec names; nothing here knows which one,
nor which backend will run it.

>>> import torch
>>> from harness.core.spec import WorkloadSpec
>>> from harness.workload.representations.table import Config
>>> spec = WorkloadSpec((5, 7, 3), embedding_dim=4, bottom_mlp=(13, 8, 4), top_mlp=(6, 1),
...                     representation=Config(layout="fused", storage="fp32"))
>>> model = build_model(spec)
>>> dense, ids = torch.rand(2, 13), torch.zeros(2, 3, 1, dtype=torch.int64)
>>> model(dense, ids).shape   # one logit per sample
torch.Size([2])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.core.spec import WorkloadSpec, interaction_width
from harness.workload import interaction, onednn, representations
from harness.workload.derived import Derived


class MLP(nn.Sequential):
    """Linear layers, each but the last (or every one: `relu_last`) followed by a ReLU.

    nn.Sequential's keys (`0.weight`, `2.weight`, ...), so weights exchange with the DLRM reference's. In
    inference on a device whose settings say `linear_kernel="onednn"` (host CPUs), each linear and its
    ReLU run as one oneDNN call (harness/workload/onednn.py, from 256 rows): on 2 EPYC cores 1.45x faster
    than aten's fp32 addmm at the Kaggle top MLP's shapes (5.7 vs 8.8 ms for 4096 x 512 x 256), and the
    ReLU's pass over memory gone. Its fp32 sums differ from aten's in rounding only (oneDNN's own
    kernels): ~1e-7 relative. bf16 there: oneDNN's bf16 call from 16 rows, and the layer in fp32 on fp32
    copies of the bf16 weights where that is faster (small queries, narrow layers, CPUs without native
    bf16: onednn.py `bf16_in_fp32`), its output rounded to bf16: each layer the function a bf16 GEMM with
    fp32 sums computes, to the sums' order. The whole bf16 Kaggle model at one sample: 0.26 ms -> 0.17 ms
    (fp32: 0.15 ms) on 2 EPYC cores.
    """

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__(*layers)
        self.fused: list[tuple[nn.Linear, str]] = []  # (linear, its activation), set by `configure`
        self.fused_dtypes: tuple[torch.dtype, ...] = ()
        self._fp32_copies: dict[int, Derived] = {}  # layer index -> its weight and bias as fp32, on first use

    def configure(self, settings) -> None:
        """Take the device's settings (harness/workload/device.py): which kernel runs the linears."""
        self.fused = []
        if settings.linear_kernel != "onednn":
            return
        self.fused_dtypes = onednn.native_dtypes()
        modules = list(self)
        for i, layer in enumerate(modules):
            if isinstance(layer, nn.Linear):
                relu = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
                self.fused.append((layer, "relu" if relu else "none"))

    def _needs_grad(self, x: torch.Tensor) -> bool:
        layers = (linear for linear, _ in self.fused)
        return x.requires_grad or any(p.requires_grad for linear in layers for p in linear.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Inference only (autograd has no derivative for the oneDNN op; a run's model has no parameter
        # that needs one), in the dtypes oneDNN runs natively; `fused` is set for host CPUs only.
        if not self.fused or torch.is_grad_enabled() and self._needs_grad(x):
            return super().forward(x)
        if x.dtype == torch.bfloat16:
            return self._forward_bf16(x)
        if x.shape[0] < onednn.MIN_ROWS or x.dtype not in self.fused_dtypes:
            return super().forward(x)
        for linear, activation in self.fused:
            x = onednn.linear(x, linear.weight, linear.bias, activation)
        return x

    def _forward_bf16(self, x: torch.Tensor) -> torch.Tensor:
        native = torch.bfloat16 in self.fused_dtypes
        for i, (linear, activation) in enumerate(self.fused):
            if not onednn.bf16_in_fp32(x.shape[0], linear.out_features, native):
                x = onednn.linear(x, linear.weight, linear.bias, activation)
                continue
            copy = self._fp32_copies.setdefault(i, Derived(_as_fp32))
            weight, bias = copy.get(linear.weight, linear.bias)  # exactly their bf16 values
            y = F.linear(x.float(), weight, bias)
            x = (y.relu_() if activation == "relu" else y).to(torch.bfloat16)
        return x



def _as_fp32(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    return weight.float(), None if bias is None else bias.float()


def _mlp(widths: tuple[int, ...], relu_last: bool) -> MLP:
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(fan_in, fan_out)
        # The DLRM reference's initialisation, so quality numbers are comparable with its runs.
        with torch.no_grad():
            linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
            linear.bias.normal_(0.0, math.sqrt(1.0 / fan_out))
        layers.append(linear)
        if i < len(widths) - 2 or relu_last:
            # In place: the linear's output is not needed by its backward, and a second activation
            # tensor per layer is an allocation and a pass over memory.
            layers.append(nn.ReLU(inplace=True))
    return MLP(layers)


class DenseArch(nn.Module):
    """Bottom MLP: dense features [B, 13] -> one vector [B, D] (ReLU after every layer, as DLRM)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.mlp = _mlp(widths, relu_last=True)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(dense)


class DotInteraction(nn.Module):
    """Pairwise dot products of all feature vectors, without self-pairs, after the dense vector.

    [B, D] dense and [B, V, D] sparse -> [B, D + F(F-1)/2] with F = V + 1; pairs (i, j), j < i, in row
    order, the same order as the DLRM reference so weights can be exchanged with it. The sparse vectors
    are cast to the dense one's dtype (a reduced-precision path's tables return fp32).

    >>> import torch
    >>> inter = DotInteraction(num_vectors=3)
    >>> dense = torch.tensor([[1., 2.]]); sparse = torch.tensor([[[3., 4.], [5., 6.]]])
    >>> inter(dense, sparse)   # [dense, <s0,d>, <s1,d>, <s1,s0>] = [1, 2, 11, 17, 39]
    tensor([[ 1.,  2., 11., 17., 39.]])
    """

    pair_index: torch.Tensor  # a buffer, declared for the type checker
    # Selecting the pairs is a copy, so it may move a 16-bit dtype's bits as int16 (the device setting
    # pair_select="int16_gather", host CPUs): torch's CPU index_select along dim 1 is vectorized for fp32
    # only (bf16: 3.6 ms at q = 4096), its gather on int16 takes 0.43 ms (on bf16 0.61). fp32 keeps
    # index_select, and so do small queries (the gather's extra ops cost ~9 us at one sample) and autograd,
    # which cannot follow a reinterpreting view.
    GATHER_MIN_ROWS = 64

    def __init__(self, num_vectors: int) -> None:
        super().__init__()
        rows, cols = torch.tril_indices(num_vectors, num_vectors, offset=-1)
        self.num_vectors = num_vectors
        self.register_buffer("pair_index", rows * num_vectors + cols, persistent=False)
        self.pair_select = "index_select"  # device settings, given by `configure`
        self.kernel = "torch"

    def configure(self, settings) -> None:
        """Take the device's settings (harness/workload/device.py): how the pairs are selected, and whether a
        bf16 interaction runs as one C pass (harness/workload/interaction.py)."""
        self.pair_select = settings.pair_select
        self.kernel = settings.interaction_kernel

    def kernel_choices(self) -> dict[str, str]:
        """What computes a bf16 interaction here (recorded with the run: harness/workload/device.py)."""
        if self.kernel != "c_kernel":
            return {}
        ok, why = interaction.available()
        return {"bf16_interaction": "C kernel" if ok else f"torch ({why})"}

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        sixteen_bit = dense.element_size() == 2 and dense.is_floating_point()
        if self.kernel == "c_kernel" and dense.dtype == torch.bfloat16:
            out = interaction.dot_interaction(dense, sparse)  # None where it does not fit: torch below
            if out is not None:
                return out
        if (self.pair_select == "int16_gather" and sixteen_bit and dense.shape[0] >= self.GATHER_MIN_ROWS
                and not (dense.requires_grad or sparse.requires_grad)):
            return self._forward_16bit(dense, sparse)
        vectors = torch.cat([dense.unsqueeze(1), sparse.to(dense.dtype)], dim=1)
        gram = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)
        return torch.cat([dense, gram.index_select(1, self.pair_index)], dim=1)

    def _forward_16bit(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        """The same, for bf16/fp16 on CPUs without autograd: the vectors and the output filled in place
        (the tables' fp32 vectors cast as they are copied in, no torch.cat: bf16 at q = 4096 2.2 against
        2.9 ms), the pairs gathered as int16 straight into the output."""
        batch, width = dense.shape
        vectors = torch.empty(batch, self.num_vectors, width, dtype=dense.dtype, device=dense.device)
        vectors[:, 0] = dense
        vectors[:, 1:] = sparse
        gram = torch.bmm(vectors, vectors.transpose(1, 2)).flatten(1)
        out = torch.empty(batch, width + self.pair_index.numel(), dtype=dense.dtype, device=dense.device)
        out[:, :width] = dense
        index = self.pair_index.expand(batch, -1)
        torch.gather(gram.view(torch.int16), 1, index, out=out[:, width:].view(torch.int16))
        return out


class OverArch(nn.Module):
    """Top MLP: interaction output -> one logit per sample (ReLU on hidden layers only)."""

    def __init__(self, in_width: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.mlp = _mlp((in_width, *widths), relu_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


class DLRM(nn.Module):
    """dense [B, 13] float32, ids [B, T, L] int64 -> logits [B] float32.

    In a reduced precision (harness/workload/precision.py sets `compute_dtype`) the dense input and the
    embeddings are cast to it on the way in and the logits back to fp32 on the way out.
    """

    def __init__(self, spec: WorkloadSpec) -> None:
        super().__init__()
        rep = representations.get(spec.representation.name)
        num_vectors = rep.feature_vectors(spec) + 1
        self.spec = spec
        self.dense_arch = DenseArch(spec.bottom_mlp)
        self.sparse_arch = rep.build(spec)
        self.interaction = DotInteraction(num_vectors)
        self.over_arch = OverArch(interaction_width(num_vectors, spec.embedding_dim), spec.top_mlp)
        self.compute_dtype: torch.dtype | None = None  # None: fp32 throughout, no cast at all

    def forward(self, dense: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        dtype = self.compute_dtype
        if dtype is None:
            return self.over_arch(self.interaction(self.dense_arch(dense), self.sparse_arch(ids)))
        x = self.dense_arch(dense.to(dtype))
        return self.over_arch(self.interaction(x, self.sparse_arch(ids))).float()  # the interaction casts


def build_model(spec: WorkloadSpec, seed: int | None = None) -> DLRM:
    """Build the torch DLRM for `spec`; `seed` makes the initial weights reproducible."""
    if seed is not None:
        torch.manual_seed(seed)
    return DLRM(spec)
