"""TT-Rec, DHE, hybrid and select: correctness against plain computations, exact costs, bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.core.errors import ConfigError
from harness.core.spec import WorkloadSpec
from harness.pipeline.config import workload_spec
from harness.workload.cost import path_cost
from harness.workload.device import DeviceCapabilities, configure_for
from harness.workload.dlrm import build_model
from harness.workload.representations import dhe, hybrid, select, tt
from harness.workload.representations.dhe import hashing
from harness.workload.representations.dhe.module import DeepHashEmbedding
from harness.workload.representations.tt.module import TTTables

# The universal hash here (its definition's tests below); multiply_shift's have their own
DHE = dict(k=1024, decoder=[1024, 128], m=1_000_000, hash="universal", encoding="uniform", activation="none",
           batch_norm=False, seed=0)


def small_dhe(**overrides) -> dhe.Config:
    return dhe.Config(**{**DHE, "k": 8, "decoder": [8, 6], "m": 1000, **overrides})


# ---------------------------------------------------------------- TT-Rec


@pytest.mark.parametrize("rows, dim, cores", [(10_131_227, 16, 3), (1460, 16, 3), (9_980_333, 64, 3),
                                              (5000, 12, 2), (7, 16, 4)])
def test_tt_factorisation_covers_rows_and_splits_dim_exactly(rows, dim, cores):
    f = tt.TTFactorization.of(rows, dim, cores, rank=16)
    assert math.prod(f.p) >= rows and math.prod(f.q) == dim
    assert max(f.p) - min(f.p) <= 1  # balanced
    assert math.prod(f.p[:-1]) * (f.p[-1] - 1) < rows or min(f.p) == 1  # no smaller last factor would do
    assert f.ranks[0] == f.ranks[-1] == 1 and len(f.ranks) == cores + 1


@pytest.mark.parametrize("per_bag", [1, 3])
def test_tt_lookup_equals_gather_from_the_rebuilt_table(per_bag):
    torch.manual_seed(0)
    facts = [tt.TTFactorization.of(rows, 8, cores=3, rank=4) for rows in (1000, 77, 4096)]
    module = TTTables(facts)
    ids = torch.stack([torch.randint(0, f.rows, (5, per_bag)) for f in facts], dim=1)
    out = module(ids)
    for t, f in enumerate(facts):
        full = module.full_table(t)
        assert full.shape == (f.rows, 8)
        torch.testing.assert_close(out[:, t], full[ids[:, t]].sum(1), rtol=1e-5, atol=1e-6)


def test_tt_init_gives_the_full_table_dlrm_like_spread():
    torch.manual_seed(0)
    module = TTTables([tt.TTFactorization.of(100_000, 16, cores=3, rank=16)])
    std = module.full_table(0).std().item()
    assert 0.5 < std * math.sqrt(3 * 100_000) < 2.0


def tt_spec(scale=0.01, **kw) -> WorkloadSpec:
    cfg = tt.Config(rank=kw.pop("rank", 8), cores=3, min_rows=kw.pop("min_rows", 10_000), layout="fused")
    return WorkloadSpec.from_shape("kaggle", scale, representation=cfg, **kw)


def test_tt_small_tables_stay_plain_and_features_keep_their_order():
    spec = tt_spec()
    big, plain = tt.split_tables(spec)
    assert big == [t for t, r in enumerate(spec.table_rows) if r >= 10_000] and plain
    torch.manual_seed(0)
    module = build_model(spec).sparse_arch
    ids = torch.stack([torch.randint(0, r, (3, 1)) for r in spec.table_rows], dim=1)
    out = module(ids)
    tt_part, table_part = module.parts
    for i, t in enumerate(big):
        torch.testing.assert_close(out[:, t], tt_part.full_table(i)[ids[:, t, 0]], rtol=1e-5, atol=1e-6)
    for i, t in enumerate(plain):
        torch.testing.assert_close(out[:, t], table_part.table_weight(i)[ids[:, t, 0]])


def test_tt_cost_follows_the_factorisation():
    spec = tt_spec(scale=1.0, rank=16, min_rows=100_000)
    facts = tt.factorizations(spec)
    assert len(facts) == 7  # the seven Kaggle tables above 100k rows
    cost = tt.cost(spec)
    plain_rows = sum(r for r in spec.table_rows if r < 100_000)
    assert cost.param_bytes == (sum(f.params for f in facts) + plain_rows * 16) * 4
    assert cost.flops_per_sample == sum(f.flops_per_lookup for f in facts) == 7 * 2560
    assert "C3" in cost.details["tt_factorization"]


# ---------------------------------------------------------------- DHE


def test_dhe_cost_matches_the_issue_numbers_for_kaggle():
    spec = WorkloadSpec.from_shape("kaggle", 1.0, representation=dhe.Config(**DHE))
    cost = dhe.cost(spec)
    assert cost.details["dhe_decoder_params_per_table"] == 133_264
    assert cost.param_bytes == 13_859_456
    assert cost.details["dhe_flops_per_lookup"] == 266_240
    assert cost.flops_per_sample == 6_922_240
    assert cost.details["dhe_p"] == 1_000_003


def test_dhe_codes_follow_the_64_bit_hash_definition():
    module = DeepHashEmbedding(range(3), small_dhe(k=16, decoder=[16, 6], m=1_000_000), dim=4)
    ids = torch.tensor([[[0], [9_999_999], [4_294_967_295]], [[123_456], [7], [2**40]]])  # up to 2^40
    flat = ids.permute(1, 0, 2).reshape(3, -1)
    expected = (flat.unsqueeze(-1) * module.hash_a + module.hash_b) % module.p % module.m
    codes = module.encode(ids)
    torch.testing.assert_close(codes, (expected.double() * (2 / (module.m - 1)) - 1).float())
    assert codes.min() >= -1 and codes.max() <= 1


@pytest.mark.parametrize("m", [2, 7, 1_000_000, 1 << 26])
@pytest.mark.parametrize("encoding", ["uniform", "gaussian"])
def test_dhe_fast_encoding_is_bit_identical_to_the_definition(m, encoding):
    module = DeepHashEmbedding(range(2), small_dhe(k=32, decoder=[32, 6], m=m, encoding=encoding), dim=4)
    ids = torch.randint(0, 2**62, (4000, 2, 1), generator=torch.Generator().manual_seed(m))
    # Ids whose first hash lands exactly on 0, 1, p-1 and m (mod p): the reductions' edge cases.
    a, b, p = int(module.hash_a[0, 0, 0]), int(module.hash_b[0, 0, 0]), module.p
    edges = [((target - b) * pow(a, -1, p)) % p + j * p for target in (0, 1, p - 1, m % p) for j in (0, 3,
                                                                                                     10**9)]
    ids[: len(edges), 0, 0] = torch.tensor(edges)
    flat = ids.permute(1, 0, 2).reshape(2, -1)
    definition = hashing.code(module.hash(flat), encoding, module.m)
    assert torch.equal(module.encode(ids), definition)
    a, b, p = module.hash_a, module.hash_b, module.p
    for chunk in (10**9, 32 * 2 * 7):  # the torch path in one chunk, and in chunks that leave a remainder
        assert torch.equal(hashing.codes_float64(flat, a, b, p, m, encoding, chunk, use_kernel=False),
                           definition)
    configure_for(module, DeviceCapabilities(launch_bound=True))  # a GPU's setting: one int64 pass
    assert module.hash_method == "int64" and torch.equal(module.encode(ids), definition)


@pytest.mark.parametrize("tables, threads", [(3, 1), (3, 2), (1, 2), (1, 3)])
def test_dhe_c_kernel_codes_are_bit_identical_to_torch(tables, threads, monkeypatch):
    """The one-pass C hash (dhe/kernels.py) against the torch float64 path and the definition, split
    across threads by table or, for one table, by lookups; and the fallback when it cannot be built."""
    from harness.workload import ckernels
    from harness.workload.representations.dhe import kernels

    if not kernels.available()[0]:
        pytest.skip(kernels.available()[1])  # no C compiler here: the torch hash is used (tested below)
    monkeypatch.setattr(ckernels, "threads_for", lambda work, minimum: threads)
    module = DeepHashEmbedding(range(tables), small_dhe(k=40, decoder=[40, 6], m=1_000_000), dim=4)
    flat = torch.randint(0, 2**62, (tables, 999), generator=torch.Generator().manual_seed(tables))
    c_codes = kernels.encode_uniform(flat, module.hash_a, module.hash_b, module.p, module.m)
    assert torch.equal(c_codes, hashing.code(module.hash(flat), "uniform", module.m))
    assert torch.equal(c_codes, hashing.codes_float64(flat, module.hash_a, module.hash_b, module.p, module.m,
                                                      "uniform", use_kernel=False))


@pytest.mark.parametrize("m", [7, 1_000_000, 1 << 26])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dhe_c_kernel_variants_write_the_same_bits_edge_ids_included(m, dtype):
    """The AVX2 + FMA kernel (fused where exact, selecting on the sign bit), its AVX512-BF16 conversion for
    bf16 codes, and the plain C one: the same codes bit for bit, in float32 and bfloat16, on ids whose
    hashes land on the reductions' edges (0, 1, p - 1, m mod p), with k = 42 leaving a remainder after the
    vector loops; all equal the definition."""
    from harness.workload.representations.dhe import kernels

    if not kernels.available()[0]:
        pytest.skip(kernels.available()[1])
    runs = kernels.variants(dtype)
    if len(runs) < 2:
        pytest.skip("this CPU has no AVX2 with FMA: the plain kernel alone runs (tested above)")
    module = DeepHashEmbedding(range(3), small_dhe(k=42, decoder=[42, 6], m=m), dim=4)
    flat = torch.randint(0, 2**62, (3, 777), generator=torch.Generator().manual_seed(m))
    p = module.p
    for t in range(3):
        for j in (0, 5, 41):  # hashes in the vector body and in the remainder
            a, b = int(module.hash_a[t, 0, j]), int(module.hash_b[t, 0, j])
            edges = [((target - b) * pow(a, -1, p)) % p + i * p for target in (0, 1, p - 1, m % p)
                     for i in (0, 7)]
            flat[t, 10 * j: 10 * j + len(edges)] = torch.tensor(edges)
    args = (flat, module.hash_a, module.hash_b, p, module.m, dtype)
    plain = kernels.encode_uniform(*args, variant="plain")
    bits = torch.int16 if dtype == torch.bfloat16 else torch.int32
    for variant in runs[1:]:  # fma, and avx512 where the CPU has it
        codes = kernels.encode_uniform(*args, variant=variant)
        assert torch.equal(codes.view(bits), plain.view(bits)), variant
    assert torch.equal(plain, hashing.code(module.hash(flat), "uniform", module.m).to(dtype))
    assert torch.equal(kernels.encode_uniform(*args).view(bits), plain.view(bits))  # the CPU's choice
    with pytest.raises(ValueError, match="variant 'avx9'"):
        kernels.encode_uniform(*args, variant="avx9")


def _cpu_variants(dtype: torch.dtype) -> list[str]:
    """The hash variants this machine's CPU flags (/proc/cpuinfo) and C compiler call for."""
    import platform
    import shutil

    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    out = ["plain"]
    if platform.machine() != "x86_64" or not {"avx2", "fma"} <= flags:
        return out
    out.append("fma")
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    version = subprocess.run([compiler, "-dumpversion"], capture_output=True, text=True).stdout
    new_enough = int(version.split(".")[0] or 0) >= (12 if "clang" in compiler else 11)
    needs = {"avx512f"} | ({"avx512vl", "avx512_bf16"} if dtype == torch.bfloat16 else set())
    return out + ["avx512"] if new_enough and needs <= flags else out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_hash_kernel_offers_the_variants_this_cpu_has(dtype):
    # A build that lost its vector rows (or a dispatch that never offers them) would pass every bit test
    from harness.workload.representations.dhe import kernels

    if not kernels.available()[0]:
        pytest.skip(kernels.available()[1])
    assert kernels.variants(dtype) == _cpu_variants(dtype)
    assert kernels.variants(torch.float16) == []  # no fp16 codes: the torch path casts


