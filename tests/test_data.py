"""The synthetic generator, the Criteo reader and the quality metrics."""

from __future__ import annotations

import csv
import gzip
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.core.spec import KAGGLE_ROWS, scale_rows
from harness.core.zipf import ZipfSampler
from harness.data.criteo import CriteoReader, MalformedLine
from harness.data.synthetic import SyntheticCriteo
from harness.workload.metrics import auc, evaluate, log_loss

from .conftest import SHARED_DATA, write_criteo_csv

SAMPLE = SHARED_DATA / "criteo_sample.csv"
ROWS = scale_rows(KAGGLE_ROWS, 0.001)
needs_sample = pytest.mark.skipif(not SAMPLE.is_file(),
                                  reason="../shared/data/criteo_sample.csv not beside the repo")

# ------------------------------------------------------------------ synthetic generator

_DIGEST = ("import hashlib; from harness.data.synthetic import SyntheticCriteo as S;"
           "from harness.core.spec import KAGGLE_ROWS, scale_rows;"
           "g = S(scale_rows(KAGGLE_ROWS, 0.001), seed=7); d, i, l = g.samples('train', 123_456, 300);"
           "print(hashlib.sha256(d.tobytes() + i.tobytes() + l.tobytes()).hexdigest())")


def test_generator_is_deterministic_across_processes():
    digests = {subprocess.run([sys.executable, "-c", _DIGEST], capture_output=True, text=True,
                              check=True).stdout.strip() for _ in range(2)}
    assert len(digests) == 1
    import hashlib

    dense, ids, labels = SyntheticCriteo(ROWS, seed=7).samples("train", 123_456, 300)
    assert digests == {hashlib.sha256(dense.tobytes() + ids.tobytes() + labels.tobytes()).hexdigest()}


def test_batches_are_reproducible_independently():
    gen = SyntheticCriteo(ROWS, seed=1)
    whole = gen.samples("train", 0, 5 * 700)
    for i in (4, 1):  # batch 4 first: it needs nothing generated before it
        part = gen.samples("train", i * 700, 700)
        for got, full in zip(part, whole):
            np.testing.assert_array_equal(got, full[i * 700 : (i + 1) * 700])


def test_splits_are_disjoint_sample_ranges():
    gen = SyntheticCriteo(ROWS, seed=1)
    train = gen.samples("train", 0, 2000)[0]
    test = gen.samples("test", 0, 2000)[0]
    assert not (train[:, None, :] == test[None, :, :]).all(-1).any()


@pytest.mark.parametrize("exponent", [0.8, 1.05, 1.2])
def test_zipf_exponent_shows_in_id_frequencies(exponent):
    sampler = ZipfSampler(rows=1_000_000, exponent=exponent, seed=0)
    ranks = sampler.ranks(np.random.default_rng(0), 2_000_000)
    counts = np.bincount(ranks, minlength=1000)[:1000].astype(float)
    # log-frequency against log-rank over ranks 10..1000 (enough counts each) is a line of slope -s.
    x, y = np.log(np.arange(10, 1000) + 1), np.log(counts[10:1000])
    slope = np.polyfit(x, y, 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.05)
    ids = sampler.id_of_rank(np.arange(10))
    assert len(set(ids.tolist())) == 10 and ids.max() > 1000  # hot ids scattered, not 0..9


def test_zipf_tail_matches_the_exact_law():
    sampler = ZipfSampler(rows=50_000, exponent=1.05, seed=0)
    ranks = sampler.ranks(np.random.default_rng(1), 4_000_000)
    tail = (ranks >= 4096).mean()  # beyond the exactly-sampled head
    exact = sampler.probability_of_rank(np.arange(4097, 50_001)).sum()
    assert tail == pytest.approx(exact, rel=0.02)


def test_labels_have_criteos_positive_rate():
    labels = SyntheticCriteo(ROWS, seed=2).samples("train", 0, 50_000)[2]
    assert labels.mean() == pytest.approx(0.25, abs=0.02)


def test_planted_signal_is_learnable_by_a_table_model_briefly_trained(run_config):
    from harness.data.sources import open_dataset
    from harness.pipeline.config import workload_spec
    from harness.workload.dlrm import build_model
    from harness.workload.training import train

    run = run_config("dataset.scale=0.001", "train.steps=300", "train.eval_every=300",
                     "train.eval_samples=8192")
    spec = workload_spec(run)
    result = train(build_model(spec, seed=0), open_dataset(run.dataset, spec), run.train, seed=0)
    constant = max(result.quality.positive_rate, 1 - result.quality.positive_rate)
    assert result.quality.auc > 0.6
    assert result.quality.accuracy > constant  # beats always predicting the majority class


