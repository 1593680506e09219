"""The DLRM reference beside the model (benchmarks/dlrm_reference.py): found or said why not, fed the same
inputs, and computing the same function where it is installed ($MPREC_DLRM_REFERENCE: a checkout of
facebookresearch/dlrm; not on PyPI, so CI skips the comparison itself)."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from benchmarks import dlrm_reference
from harness.workload.dlrm import build_model
from tests.test_dlrm import tiny_spec


@pytest.fixture
def clean_import(monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delitem(sys.modules, "dlrm_s_pytorch", raising=False)
    yield
    sys.modules.pop("dlrm_s_pytorch", None)


def test_a_folder_without_the_reference_is_named_with_what_to_install(tmp_path, clean_import):
    module, why = dlrm_reference.load(str(tmp_path))
    assert module is None
    assert str(tmp_path) in why and "facebookresearch/dlrm" in why


def test_a_reference_whose_own_import_fails_names_the_missing_module(tmp_path, clean_import):
    (tmp_path / "dlrm_s_pytorch.py").write_text("import a_module_nobody_installed_xyz\n")
    module, why = dlrm_reference.load(str(tmp_path))
    assert module is None
    assert "a_module_nobody_installed_xyz" in why and "pip install scikit-learn tensorboard" in why


def test_the_reference_takes_offsets_and_one_index_tensor_per_table():
    ids = torch.tensor([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 10], [11, 12]]])  # [B=2, T=3, L=2]
    dense = torch.zeros(2, 13)
    same, offsets, indices = dlrm_reference.inputs(dense, ids)
    assert same is dense
    assert offsets.tolist() == [[0, 2]] * 3  # each table: bags of 2 ids
    assert [t.tolist() for t in indices] == [[1, 2, 7, 8], [3, 4, 9, 10], [5, 6, 11, 12]]


@pytest.mark.skipif(not os.environ.get(dlrm_reference.ENV),
                    reason=f"${dlrm_reference.ENV} names no facebookresearch/dlrm checkout (not on PyPI)")
def test_the_reference_on_the_models_weights_computes_the_same_function(clean_import):
    module, why = dlrm_reference.load()
    assert module is not None, why
    from harness.workload.device import DeviceCapabilities, configure_for

    model = build_model(tiny_spec(), seed=3).eval().requires_grad_(False)
    configure_for(model, DeviceCapabilities(onednn_linear=True, cpu_kernels=True))  # the fast paths too
    ref = dlrm_reference.build(module, model)
    gen = torch.Generator().manual_seed(0)
    for batch in (3, 1500):
        dense = torch.rand(batch, 13, generator=gen)
        ids = torch.stack([torch.randint(0, r, (batch, 1), generator=gen) for r in model.spec.table_rows], 1)
        assert dlrm_reference.agreement(ref, model, dense, ids) < 1e-5
    # and not by accident: a different bias in the model's top layer is seen
    model.over_arch.mlp[-1].bias.add_(1.0)
    assert dlrm_reference.agreement(ref, model, dense, ids) > 1e-3