def test_a_run_records_the_settings_and_the_hash_kernel_its_model_computes_with():
    from harness.workload.device import recorded, settings_for
    from harness.workload.representations.dhe import kernels

    module = DeepHashEmbedding(range(2), small_dhe(k=16, decoder=[16, 6], m=1000), dim=4)
    cpu = configure_for(module, DeviceCapabilities(onednn_linear=True, cpu_kernels=True))
    record = recorded(module, cpu)
    assert record["hash_method"] == "float64" and record["linear_kernel"] == "onednn"
    if kernels.available()[0]:
        assert record["dhe_hash"] == f"C {_cpu_variants(torch.float32)[-1]}"
    else:
        assert record["dhe_hash"].startswith("torch float64 (C kernel dhe_hash unavailable")
    gpu = configure_for(module, DeviceCapabilities(launch_bound=True))
    assert recorded(module, gpu)["dhe_hash"] == "torch int64"
    assert set(recorded(torch.nn.Linear(2, 2), settings_for(DeviceCapabilities()))) == set(
        cpu.__dataclass_fields__)  # no DHE, no hash kernel


def test_the_openmp_hash_runs_on_torchs_openmp_runtime_not_a_second_one():
    """A second OpenMP runtime would bring back a second thread pool on the same cores: the kernel needs
    `libgomp.so.1`, and the loader must match it, by soname, to torch's (no system libgomp mapped). Other
    wheels' own copies (scikit-learn's libgomp-<hash>.so, another soname) are theirs and do not count."""
    from harness.workload.representations.dhe import kernels

    lib, why = kernels._load()
    if lib is None or not lib.dhe_openmp():
        pytest.skip(why if lib is None else "the kernel was built without OpenMP here")
    maps = Path(f"/proc/{os.getpid()}/maps").read_text().splitlines()
    by_soname = {line.split()[-1] for line in maps if Path(line.split()[-1]).name.startswith("libgomp.so")}
    bundled = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    assert len(by_soname) == 1, by_soname
    if bundled.is_file():  # torch's wheel brings its own: that one, not the system's
        assert by_soname == {str(bundled)}