# ------------------------------------------------------------------ Criteo reader


def _read(path, **kw):
    reader = CriteoReader(path, KAGGLE_ROWS, **kw)
    chunks = list(reader)
    cat = lambda f: np.concatenate([getattr(c, f) for c in chunks])  # noqa: E731
    return cat("dense"), cat("ids"), cat("labels"), reader.stats


def _generated(tmp_path, rows: int = 200) -> Path:
    """A Criteo-format CSV written by the test (tests/conftest.py): what runs wherever the repo is cloned."""
    return write_criteo_csv(tmp_path / "generated.csv", rows)


def _rows(path) -> list[list[str]]:
    with open(path) as f:
        return list(csv.reader(f))[1:]


def _write_tsv(path, rows, opener=open):
    with opener(path, "wt") as f:
        f.write("".join("\t".join(r) + "\n" for r in rows))


def _check_first_rows(dense, ids):
    # Row 1: I2=3, I3=260.0, I5=17668.0, I8=33.0, I12=0.0, the rest empty; C1=05db9164, C2=08d6d899.
    expected = np.zeros(13, dtype=np.float32)
    for col, value in ((1, 3), (2, 260), (4, 17668), (7, 33)):
        expected[col] = math.log1p(value)
    np.testing.assert_allclose(dense[0], expected, rtol=1e-6)
    assert ids[0, 0, 0] == 0x05DB9164 % 1460 == 164
    assert ids[0, 1, 0] == 0x08D6D899 % 583 == 171
    assert ids[0, 2, 0] == 0x9143C832 % 10131227
    assert ids[0, 18, 0] == 0 and ids[0, 19, 0] == 0  # C19, C20 empty -> 0
    # Row 2: I2 = -1 is negative -> 0; I3 = 19.
    assert dense[1, 1] == 0.0 and dense[1, 2] == pytest.approx(math.log1p(19))


@needs_sample
def test_reader_on_the_csv_sample():
    dense, ids, labels, stats = _read(SAMPLE)
    assert len(labels) == 200 and stats.malformed == 0
    assert labels.mean() == pytest.approx(0.245)
    _check_first_rows(dense, ids)
    assert (ids[:, :, 0] < np.array(KAGGLE_ROWS)).all()


@pytest.mark.parametrize("compressed", [False, True])
def test_reader_on_a_tsv_of_the_same_rows(tmp_path, compressed):
    source = _generated(tmp_path)
    path = tmp_path / ("day_0.gz" if compressed else "train.txt")
    _write_tsv(path, _rows(source), gzip.open if compressed else open)
    dense, ids, labels, stats = _read(path)
    csv_dense, csv_ids, csv_labels, _ = _read(source)
    assert len(labels) == 200 and stats.malformed == 0
    np.testing.assert_array_equal(labels, csv_labels)
    np.testing.assert_array_equal(ids, csv_ids)
    np.testing.assert_array_equal(dense, csv_dense)


@needs_sample
def test_reader_on_a_tsv_of_the_real_rows(tmp_path):
    path = tmp_path / "train.txt"
    _write_tsv(path, _rows(SAMPLE))
    dense, ids, labels, _ = _read(path)
    assert len(labels) == 200 and labels.mean() == pytest.approx(0.245)
    _check_first_rows(dense, ids)


def _with_malformed(tmp_path):
    rows = _rows(_generated(tmp_path, 20))
    lines = ["\t".join(r) for r in rows]
    lines[3] = lines[3] + "\textra"  # line 4: one column too many
    lines[7] = "\t".join(rows[7][:30])  # line 8: too few
    for line, column, value in ((11, 2, "12x"),  # line 12: I2 not a number
                                (15, 0, "2"),  # line 16: label 2
                                (17, 14, "zz12ab34")):  # line 18: C1 not hex
        bad = list(rows[line])
        bad[column] = value
        lines[line] = "\t".join(bad)
    path = tmp_path / "mixed.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_lines_are_counted_and_skipped_with_line_numbers(tmp_path):
    _, _, labels, stats = _read(_with_malformed(tmp_path))
    assert len(labels) == 15 and stats.malformed == 5
    assert sorted(line for line, _ in stats.examples) == [4, 8, 12, 16, 18]
    reasons = dict(stats.examples)
    assert "columns" in reasons[4] and "I2" in reasons[12] and "label" in reasons[16] and "C1" in reasons[18]


