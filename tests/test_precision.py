"""Precision as a dimension of a path (issue 16): compute dtype, table storage, their cost, quality and
labels.

Parity: each representation in each precision the CPU adapter runs matches its fp32 output within the
tolerance written down in harness/workload/precision.py (PARITY_TOLERANCE); int8 and int4 tables
match their own dequantized fp32 reference exactly (one id per lookup) or to fp32 summation rounding
(bags). The same checks run on CUDA, TF32 included, in tests/test_backend_parity.py
(scripts/gpu_check.sh runs `-k cuda`).
"""

from __future__ import annotations

import copy
import importlib.util

import pandas as pd
import pytest
import torch

import backends
from backends.cpu import CpuBackend
from harness.analysis.runs import join_quality
from harness.core.conf import compose
from harness.core.errors import BackendUnavailable, ConfigError
from harness.core.keys import quality_key, run_key
from harness.core.spec import WorkloadSpec
from harness.pipeline.config import load_config
from harness.pipeline.plan import plan
from harness.serving.profiles import PathProfile, with_accuracy_of
from harness.workload.device import DeviceCapabilities, configure_for
from harness.workload.dlrm import build_model
from harness.workload.precision import PARITY_TOLERANCE, apply_precision
from harness.workload.representations import table

from .conftest import SMOKE
from .test_backend_parity import REPRESENTATIONS, case
from .test_end_to_end import _runs

REDUCED_ON_CPU = [p for p in CpuBackend.precisions if p != "fp32"]
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def relative_error(out: torch.Tensor, expected: torch.Tensor) -> float:
    """max |out - expected| / max |expected|: the measure PARITY_TOLERANCE bounds."""
    return float((out.float() - expected).abs().max() / expected.abs().max())


def run_in(precision: str, name: str, per_bag: int, device_backend: str = "cpu"):
    model, batch, expected = case(name, per_bag)
    apply_precision(model, precision)
    adapter = backends.adapter_class(device_backend)(
        load_config(compose([f"+backend={device_backend}"])).backend
    )
    from harness.pipeline.run import prepare_on

    prepare_on(adapter, model, batch, precision)
    return adapter.to_host(adapter.serve(batch)), expected


CASES = [(n, 1) for n in REPRESENTATIONS] + [("table", 3), ("tt", 2), ("dhe", 2), ("hybrid", 3)]


@pytest.mark.parametrize("precision", REDUCED_ON_CPU)
@pytest.mark.parametrize("name, per_bag", CASES)
def test_every_representation_in_every_cpu_precision_matches_fp32_within_its_tolerance(precision, name,
                                                                                       per_bag):
    out, expected = run_in(precision, name, per_bag)
    assert out.dtype == torch.float32  # the path's boundary stays fp32
    error = relative_error(out, expected)
    assert error <= PARITY_TOLERANCE[precision], f"{name} in {precision}: {error:.2e}"
    assert error > 0  # it really computed in the reduced precision


@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (pip install -e '.[tf]')")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("name, per_bag", [("table", 1), ("tt", 2), ("dhe", 1), ("hybrid", 1), ("select", 1)])
def test_tensorflow_in_each_precision_matches_fp32(precision, name, per_bag):
    out, expected = run_in(precision, name, per_bag, "tf")
    assert out.dtype == torch.float32 and 0 < relative_error(out, expected) <= PARITY_TOLERANCE[precision]


@pytest.mark.skipif(not HAS_TF, reason="tensorflow is not installed (pip install -e '.[tf]')")
@pytest.mark.parametrize("storage", ["fp16", "int8", "int4"])
def test_tensorflow_reads_fp16_int8_and_int4_tables_as_torch_does(storage):
    from backends.tf.model import TfDLRM

    model, out, _, _, _ = _int8_and_reference(3, "fbgemm", storage=storage)
    gen = torch.Generator().manual_seed(3)  # the batch _int8_and_reference drew
    spec = model.spec
    ids = torch.stack([torch.randint(0, r, (64, 3), generator=gen) for r in spec.table_rows], dim=1)
    dense = torch.rand(64, 13, generator=gen)
    tf_out = torch.from_numpy(TfDLRM.from_torch(model)(dense.numpy(), ids.numpy()).numpy())
    torch.testing.assert_close(tf_out, out, rtol=1e-5, atol=1e-5)


