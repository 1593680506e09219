"""Numeric precision of a path: the compute dtype of its dense parts and the storage of its tables.

Torch-free, so planning (dry runs, the cost model, feasibility) knows a path's bytes without torch.

- **compute** (`precision=` group): the dtype of the dense MLPs, the interaction, DHE's decoders and TT's
  cores. `tf32` keeps fp32 numbers but lets matmuls use TF32 tensor cores (GPUs only). Inputs and logits
  stay fp32 at the path's boundary.
- **storage** (`representation.storage`): how embedding-table rows are stored. `int8` is row-wise
  quantization in FBGEMM's byte layout: D 8-bit values and an fp32 scale and bias per row (torch's
  `quantized::embedding_bag_byte_*` kernels), dequantized in the lookup. `int4` is FBGEMM's 4-bit
  row-wise layout: D/2 bytes of two 4-bit values each and an fp16 scale and bias per row (torch's
  `quantized::embedding_bag_4bit_*` kernels); D must be even.

>>> compute_bytes("bf16"), compute_bytes("tf32")
(2, 4)
>>> [row_bytes(s, 16) for s in STORAGES]      # bytes per table row at embedding dim 16
[64, 32, 24, 12]
>>> storage_label("fp32"), storage_label("int8")   # fp32 tables keep the label they always had
('', ':int8')
"""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16", "tf32")
STORAGES = ("fp32", "fp16", "int8", "int4")
DEFAULT = "fp32"

_COMPUTE_BYTES = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2}
INT8_ROW_EXTRA = 8  # the fp32 scale and fp32 bias FBGEMM's byte layout appends to each row
INT4_ROW_EXTRA = 4  # the fp16 scale and fp16 bias FBGEMM's 4-bit layout appends to each row
QUANTIZED = ("int8", "int4")  # storages whose rows are quantized (packed bytes, a scale and bias a row)


def compute_bytes(precision: str) -> int:
    """Bytes of one number in the compute precision (weights of the dense parts, activations)."""
    return _COMPUTE_BYTES[precision]


def row_bytes(storage: str, dim: int) -> int:
    """Bytes of one embedding-table row of `dim` values stored as `storage`."""
    if storage == "int8":
        return dim + INT8_ROW_EXTRA
    if storage == "int4":
        return (dim + 1) // 2 + INT4_ROW_EXTRA
    return dim * (2 if storage == "fp16" else 4)


def storage_label(storage: str) -> str:
    """What a representation's label carries for its table storage: nothing in fp32, `:int8` etc."""
    return "" if storage == DEFAULT else f":{storage}"


def gemm_peak_metric(precision: str) -> str:
    """The measured peak (harness/pipeline/peaks.py) a path computing in `precision` is judged against:
    `gemm_gflops` for fp32, `gemm_bf16_gflops` for bf16, and so on."""
    return "gemm_gflops" if precision == DEFAULT else f"gemm_{precision}_gflops"
