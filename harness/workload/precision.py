"""A built (and trained) fp32 DLRM put into its path's precision (harness/core/precision.py).

Training is always fp32; the path's precision is applied to the trained weights, in two steps:
1. **storage**: fused tables quantize or down-cast their rows (`FusedTables.store_as`);
2. **compute**: every floating parameter and buffer outside the tables (MLPs, DHE decoders and their
   batch norms, TT cores) is cast to the compute dtype, and the DLRM casts its inputs to it and its logits
   back to fp32, so a path's boundary is fp32 whatever runs inside.

fp32 with fp32 tables changes nothing at all: the model and its numbers are exactly the reference's.

>>> import torch
>>> from harness.core.spec import WorkloadSpec
>>> from harness.workload.dlrm import build_model
>>> from harness.workload.representations.table import Config
>>> spec = WorkloadSpec((50, 70), embedding_dim=4, bottom_mlp=(13, 4), top_mlp=(4, 1),
...                     representation=Config(layout="fused", storage="int8"), precision="bf16")
>>> model = build_model(spec, seed=0)
>>> apply_precision(model, spec.precision, spec.representation.storage)
>>> model.dense_arch.mlp[0].weight.dtype, model.sparse_arch.packed.dtype
(torch.bfloat16, torch.uint8)
>>> model(torch.rand(3, 13), torch.zeros(3, 2, 1, dtype=torch.int64)).dtype   # fp32 at the boundary
torch.float32
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# How far a path's logits may be from the fp32 path's on the same weights and batch, as
# max |logit - fp32 logit| / max |fp32 logit| (tests/test_precision.py, on CPU and on CUDA in the GPU check).
# A few roundings of the format's epsilon (bf16: 2^-8, fp16 and TF32: 2^-11) accumulate through the
# MLPs, the interaction and the decoders; measured worst cases on the test models: bf16 1.7e-2 (DHE with
# 2-id bags), fp16 1.5e-3.
PARITY_TOLERANCE = {"fp32": 0.0, "bf16": 2.0**-5, "fp16": 2.0**-8, "tf32": 2.0**-8}


def compute_dtype(precision: str) -> torch.dtype:
    return DTYPES[precision]


def apply_precision(model: nn.Module, precision: str, storage: str = "fp32") -> None:
    """Put `model` (a DLRM, in eval use) into `precision` with tables stored as `storage`, in place."""
    if storage != "fp32":
        for module in model.modules():
            store_as = getattr(module, "store_as", None)
            if callable(store_as):
                store_as(storage)
    dtype = DTYPES[precision]
    if dtype != torch.float32:
        cast_compute(model, dtype)
    if dtype != torch.float32 or storage != "fp32":
        cast(Any, model).compute_dtype = dtype  # the DLRM casts at its boundary from now on


def cast_compute(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast every floating tensor of `model` to `dtype`, except tables' (they keep their storage)."""
    for module in _outside_tables(model):
        for name, param in module._parameters.items():
            if param is not None and param.is_floating_point():
                module._parameters[name] = nn.Parameter(param.detach().to(dtype),
                                                        requires_grad=param.requires_grad)
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point():
                module._buffers[name] = buf.to(dtype)


def _outside_tables(root: nn.Module):
    """The modules of `root` not inside a table module (one that declares `keeps_storage_dtype`)."""
    stack = [root]
    while stack:
        module = stack.pop()
        if getattr(module, "keeps_storage_dtype", False):
            continue
        yield module
        stack.extend(module.children())