def _int8_and_reference(per_bag: int, lookup: str, storage: str = "int8"):
    spec = WorkloadSpec.from_shape(
        "kaggle", 0.0001, representation=table.Config(layout="fused", storage=storage), ids_per_lookup=per_bag
    )
    model = build_model(spec, seed=0).eval()
    reference = copy.deepcopy(model)
    apply_precision(model, "fp32", storage)
    # c_kernel: a CPU's settings, small int8 queries (64 x 26 ids here) in one C call (table/kernels.py)
    configure_for(model, DeviceCapabilities(quantized_bag=lookup != "gather",
                                            cpu_kernels=lookup == "c_kernel"))
    with torch.no_grad():  # the reference: fp32 tables holding exactly the rows the lookup sees
        reference.sparse_arch.weight.copy_(model.sparse_arch.dequantized())
    gen = torch.Generator().manual_seed(3)
    ids = torch.stack([torch.randint(0, r, (64, per_bag), generator=gen) for r in spec.table_rows], dim=1)
    dense = torch.rand(64, 13, generator=gen)
    with torch.no_grad():
        return (model, model(dense, ids), reference(dense, ids), reference.sparse_arch(ids),
                model.sparse_arch(ids))


@pytest.mark.parametrize("storage, row_bytes", [("int8", 16 + 8), ("int4", 8 + 4)])
@pytest.mark.parametrize("lookup", ["fbgemm", "gather", "c_kernel"])
def test_quantized_tables_equal_their_dequantized_fp32_reference_exactly(lookup, storage, row_bytes):
    model, out, expected, ref_rows, rows = _int8_and_reference(1, lookup, storage)
    assert model.sparse_arch.packed.dtype == torch.uint8 and model.sparse_arch.weight is None
    # FBGEMM's layouts: D bytes, an fp32 scale and bias (int8); D/2 bytes, an fp16 scale and bias (int4)
    assert model.sparse_arch.packed.shape[1] == row_bytes
    assert torch.equal(rows, ref_rows) and torch.equal(out, expected)


def test_int4_rows_are_read_as_torchs_own_unpack_reads_them():
    # The reference the tests above build on: torch's unpack of FBGEMM's 4-bit rows, not our own reading.
    weight = torch.randn(50, 16)
    packed = table.module.quantize_rows(weight, bits=4)
    unpacked = torch.ops.quantized.embedding_bag_4bit_unpack(packed)
    assert torch.equal(table.module.dequantize_4bit_rows(packed, 16), unpacked)


@pytest.mark.parametrize("storage", ["int8", "int4"])
@pytest.mark.parametrize("lookup", ["fbgemm", "gather", "c_kernel"])
def test_quantized_bags_equal_the_reference_to_fp32_summation_rounding(lookup, storage):
    _, out, expected, ref_rows, rows = _int8_and_reference(3, lookup, storage)
    torch.testing.assert_close(rows, ref_rows, rtol=0, atol=4e-6)  # 3 adds of values below ~1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage, levels, slack", [("int8", 255, 1.001), ("int4", 15, 1.002)])
def test_quantized_rows_keep_each_rows_range_within_half_a_step(storage, levels, slack):
    # slack: the scale is rounded to fp32 (int8) or fp16 (int4), a step off by at most its rounding
    weight = torch.randn(300, 16) * torch.logspace(-3, 1, 300).unsqueeze(1)  # rows of very different ranges
    tables = table.build(WorkloadSpec((300,), 16, (13, 16), (4, 1),
                                      representation=table.Config(layout="fused", storage="fp32")))
    with torch.no_grad():
        tables.weight.copy_(weight)
    tables.store_as(storage)
    step = (weight.max(1).values - weight.min(1).values) / levels
    error = (tables.dequantized() - weight).abs().max(1).values
    assert (error <= step / 2 * slack + 1e-7).all()
    assert (error > step / 4).any()  # it really quantized to `levels` steps