def test_strict_mode_stops_at_the_first_malformed_line(tmp_path):
    path = _with_malformed(tmp_path)
    with pytest.raises(MalformedLine, match=rf"{path.name}:4\b"):
        _read(path, strict=True)


def test_max_ind_range_hashes_into_the_smaller_range(tmp_path):
    _, ids, _, _ = _read(_generated(tmp_path), max_ind_range=1000)
    assert ids.max() < 1000
    assert (ids[:, 0, 0] < 1000).all() and len(np.unique(ids[:, 2, 0])) > 50


def test_files_that_are_not_criteo_text_are_refused_naming_the_file_in_printable_text(run_config, tmp_path):
    from harness.core.errors import ConfigError

    rows = _generated(tmp_path).read_bytes()
    header_only = tmp_path / "header.csv"
    header_only.write_bytes(rows.split(b"\n")[0] + b"\n")
    truncated = tmp_path / "cut.gz"
    truncated.write_bytes(gzip.compress(rows)[:2000])
    binary = tmp_path / "random.bin"
    binary.write_bytes(bytes(np.random.default_rng(0).integers(1, 256, 5000, dtype=np.uint8)) + b"\x00")
    cases = {header_only: "a header line and no rows", truncated: "not a readable gzip file",
             binary: "not a text file"}
    for path, why in cases.items():
        with pytest.raises(ConfigError) as info:  # when the config is checked, before any work
            run_config("dataset=criteo_kaggle", f"dataset.path={path}")
        message = str(info.value)
        assert info.value.key == "dataset.path" and str(path) in message and why in message
        assert message.isprintable()


def test_a_gzip_cut_short_past_its_start_is_a_data_error_naming_the_file(tmp_path):
    from harness.core.errors import DataError

    rows = write_criteo_csv(tmp_path / "big.csv", 4000).read_bytes()
    data = gzip.compress(rows)
    path = tmp_path / "day_0.gz"
    path.write_bytes(data[: int(len(data) * 0.7)])  # the start reads fine: the cut is found while reading
    with pytest.raises(DataError, match=rf"{path.name}: cannot read past row \d+"):
        _read(path)


def test_missing_or_empty_file_fails_in_config_naming_the_path(run_config, tmp_path):
    from harness.core.errors import ConfigError

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for path in (tmp_path / "nope.txt", empty):
        with pytest.raises(ConfigError) as info:
            run_config("dataset=criteo_kaggle", f"dataset.path={path}")
        assert info.value.key == "dataset.path" and str(path) in str(info.value)


def test_multi_hot_ids_on_a_criteo_file_are_refused_when_planning(run_config, tmp_path):
    from harness.core.errors import ConfigError

    path = tmp_path / "day_0.tsv"
    _write_tsv(path, [["1", *["1"] * 13, *["a1"] * 26]])
    with pytest.raises(ConfigError) as info:  # before any run exists, not when the file is opened
        run_config("dataset=criteo_kaggle", f"dataset.path={path}", "model.ids_per_lookup=2")
    assert info.value.key == "model.ids_per_lookup" and "one id per feature" in str(info.value)


def test_criteo_dataset_splits_every_nth_row_to_test(run_config, tmp_path):
    from harness.data.sources import open_dataset
    from harness.pipeline.config import workload_spec

    run = run_config("dataset=criteo_kaggle", f"dataset.path={_generated(tmp_path)}", "dataset.test_every=4")
    dataset = open_dataset(run.dataset, workload_spec(run))
    assert len(dataset.eval_set(1000)) == 50
    first = next(dataset.train_batches(150))
    assert len(first) == 150
    pool = dataset.pool(64, 5)
    assert len(pool) == 5 and pool[0][1].shape == (64, 26, 1)


# ------------------------------------------------------------------ quality metrics


def test_auc_with_ties_equals_the_pairwise_definition():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties
    labels = (rng.random(300) < 0.3).astype(float)
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    assert auc(scores, labels) == pytest.approx(pairwise)


def test_log_loss_and_accuracy_by_hand():
    logits, labels = np.array([0.0, 2.0, -1.0]), np.array([1.0, 1.0, 1.0])
    expected = -np.mean(np.log(1 / (1 + np.exp(-logits))))
    assert log_loss(logits, labels) == pytest.approx(expected)
    assert log_loss(np.array([800.0, -800.0]), np.array([1.0, 0.0])) == pytest.approx(0.0, abs=1e-12)
    q = evaluate(logits, labels)
    assert q.accuracy == pytest.approx(1 / 3)  # sigmoid(0) = 0.5 rounds to 0
    assert math.isnan(q.auc) and q.positive_rate == 1.0
