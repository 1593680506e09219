"""The DLRM reference (facebookresearch/dlrm's `DLRM_Net`, fp32) on the harness model's own weights.

The reference is not on PyPI. To compare with it, put a checkout of github.com/facebookresearch/dlrm where
a benchmark finds it (`--dlrm-reference DIR`, or $MPREC_DLRM_REFERENCE, or `dlrm_s_pytorch` importable)
and install what its module imports (scikit-learn, tensorboard): `pip install scikit-learn tensorboard`.

`build` makes a `DLRM_Net` with the model's shape (its own MLPs, interaction and top sigmoid) and copies
the model's MLP weights into it; its tables are `nn.EmbeddingBag(rows, dim, mode="sum", sparse=True)` as
its `create_emb` makes them, holding views of the model's table weights (a second 2 GB copy of the Kaggle
tables, and numpy's draw of them, would only slow the benchmark). `agreement` checks that both compute
the same function before any figure is taken: the reference ends in a sigmoid, the model in the logit.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType

import numpy as np
import torch
from torch import nn

ENV = "MPREC_DLRM_REFERENCE"
INSTALL = ("a checkout of github.com/facebookresearch/dlrm named by --dlrm-reference DIR or "
           f"${ENV}, and its imports: pip install scikit-learn tensorboard")


def load(directory: str | None = None) -> tuple[ModuleType | None, str]:
    """The reference's module `dlrm_s_pytorch`, from `directory` (else $MPREC_DLRM_REFERENCE, else the
    import path), and why not where it cannot be imported."""
    directory = directory or os.environ.get(ENV)
    if directory:
        if not os.path.isfile(os.path.join(directory, "dlrm_s_pytorch.py")):
            return None, f"{directory} holds no dlrm_s_pytorch.py: it must be {INSTALL.split(' named')[0]}"
        if directory not in sys.path:
            # as installed: the checkout's own modules (optim, tricks, data_utils) import each other by name
            sys.path.insert(0, directory)
    try:
        module = importlib.import_module("dlrm_s_pytorch")
    except ModuleNotFoundError as exc:
        if exc.name == "dlrm_s_pytorch":
            return None, f"not installed: {INSTALL}"
        return None, f"dlrm_s_pytorch found, but its import of {exc.name} failed: {INSTALL}"
    except Exception as exc:  # a checkout this code does not fit: said, never a crash before the paths run
        return None, f"dlrm_s_pytorch could not be imported ({type(exc).__name__}: {exc})"
    if not hasattr(module, "DLRM_Net"):
        return None, f"{module.__file__} has no DLRM_Net: not facebookresearch/dlrm's dlrm_s_pytorch"
    return module, f"installed ({module.__file__})"


def _mlp_widths(mlp: nn.Sequential) -> list[int]:
    linears = [layer for layer in mlp if isinstance(layer, nn.Linear)]
    return [linears[0].in_features] + [layer.out_features for layer in linears]


def build(module: ModuleType, model) -> nn.Module:
    """A `DLRM_Net` of `model`'s shape, with `model`'s weights (tables shared, MLPs copied), in eval mode."""
    spec = model.spec
    bottom, top = _mlp_widths(model.dense_arch.mlp), _mlp_widths(model.over_arch.mlp)
    np.random.seed(0)  # its MLP initialisation draws from numpy's global generator; overwritten below
    ref = module.DLRM_Net(m_spa=spec.embedding_dim, ln_emb=np.ones(spec.num_tables, dtype=np.int64),
                          ln_bot=np.array(bottom), ln_top=np.array(top), arch_interaction_op="dot",
                          arch_interaction_itself=False, sigmoid_bot=-1, sigmoid_top=len(top) - 2)
    tables = model.sparse_arch
    dim = spec.embedding_dim
    ref.emb_l = nn.ModuleList(
        nn.EmbeddingBag(rows, dim, mode="sum", sparse=True, _weight=tables.table_weight(t).detach())
        for t, rows in enumerate(spec.table_rows))
    with torch.no_grad():
        for ours, theirs in ((model.dense_arch.mlp, ref.bot_l), (model.over_arch.mlp, ref.top_l)):
            for mine, other in zip((m for m in ours if isinstance(m, nn.Linear)),
                                   (m for m in theirs if isinstance(m, nn.Linear))):
                other.weight.copy_(mine.weight)
                other.bias.copy_(mine.bias)
    return ref.eval().requires_grad_(False)


def inputs(dense: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """The model's (dense [B, 13], ids [B, T, L]) as the reference takes them: dense, offsets [T, B] and one
    index tensor per table (bags of L ids each)."""
    batch, tables, per_bag = ids.shape
    offsets = (torch.arange(batch) * per_bag).expand(tables, batch).contiguous()
    indices = [ids[:, t, :].reshape(-1).contiguous() for t in range(tables)]
    return dense, offsets, indices


def agreement(ref: nn.Module, model, dense: torch.Tensor, ids: torch.Tensor) -> float:
    """The largest |sigmoid(model) - reference| over a batch: both must compute the same function."""
    with torch.no_grad():
        ours = torch.sigmoid(model(dense, ids).float())
        theirs = ref(*inputs(dense, ids)).reshape(-1)
    return float((ours - theirs).abs().max())
