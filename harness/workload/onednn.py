"""oneDNN's fused linear on host CPUs: GEMM, bias and an activation in one call, for inference.

The MLPs (dlrm.py) and DHE's first decoder layer (representations/dhe/module.py) take it where the device's
settings say `linear_kernel="onednn"` (harness/workload/device.py) and the call is large enough to gain;
this module holds the call, its threshold and the dtypes it runs natively, in one place.

>>> import torch
>>> x, weight, bias = torch.ones(2, 3), torch.ones(4, 3), torch.zeros(4)
>>> linear(x, weight, bias, "relu").tolist() if torch.backends.mkldnn.is_available() else [[3.0] * 4] * 2
[[3.0, 3.0, 3.0, 3.0], [3.0, 3.0, 3.0, 3.0]]
"""

from __future__ import annotations

import functools

import torch

# Below this many rows aten's call is the cheaper or no slower (fp32 at 1 row: 18 vs 27 us per Kaggle MLP
# layer; the whole Kaggle table path at 64 rows: 0.85 vs 0.75 ms; at 1024 oneDNN's 8.3 vs 9.3 ms).
MIN_ROWS = 256


# bf16 (where native) is another matter: oneDNN's bf16 call beats aten's at every size measured (the Kaggle
# top MLP's 367 x 512 layer at 16 rows: 53.7 vs 61.1 us), but below 16 rows, and for layers under 16 wide
# below 256 rows, both are slower than the layer in fp32 on fp32 copies of the bf16 weights (at 1 row:
# 21.8 against 39.5 us; 256 x 1 at 64 rows: 8.0 against 27.6): `bf16_in_fp32`.
BF16_MIN_ROWS = 16
NARROW_OUT, NARROW_MAX_ROWS = 16, 256


def bf16_in_fp32(rows: int, out_features: int, native: bool) -> bool:
    """Whether a bf16 linear of `rows` rows runs faster in fp32 on a CPU (on bf16 values: the same products,
    exact in fp32, summed in fp32 as a bf16 GEMM sums them); every size where bf16 is not native."""
    return (not native or rows < BF16_MIN_ROWS
            or (out_features < NARROW_OUT and rows < NARROW_MAX_ROWS))


@functools.cache
def native_dtypes() -> tuple[torch.dtype, ...]:
    """fp32, and bf16 only where oneDNN runs it natively (its AVX2 bf16 GEMMs ran at 1-3 GFLOP/s)."""
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return (torch.float32, torch.bfloat16)
    return (torch.float32,)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           activation: str = "none") -> torch.Tensor:
    """`activation(x @ weight.T + bias)` as one oneDNN call; `weight` in nn.Linear's [out, in] layout,
    `activation` "none" or "relu". No derivative: inference only."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")