def test_a_compiler_without_openmp_builds_the_hash_threaded_by_the_caller(monkeypatch, tmp_path):
    """Where -fopenmp is refused the kernel is built without it (one thread a call) and encode_uniform
    splits tables, or one table's lookups, across its own threads: the same codes."""
    import shutil

    from harness.workload import ckernels
    from harness.workload.representations.dhe import kernels

    real = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if real is None:
        pytest.skip("no C compiler")
    wrapper = tmp_path / "cc"
    refuse = 'for a in "$@"; do [ "$a" = -fopenmp ] && exit 1; done'
    wrapper.write_text(f'#!/bin/sh\n{refuse}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("MPREC_KERNEL_DIR", str(tmp_path / "kernels"))
    monkeypatch.setattr(ckernels, "threads_for", lambda work, minimum: 2)
    ckernels.forget("dhe_hash")
    try:
        lib, why = kernels._load()
        assert lib is not None, why
        assert lib.dhe_openmp() == 0
        for tables in (3, 1):
            module = DeepHashEmbedding(range(tables), small_dhe(k=40, decoder=[40, 6], m=1_000_000), dim=4)
            flat = torch.randint(0, 2**62, (tables, 999), generator=torch.Generator().manual_seed(tables))
            codes = kernels.encode_uniform(flat, module.hash_a, module.hash_b, module.p, module.m)
            assert torch.equal(codes, hashing.code(module.hash(flat), "uniform", module.m))
    finally:
        ckernels.forget("dhe_hash")


def test_dhe_without_a_compiler_keeps_the_torch_hash(monkeypatch, tmp_path):
    from harness.workload import ckernels
    from harness.workload.representations.dhe import kernels

    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv("MPREC_KERNEL_DIR", str(tmp_path))
    ckernels.forget("dhe_hash")
    try:
        assert not kernels.available()[0] and "unavailable" in kernels.available()[1]
        module = DeepHashEmbedding(range(2), small_dhe(k=16, decoder=[16, 6], m=1000), dim=4)
        ids = torch.randint(0, 10**6, (50, 2, 1))
        flat = ids.permute(1, 0, 2).reshape(2, -1)
        assert torch.equal(module.encode(ids), hashing.code(module.hash(flat), "uniform", module.m))
    finally:
        ckernels.forget("dhe_hash")


@pytest.mark.parametrize("m", [2, 7, 1_000_000, 1 << 26])
def test_dhe_32_bit_hashing_gives_the_same_buckets(m):
    module = DeepHashEmbedding(range(3), small_dhe(k=32, decoder=[32, 6], m=m), dim=4)
    ids = torch.randint(0, 2**62, (3, 2000), generator=torch.Generator().manual_seed(m))
    def int32(x):
        return hashing.buckets_int32(x, module.hash_a_limbs, module.limb_bits, module.hash_b32, module.p,
                                     module.m)

    assert torch.equal(int32(ids).long(), module.hash(ids))
    small = torch.randint(0, 2**31 - 1, (3, 2000), dtype=torch.int32)  # int32 ids, as an IPU receives them
    assert torch.equal(int32(small).long(), module.hash(small.long()))
    configure_for(module, DeviceCapabilities(int64=False, float64=False))  # an IPU's, a TPU's setting
    assert module.hash_method == "int32"
    codes = module.encode(ids.T.reshape(-1, 3, 1))
    configure_for(module, DeviceCapabilities())
    torch.testing.assert_close(codes, module.encode(ids.T.reshape(-1, 3, 1)), rtol=0, atol=1e-6)


def test_dhe_gaussian_codes_are_standard_normal_ish():
    module = DeepHashEmbedding([0], small_dhe(k=64, decoder=[64, 6], m=1_000_000, encoding="gaussian"), dim=4)
    codes = module.encode(torch.arange(20_000).view(-1, 1, 1))
    assert abs(codes.mean().item()) < 0.02 and abs(codes.std().item() - 1) < 0.02


_CODES = (
    "import torch; from harness.workload.representations.dhe.module import DeepHashEmbedding as D;"
    "from harness.workload.representations.dhe import Config as C;"
    "m = D(range(4), C(k=8, decoder=[8, 6], m=1000, hash=HASH, encoding='uniform', activation='none',"
    " batch_norm=False, seed=3), 4);"
    "print(m.encode(torch.tensor([[[1], [2], [3], [123456]]])).flatten().tolist())"
)


@pytest.mark.parametrize("family", dhe.HASHES)
def test_dhe_same_id_same_code_in_every_process(family):
    script = _CODES.replace("HASH", repr(family))
    runs = [subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].startswith("[")
    here = DeepHashEmbedding(range(4), small_dhe(seed=3, hash=family), 4).encode(
        torch.tensor([[[1], [2], [3], [123456]]]))
    assert eval(runs[0]) == here.flatten().tolist()


@pytest.mark.parametrize("batch_norm", [False, True])
def test_dhe_batched_decoders_equal_each_tables_own_decoder(batch_norm):
    torch.manual_seed(0)
    module = DeepHashEmbedding(range(5), small_dhe(decoder=[8, 12, 7], batch_norm=batch_norm), dim=4).eval()
    codes = module.encode(torch.randint(0, 10**6, (9, 5, 1)))
    per_table = torch.stack([module.decode_table(t, codes[t]) for t in range(5)])
    torch.testing.assert_close(module.decode(codes), per_table)


@pytest.mark.parametrize("activation", ["none", "sigmoid", "mish"])
def test_dhe_output_shape_and_final_activation(activation):
    module = DeepHashEmbedding(range(3), small_dhe(activation=activation), dim=4)
    out = module(torch.randint(0, 100, (2, 3, 2)))
    assert out.shape == (2, 3, 4)
    if activation == "sigmoid":
        assert out.min() >= 0 and out.max() <= 2  # two ids pooled, each in (0, 1)


def test_dhe_batch_norm_uses_batch_stats_in_training_and_running_stats_in_eval():
    module = DeepHashEmbedding(range(2), small_dhe(batch_norm=True), dim=4)
    ids = torch.randint(0, 1000, (64, 2, 1))
    module.train()
    train_out = module(ids)
    assert not torch.equal(module.norms[0].running_mean, torch.zeros_like(module.norms[0].running_mean))
    module.eval()
    assert not torch.allclose(train_out, module(ids))


# ---------------------------------------------------------------- hybrid and select


def test_hybrid_feeds_both_vectors_and_widens_the_top_mlp():
    for shape, width in (("kaggle", 1394), ("terabyte", 1442)):
        spec = WorkloadSpec.from_shape(
            shape, 0.0001, representation=hybrid.Config(layout="fused", storage="fp32", dhe=dhe.Config(**DHE))
        )
        assert path_cost(spec).top_input_width == width
    spec = WorkloadSpec.from_shape(
        "kaggle", 0.0001, representation=hybrid.Config(layout="fused", storage="fp32", dhe=small_dhe())
    )
    model = build_model(spec, seed=0)
    assert model.over_arch.mlp[0].in_features == 1394
    ids = torch.stack([torch.randint(0, r, (3, 1)) for r in spec.table_rows], dim=1)
    out = model.sparse_arch(ids)
    assert out.shape == (3, 52, 16)
    torch.testing.assert_close(out[:, :26], model.sparse_arch.tables(ids))
    torch.testing.assert_close(out[:, 26:], model.sparse_arch.dhe(ids))


def select_spec(features=None, scale=0.001) -> WorkloadSpec:
    cfg = select.Config(layout="fused", storage="fp32", features=features, num_largest=5,
                        dhe=small_dhe(decoder=[8, 6]))
    return WorkloadSpec.from_shape("kaggle", scale, representation=cfg)


def test_select_puts_dhe_where_chosen_and_tables_elsewhere():
    spec = select_spec(features=["C2", "C7"])
    assert select.selected(spec) == [1, 6]
    torch.manual_seed(0)
    module = build_model(spec).sparse_arch
    ids = torch.stack([torch.randint(0, r, (4, 1)) for r in spec.table_rows], dim=1)
    out = module(ids)
    dhe_part, table_part = module.parts
    torch.testing.assert_close(out[:, [1, 6]], dhe_part(ids[:, [1, 6]]))
    rest = [t for t in range(26) if t not in (1, 6)]
    torch.testing.assert_close(out[:, rest], table_part(ids[:, rest]))


def test_select_default_is_the_five_largest_tables_and_costs_add_up():
    spec = select_spec(scale=1.0)
    assert [f"C{t + 1}" for t in select.selected(spec)] == ["C3", "C4", "C12", "C16", "C21"]
    cost = select.cost(spec)
    kept_rows = sum(r for t, r in enumerate(spec.table_rows) if t not in (2, 3, 11, 15, 20))
    decoder = (8 * 6 + 6 + 6 * 16 + 16) * 4
    assert cost.param_bytes == kept_rows * 16 * 4 + 5 * decoder


# ---------------------------------------------------------------- config errors


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["representation=tt", "representation.rank=0"], "representation.rank"),
        (["representation=dhe", "representation.k=512"], "representation.k"),
        (["representation=dhe", "representation.encoding=gaussian", "representation.k=1023",
          "representation.decoder=[1023,128]"], "representation.k"),
        (["representation=dhe", "representation.activation=tanh"], "representation.activation"),
        (["representation=dhe", "representation.m=100000000"], "representation.m"),
        (["representation=dhe", "representation.hash=md5"], "representation.hash"),
        (["representation=hybrid", "representation.dhe.hash=crc"], "representation.dhe.hash"),
        (["representation=hybrid", "representation.dhe.k=3"], "representation.dhe.k"),
        (["representation=select", "representation.features=[C3,C27]"], "representation.features"),
        (["representation=select", "representation.num_largest=30"], "representation.num_largest"),
    ],
)
def test_bad_representation_values_name_their_key(run_config, overrides, key):
    with pytest.raises(ConfigError) as info:
        run = run_config(*overrides)
        workload_spec(run)
    assert info.value.key == key


