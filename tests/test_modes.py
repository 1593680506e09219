"""Execution modes as part of a path (issue 17): labels, config, keys, and the studies using the best mode.

The CUDA graphs mechanics run against a simulated torch.cuda in tests/test_backends.py; host-to-host
timing with a fake device adapter in tests/test_measure.py.
"""

from __future__ import annotations

import pytest

from harness.analysis import mapping as mp
from harness.core.conf import compose
from harness.core.errors import ConfigError
from harness.core.keys import run_key
from harness.core.paths import PathLabel
from harness.pipeline.config import load_config
from harness.pipeline.plan import plan
from harness.serving.profiles import from_runs

from .test_analysis import SETTINGS, cell, record, table_of


@pytest.mark.parametrize("overrides, label",
                         [(["+backend=cuda"], "table@cuda"),
                          (["+backend=cuda", "backend.graphs=true", "precision=bf16"],
                           "table@cuda+graphs/bf16"),
                          (["+backend=cuda", "backend.compile=true", "backend.compile_mode=reduce-overhead"],
                           "table@cuda+compiled+graphs"),
                          (["+backend=cpu", "backend.compile=true"], "table@cpu+compiled")])
def test_the_label_and_tag_carry_the_execution_mode(overrides, label):
    p = plan(compose(["dry_run=true", *overrides]))
    assert p.path == label and p.run_tags()["mode"] == PathLabel.parse(label).mode
    assert p.dry_run_report()["mode"] == PathLabel.parse(label).mode


def test_graphs_with_compile_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(compose(["+backend=cuda", "backend.graphs=true", "backend.compile=true"]))
    assert info.value.key == "backend.graphs" and "reduce-overhead" in str(info.value)


def test_graphs_with_an_mp_cache_is_refused_naming_the_key():
    with pytest.raises(ConfigError) as info:
        load_config(compose(["+backend=cuda", "backend.graphs=true", "representation=dhe",
                             "representation.cache.rows=100"]))
    assert info.value.key == "backend.graphs" and "MP-Cache" in str(info.value)


def test_runs_recorded_before_precision_graphs_and_the_allocator_rebuild_as_what_they_measured():
    from harness.pipeline.config import from_record

    for overrides in (["+backend=cuda"], ["+backend=cpu", "representation=tt"], ["representation=hybrid"]):
        config = plan(compose(["dry_run=true", *overrides])).run.as_dict()
        old = {**config, "backend": {k: v for k, v in config["backend"].items()
                                     if k not in ("graphs", "allocator")}}
        del old["precision"]
        old["representation"] = {k: v for k, v in config["representation"].items() if k != "storage"}
        assert plan(from_record(old)).run_key() == plan(config).run_key()


def test_an_eager_cuda_run_keeps_the_key_it_had_before_graphs_existed():
    p = plan(compose(["dry_run=true", "+backend=cuda"]))
    legacy = p.run.as_dict()
    legacy["backend"] = {k: v for k, v in legacy["backend"].items() if k != "graphs"}
    assert run_key(legacy) == p.run_key()
    assert plan(compose(["dry_run=true", "+backend=cuda", "backend.graphs=true"])).run_key() != p.run_key()


def _modes():
    # The same DHE model on one GPU: launch-bound eager at small sizes, graphs win there; at 4096 eager wins.
    eager = record("dhe@cuda", sizes={1: (0.9, 1e3), 64: (1.0, 6e4), 4096: (5.0, 8e5)}, start=1)
    graphs = record("dhe@cuda+graphs", sizes={1: (0.25, 4e3), 64: (0.4, 1.6e5), 4096: (5.5, 7.4e5)}, start=2)
    table = record("table@cpu", sizes={1: (0.5, 2e3), 64: (0.7, 9e4), 4096: (30.0, 1.3e5)}, accuracy=0.78,
                   start=3)
    return table_of(eager, graphs, table)


def test_the_mapping_uses_each_familys_best_mode_per_size_and_names_it():
    rows = mp.best_modes(mp.latest_finished(_modes()), "p99")
    chosen = rows[rows["family"] == "dhe@cuda"].set_index("query_size")["path"].to_dict()
    assert chosen == {1: "dhe@cuda+graphs", 64: "dhe@cuda+graphs", 4096: "dhe@cuda"}
    table = mp.mapping(_modes(), SETTINGS)
    assert cell(table, 1, 1)["choice"] == "dhe@cuda+graphs"  # eager (0.9 ms) alone would lose to table@cpu
    assert cell(table, 4096, 10)["choice"] == "dhe@cuda"
    # Never both modes of one family in one cell: the runner-up is another path.
    assert cell(table, 1, 1)["runner_up"] == "table@cpu"


def test_serving_profiles_merge_a_familys_modes_and_say_which_served_each_size():
    profiles = {p.path: p for p in from_runs(_modes())}
    dhe = profiles["dhe@cuda"]
    assert dhe.latency_ms == (0.25 * 0.8, 0.4 * 0.8, 5.0 * 0.8)  # p50 of the faster mode at each size
    assert "1 graphs" in dhe.source and "4096 eager" in dhe.source
    assert dhe.run_id == "dhe@cuda+graphs-2"  # the mode that wins most sizes is the one served live
    assert "dhe@cuda+graphs" not in profiles and profiles["table@cpu"].source.startswith("measured (run")