def test_fp16_tables_read_exactly_their_half_rows():
    model, out, expected, ref_rows, rows = _int8_and_reference(1, "fbgemm", storage="fp16")
    assert model.sparse_arch.weight.dtype == torch.float16
    assert rows.dtype == torch.float16 and torch.equal(rows.float(), ref_rows) and torch.equal(out, expected)


def test_fp32_changes_nothing_in_the_model():
    model, batch, expected = case("hybrid")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_precision(model, "fp32", "fp32")
    assert model.compute_dtype is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(*batch), expected)


# --- cost, feasibility and config --------------------------------------------------------------------


def _plan(*overrides: str):
    return plan(compose(["dry_run=true", *overrides]))


def test_the_cost_model_follows_the_storage_and_the_compute_precision():
    fp32 = _plan("dataset.scale=1.0", "+backend=cpu")
    int8 = _plan("dataset.scale=1.0", "+backend=cpu", "representation.storage=int8")
    int4 = _plan("dataset.scale=1.0", "+backend=cpu", "representation.storage=int4")
    fp16 = _plan("dataset.scale=1.0", "+backend=cpu", "representation.storage=fp16")
    bf16 = _plan("dataset.scale=1.0", "+backend=cpu", "precision=bf16")
    rows, dim = fp32.spec.total_rows, fp32.spec.embedding_dim
    assert int8.cost.embedding.param_bytes == rows * (dim + 8)  # D bytes, fp32 scale and bias a row
    assert fp16.cost.embedding.param_bytes == rows * dim * 2
    assert int8.cost.embedding.param_bytes / fp32.cost.embedding.param_bytes == pytest.approx(0.375)
    assert int4.cost.embedding.param_bytes == rows * (dim // 2 + 4)  # D/2 bytes, fp16 scale and bias
    assert int4.cost.embedding.param_bytes / fp32.cost.embedding.param_bytes <= 0.21  # 0.1875
    assert int4.cost.bytes_read_per_sample < int8.cost.bytes_read_per_sample
    assert int4.dry_run_report()["param_bytes"] < int8.dry_run_report()["param_bytes"]
    assert bf16.cost.mlp_param_bytes * 2 == fp32.cost.mlp_param_bytes  # the MLPs in bf16
    assert bf16.cost.embedding.param_bytes == fp32.cost.embedding.param_bytes  # tables keep their storage
    assert int8.cost.bytes_read_per_sample < fp32.cost.bytes_read_per_sample
    dhe = _plan("representation=dhe", "+backend=cpu")
    dhe16 = _plan("representation=dhe", "+backend=cpu", "precision=bf16")
    assert dhe16.cost.embedding.param_bytes * 2 == dhe.cost.embedding.param_bytes  # decoders in bf16


def test_the_kaggle_int8_table_model_fits_a_900_mb_ipu_where_fp32_does_not():
    # 811 MB of int8 rows with their fp32 scales and biases, 29 MB of activations at 4096: inside 900 MB,
    # though not inside the default 10 % headroom (810 MB), which the dry run says just as plainly.
    args = (
        "+backend=ipu",
        "dataset.scale=1.0",
        "workload.query_sizes=[1,4096]",
        "workload.memory_headroom=0.05",
    )
    fp32 = _plan(*args).dry_run_report()
    int8 = _plan(*args, "representation.storage=int8", "precision=fp16").dry_run_report()
    assert fp32["device_capacity_bytes"] == int8["device_capacity_bytes"] == 900_000_000
    assert fp32["fits_device"] is False and fp32["param_bytes"] > 2e9
    assert int8["fits_device"] is True and int8["param_bytes"] == 811_253_818
    assert int8["path"] == "table:int8@ipu/fp16" and int8["precision"] == "fp16"
    default = _plan(*args[:-1], "representation.storage=int8", "precision=fp16").dry_run_report()
    assert default["fits_device"] is False and default["memory_headroom"] == 0.1


def test_labels_tags_and_keys_carry_the_precision():
    base = _plan("+backend=cpu")
    reduced = _plan("+backend=cpu", "precision=bf16", "representation.storage=int8")
    assert base.path == "table@cpu" and reduced.path == "table:int8@cpu/bf16"
    assert reduced.run_name.startswith("table:int8@cpu/bf16 ")
    tags = reduced.run_tags()
    assert (
        tags["precision"] == "bf16"
        and tags["table_storage"] == "int8"
        and base.run_tags()["precision"] == "fp32"
    )
    assert "table_storage" not in base.run_tags()
    # Another measurement, the same trained weights: training is fp32 whatever the path's precision.
    assert reduced.run_key() != base.run_key()
    assert quality_key(reduced.run.as_dict()) == quality_key(base.run.as_dict())
    # An fp32 path's key is the one it had before precision was a choice (its runs still resume).
    legacy = base.run.as_dict()
    del legacy["precision"]
    del legacy["representation"]["storage"]
    assert run_key(legacy) == base.run_key()


@pytest.mark.parametrize("override, key", [("precision.name=bf17", "precision.name"),
                                           ("representation.storage=int3", "representation.storage"),
                                           ("representation=hybrid representation.storage=int3",
                                            "representation.storage")])
def test_bad_precision_values_name_their_key(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(compose(override.split()))
    assert info.value.key == key


@pytest.mark.parametrize("storage", ["int8", "int4"])
def test_quantized_rows_need_the_fused_layout(storage):
    with pytest.raises(ConfigError, match="layout=fused"):
        load_config(compose(["representation.layout=per_table", f"representation.storage={storage}"]))


@pytest.mark.parametrize("representation", ["table", "hybrid", "select"])
def test_int4_rows_need_an_even_embedding_dim_and_say_so_before_any_work(representation):
    overrides = [f"representation={representation}", "representation.storage=int4", "+backend=cpu"]
    with pytest.raises(ConfigError, match="even") as info:
        _plan(*overrides, "model.embedding_dim=15")
    assert info.value.key == "representation.storage"
    assert _plan(*overrides).path == f"{representation}:int4@cpu"


def test_each_backend_declares_its_precisions_and_refuses_the_others_in_one_line():
    declared = {name: backends.adapter_class(name).precisions for name in ("cpu", "cuda", "tpu", "ipu", "tf")}
    assert declared["cuda"] == ("fp32", "bf16", "fp16", "tf32")
    assert ("tf32" not in declared["cpu"] and declared["tpu"] == ("fp32",
                                                                  "bf16") and declared["ipu"] == ("fp32",
                                                                                                  "fp16"))
    adapter = _plan("+backend=cpu", "precision=tf32").adapter
    with pytest.raises(BackendUnavailable) as info:
        adapter.check_precision("tf32")
    assert str(info.value) == "backend 'cpu' does not run precision=tf32: it runs fp32, bf16, fp16"


def test_the_cpu_says_whether_it_has_native_bf16():
    details = _plan("+backend=cpu").adapter.device_info().details
    flags = open("/proc/cpuinfo").read()
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    assert details["bf16"].startswith("native") == native and details["bf16"] in (
        "emulated", "native (avx512_bf16)", "native (amx_bf16)")


# --- quality in each precision, the studies score it with its own ------------------------------------


TRAIN = ["dataset.scale=0.001", "train.steps=40", "train.eval_every=40", "train.log_every=10",
         "train.eval_samples=2048"]


def test_a_reduced_precision_path_records_its_own_quality_and_the_delta_to_fp32(run_harness, store):
    run_harness(*SMOKE, *TRAIN, "precision=bf16", "representation.storage=int8", store_uri=store)
    run_harness(*SMOKE, *TRAIN, store_uri=store)  # fp32, reusing the weights trained (in fp32) above
    reduced, fp32 = sorted(_runs(store), key=lambda r: r.info.start_time)
    m = reduced.data.metrics
    assert reduced.data.tags["path"] == "table:int8@cpu/bf16"
    assert reduced.data.tags["train_precision"] == "fp32" and reduced.data.tags["quality_precision"] == "bf16"
    for key in ("accuracy", "auc", "log_loss"):
        assert m[f"{key}_delta"] == pytest.approx(m[key] - m[f"{key}_fp32"])
        assert fp32.data.metrics[key] == m[f"{key}_fp32"]  # the fp32 path has the fp32 figures
    assert m["log_loss"] != m["log_loss_fp32"]  # evaluated again, in bf16 with int8 rows
    assert fp32.data.tags["quality_source_run"] == reduced.info.run_id


def test_the_analysis_never_gives_a_reduced_precision_path_the_fp32_accuracy():
    rows = pd.DataFrame([{"path": "dhe@cpu", "representation": "dhe", "workload": "w", "numerics": "fp32",
                          "quality_key": "q", "accuracy": 0.78, "status": "FINISHED", "start_time": 1},
                         {"path": "dhe@cpu/bf16", "representation": "dhe", "workload": "w",
                          "numerics": "bf16", "quality_key": "q", "accuracy": float("nan"),
                          "status": "FINISHED", "start_time": 2},
                         {"path": "dhe@tf/bf16", "representation": "dhe", "workload": "w", "numerics": "bf16",
                          "quality_key": "q", "accuracy": 0.77, "status": "FINISHED", "start_time": 3},
                         {"path": "dhe@tpu/bf16", "representation": "dhe", "workload": "w",
                          "numerics": "bf16", "quality_key": "q", "accuracy": float("nan"),
                          "status": "FINISHED", "start_time": 4}])
    joined = join_quality(rows).set_index("path")["accuracy"]
    assert joined["dhe@cpu/bf16"] == 0.77 and joined["dhe@tpu/bf16"] == 0.77 and joined["dhe@cpu"] == 0.78
    only_fp32 = join_quality(rows.iloc[:2]).set_index("path")["accuracy"]
    assert pd.isna(only_fp32["dhe@cpu/bf16"])  # no accuracy in bf16 measured: none given


def test_serving_profiles_take_accuracy_only_from_the_same_precision():
    measured = [PathProfile("dhe@cpu", "cpu", 0.78, (1,), (1.0,)), PathProfile("dhe@cpu/bf16", "cpu", 0.77,
                                                                               (1,), (1.0,))]
    gpu = [PathProfile("dhe@h200/bf16", "h200", None, (1,), (0.5,)), PathProfile("dhe@h200/fp16", "h200",
                                                                                 None, (1,), (0.5,))]
    bf16, fp16 = with_accuracy_of(measured, gpu)
    assert bf16.accuracy == 0.77 and fp16.accuracy is None
    assert measured[1].scaled("gpu", 2.0, 0.1, "x").path == "dhe@gpu/bf16"


@pytest.mark.parametrize("use_kernel", [True, False])
def test_dhe_codes_written_in_bf16_equal_the_fp32_codes_rounded(use_kernel):
    from harness.workload.representations.dhe import hashing

    p, m = 1_000_003, 1_000_000
    gen = torch.Generator().manual_seed(5)
    flat = torch.cat([torch.tensor([[0, 1, p - 1, p, 2**40 + 3]] * 3), torch.randint(0, 2**40, (3, 300),
                                                                                     generator=gen)], 1)
    a = torch.randint(1, p, (3, 1, 64), generator=gen)
    b = torch.randint(0, p, (3, 1, 64), generator=gen)
    fp32 = hashing.codes_float64(flat, a, b, p, m, "uniform", use_kernel=use_kernel)
    bf16 = hashing.codes_float64(flat, a, b, p, m, "uniform", use_kernel=use_kernel, dtype=torch.bfloat16)
    assert bf16.dtype == torch.bfloat16 and torch.equal(bf16, fp32.to(torch.bfloat16))


def test_a_tf32_paths_quality_is_the_fp32_evaluation_and_says_so():
    # TF32 is a GPU matmul mode; quality is evaluated on the host, where tf32 computes fp32 exactly.
    from harness.pipeline.quality import is_reduced

    assert not is_reduced(load_config(compose(["+backend=cuda", "precision=tf32"])))
    assert is_reduced(load_config(compose(["+backend=cuda", "precision=bf16"])))
    assert is_reduced(load_config(compose(["representation.storage=int8"])))