@pytest.mark.parametrize("name", ["table", "tt", "dhe", "hybrid", "select"])
def test_every_representation_composes_and_runs_in_dlrm(run_config, name):
    run = run_config(f"representation={name}", "dataset.scale=0.0001",
                     "representation.k=8" if name == "dhe" else "representation.layout=fused",
                     *(["representation.decoder=[8,6]"] if name == "dhe" else []))
    spec = workload_spec(run)
    model = build_model(spec, seed=0)
    ids = torch.stack([torch.randint(0, r, (2, 1)) for r in spec.table_rows], dim=1)
    assert model(torch.rand(2, 13), ids).shape == (2,)


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("layers", [[16, 12], [16]])
def test_dhe_decoders_on_onednn_equal_the_batched_gemms(batch_norm, layers):
    """A CPU's settings run fp32 first layers table by table through oneDNN from 256 lookups: the same
    decoder outputs as the batched GEMMs, to fp32 rounding; the ReLU fused only where no norm is between."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    params = dhe.DheParams(k=16, decoder=layers, m=1000, hash="multiply_shift", encoding="uniform",
                           activation="none", batch_norm=batch_norm and len(layers) > 1, seed=0)
    module = DeepHashEmbedding(features=[0, 1, 2], params=params, dim=4).eval().requires_grad_(False)
    if module.norms is not None:
        for norm in module.norms:
            norm.running_mean.uniform_(-0.5, 0.5)
            norm.running_var.uniform_(0.5, 2.0)
    codes = module.encode(torch.randint(0, 10**6, (300, 3, 1)))
    reference = module.decode(codes)
    configure_for(module, DeviceCapabilities(onednn_linear=True))
    with torch.profiler.profile() as prof:
        fused = module.decode(codes)
    assert any(event.key == "mkldnn::_linear_pointwise" for event in prof.key_averages())
    torch.testing.assert_close(fused, reference, rtol=1e-5, atol=1e-5)
    # Fewer lookups: the batched GEMMs again.
    with torch.profiler.profile() as prof:
        small = module.decode(codes[:, :100])
    assert not any(event.key == "mkldnn::_linear_pointwise" for event in prof.key_averages())
    torch.testing.assert_close(small, reference[:, :100], rtol=1e-6, atol=1e-6)
