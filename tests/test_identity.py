"""A path is its whole configuration (issue 23): variant labels, one memory-fit rule, the sweep's scope."""

from __future__ import annotations

import types

import pytest

from harness.analysis import mapping as mp
from harness.core.fit import fits
from harness.pipeline.plan import plan

from .test_analysis import GB, SETTINGS, cell, record, table_of


@pytest.mark.parametrize("overrides, label", [
    ([], "table@cpu"),  # the default model: the label it always had
    (["representation=dhe"], "dhe@cpu"),
    (["representation=dhe", "representation.hash=universal"], "dhe[hash=universal]@cpu"),
    (["representation=dhe", "representation.k=512", "representation.decoder=[512,128]"],
     "dhe[k=512,decoder=512-128]@cpu"),
    (["representation=tt", "representation.rank=8"], "tt[rank=8]@cpu"),
    (["model.embedding_dim=32", "model.bottom_mlp=[13,512,256,32]"],
     "table[embedding_dim=32,bottom_mlp=13-512-256-32]@cpu"),
    (["representation.storage=int8", "precision=bf16"], "table:int8@cpu/bf16"),  # storage: its own part
    (["train.steps=100", "seed=3"], "table@cpu"),  # training is not the model: quality keys tell those apart
])
def test_a_label_names_every_model_setting_that_differs_from_the_defaults(overrides, label):
    from harness.core.conf import compose

    assert plan(compose(["+backend=cpu", *overrides])).path == label


@pytest.mark.parametrize("representation, node", [("dhe", lambda r: r), ("hybrid", lambda r: r["dhe"])])
def test_the_universal_hash_keeps_the_keys_its_runs_had_before_the_hash_was_a_choice(representation, node):
    """Runs recorded before `hash` existed hashed the universal family: with hash=universal a path finds
    them (run and quality keys unchanged); multiply_shift computes other codes, so it has keys of its own."""
    from harness.core.conf import compose
    from harness.core.keys import quality_key, run_key

    def config(family: str) -> dict:
        key = "representation.dhe.hash" if representation == "hybrid" else "representation.hash"
        overrides = ["+backend=cpu", f"representation={representation}", f"{key}={family}"]
        return plan(compose(overrides)).run.as_dict()

    universal, shifted = config("universal"), config("multiply_shift")
    legacy = config("universal")
    del node(legacy["representation"])["hash"]
    assert run_key(legacy) == run_key(universal) and quality_key(legacy) == quality_key(universal)
    assert run_key(shifted) != run_key(universal) and quality_key(shifted) != quality_key(universal)


def test_a_k_sweep_is_told_apart_in_run_names_too():
    from harness.core.conf import compose

    names = {plan(compose(["+backend=cpu", "representation=dhe", f"representation.k={k}",
                           f"representation.decoder=[{k},128]"])).run_name for k in (256, 1024)}
    assert names == {"dhe[k=256,decoder=256-128]@cpu synthetic_kaggle x0.1 q1-4096",
                     "dhe@cpu synthetic_kaggle x0.1 q1-4096"}


def test_one_fit_rule_for_run_dry_run_and_mapping():
    assert fits(90, 100, 0.1) and not fits(91, 100, 0.1) and fits(1, None, 0.1) is None
    # The mapping takes the run's own verdict per size (parameters plus that size's activations), so a
    # model that fits at 64 but not at 4096 is feasible at 64 only, whatever its parameter bytes alone say.
    rec = record("dhe@cpu", sizes={64: (5.0, 20_000), 4096: (50.0, 80_000)}, param_bytes=1e6)
    rec["per_size"]["fits_device"] = {64: 1.0, 4096: 0.0}
    table = mp.mapping(table_of(rec), SETTINGS)
    assert cell(table, 64, 10)["choice"] == "dhe@cpu" and not mp.chosen(cell(table, 4096, 100)["choice"])
    # A run recorded without a verdict is judged by the same rule on what it recorded.
    old = record("table@ipu", sizes={64: (0.1, 1e9)}, param_bytes=0.95 * GB, capacity=1 * GB)
    old["params"]["workload.memory_headroom"] = "0.1"
    assert not mp.chosen(cell(mp.mapping(table_of(old), SETTINGS), 64, 10)["choice"])


def test_the_feasibility_of_absent_devices_uses_the_same_rule_and_the_largest_size():
    rec = record("dhe@cpu", sizes={4096: (50.0, 80_000)}, param_bytes=0.5 * GB)
    rec["per_size"]["memory_needed_bytes"] = {4096: 0.95 * GB}
    rec["params"]["workload.memory_headroom"] = "0.1"
    paths = mp.paths_table(table_of(rec), SETTINGS)
    matrix = mp.feasibility_matrix(paths, {"small": 1 * GB, "big": 2 * GB})
    assert matrix.iloc[0]["small"] == False and matrix.iloc[0]["big"] == True  # noqa: E712 - numpy bools


def test_a_tf_gpu_reports_the_gpus_memory_not_the_hosts(monkeypatch):
    import backends.tf as tf_backend

    monkeypatch.setattr(tf_backend.subprocess, "run", lambda *a, **k: types.SimpleNamespace(stdout="81559\n"))
    assert tf_backend.gpu_memory_bytes(0) == 81559 * 2**20  # nvidia-smi's MiB, where pynvml is absent

    def no_smi(*a, **k):
        raise FileNotFoundError("nvidia-smi")

    monkeypatch.setattr(tf_backend.subprocess, "run", no_smi)
    assert tf_backend.gpu_memory_bytes(0) == 0  # unknown: the plan says so rather than use the host's RAM


def test_the_xla_device_is_looked_up_once_not_in_every_timed_copy(monkeypatch):
    import backends.tpu as tpu

    lookups = []
    fake = types.SimpleNamespace(device=lambda: lookups.append(1) or "xla:0")
    monkeypatch.setattr(tpu, "_xla", lambda: (fake, None, None))
    adapter = tpu.TpuBackend.__new__(tpu.TpuBackend)
    assert [adapter.device for _ in range(5)] == ["xla:0"] * 5 and lookups == [1]
