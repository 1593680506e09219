"""Config composition and validation: every bad value is refused before work, naming its key."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException

from harness.core.conf import compose
from harness.core.errors import ConfigError
from harness.pipeline.config import load_config


def test_default_config_is_table_on_auto_backend_with_kaggle_shape(run_config):
    run = run_config()
    assert run.backend.name == "auto"
    assert run.representation.name == "table"
    assert run.dataset.name == "synthetic_kaggle" and run.dataset.shape == "kaggle"
    assert run.workload.query_sizes == [1, 8, 64, 256, 1024, 4096]
    assert run.dry_run is False


def test_plus_backend_selects_the_adapter_and_its_typed_schema(run_config):
    run = run_config("+backend=cpu", "backend.num_threads=1")
    assert type(run.backend).__name__ == "CpuConfig"
    assert run.backend.num_threads == 1


def test_backend_without_plus_is_refused_by_hydra_with_its_hint():
    with pytest.raises(ConfigCompositionException, match=r"\+backend=cpu"):
        compose(["backend=cpu"])


def test_terabyte_dataset_composes_with_its_shape(run_config):
    run = run_config("dataset=synthetic_terabyte")
    assert run.dataset.shape == "terabyte"


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["workload.query_sizes=[1,-8]"], "workload.query_sizes"),
        (["workload.query_sizes=[]"], "workload.query_sizes"),
        (["dataset.shape=avazu"], "dataset.shape"),
        (["dataset.scale=0"], "dataset.scale"),
        (["model.bottom_mlp=[13,512,64]"], "model.embedding_dim"),
        (["model.bottom_mlp=[12,512,16]"], "model.bottom_mlp"),
        (["model.top_mlp=[512,2]"], "model.top_mlp"),
        (["measure.min_iters=many"], "measure.min_iters"),
        (["measure.max_time_s=0.5", "measure.min_time_s=1"], "measure.max_time_s"),
        (["+backend=cpu", "backend.num_threads=0"], "backend.num_threads"),
        (["+backend=cpu", "+backend.threads=4"], "backend.threads"),
        (["representation.name=holograms"], "representation.name"),
        (["representation.layout=diagonal"], "representation.layout"),
        (["+model.depth=3"], "model.depth"),
        (["job_timeout_s=soon"], "job_timeout_s"),
        (["job_timeout_s=0"], "job_timeout_s"),
        (["job_timeout_s=true"], "job_timeout_s"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_key(run_config, overrides, key):
    with pytest.raises(ConfigError) as info:
        run_config(*overrides)
    assert info.value.key == key
    assert f"'{key}'" in str(info.value)


def test_a_new_embedding_dim_resizes_the_reference_bottom_mlp(run_config):
    from harness.pipeline.config import workload_spec

    spec = workload_spec(run_config("model.embedding_dim=32"))
    assert spec.bottom_mlp == (13, 512, 256, 64, 32)


def test_missing_yaml_values_are_reported_not_defaulted():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(compose())
    del cfg["measure"]["min_iters"]
    with pytest.raises(ConfigError, match="measure.min_iters"):
        load_config(cfg)


def test_a_typo_in_a_key_is_answered_with_the_closest_key_before_hydras_advice(tmp_path):
    import subprocess
    import sys

    from .conftest import harness_env

    proc = subprocess.run([sys.executable, "-m", "harness", "workload.query_size=[1,8]"], cwd=tmp_path,
                          env=harness_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: config key 'workload.query_size' does not exist; "
                                   "did you mean 'workload.query_sizes'?")


@pytest.mark.parametrize("config_name, argv, problem", [
    ("config", ["representation.rnk=4"], "did you mean 'representation.rank'?"),  # tt's key, tt not chosen
    ("config", ["+backend=cpu", "backend.num_thread=2"], "did you mean 'backend.num_threads'?"),
    ("config", ["-m", "dataset.sclae=0.1,1.0"], "did you mean 'dataset.scale'?"),
    ("analysis", ["targets=[1,10]"], "did you mean 'targets_ms'?"),
    ("serving", ["serving=mprec_headline", "live.enabld=true"], "did you mean 'live.enabled'?"),
    ("config", ["representation=hybrid", "representation.dhe.k=8", "backend.num_threads=2", "+model.depth=3",
                "hydra.job.chdir=true", "hydra/launcher=joblib", "experiment=smoke", "dataset.path=x"], None),
])
def test_override_keys_are_checked_against_every_option_of_the_tree(config_name, argv, problem):
    from harness.core.conf import config_dir
    from harness.core.overrides import unknown_override

    message = unknown_override(argv, config_dir(), config_name)
    assert message == problem if problem is None else message.endswith(problem)
