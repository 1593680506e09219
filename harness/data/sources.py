"""Datasets a run can use, typed by `dataset.kind`: the synthetic generator or real Criteo files.

A dataset gives three things: training batches (an endless stream), a fixed held-out evaluation set, and
the batches the latency ladder cycles. Train and test never share a sample: synthetic splits are
disjoint index ranges; a Criteo file sends every `test_every`-th data row to test.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Protocol

import numpy as np
from omegaconf import MISSING

from harness.core.errors import ConfigError, DataError
from harness.core.schema import typed
from harness.core.spec import SHAPES, feature_names
from harness.data.criteo import CriteoReader, EmptyInput, ReaderStats, detect_format
from harness.data.synthetic import SyntheticCriteo

log = logging.getLogger(__name__)


@dataclass
class LabeledBatch:
    dense: np.ndarray  # [n, 13] float32
    ids: np.ndarray  # [n, T, L] int64
    labels: np.ndarray  # [n] float32

    def __len__(self) -> int:
        return len(self.labels)


class Dataset(Protocol):
    """What a run needs of a dataset: an endless training stream, a fixed held-out set, the batches the
    ladder cycles, and the most popular ids of a field (for MP-Cache). `stats` counts rows read and
    malformed lines of a file (None for generated data)."""

    stats: object | None

    def train_batches(self, batch_size: int) -> Iterator[LabeledBatch]: ...

    def eval_set(self, samples: int) -> LabeledBatch: ...

    def pool(self, query_size: int, batches: int) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def hot_ids(self, feature: int, n: int, sample_rows: int) -> np.ndarray: ...


def _check_common(cfg) -> None:
    if cfg.shape not in SHAPES:
        raise ConfigError("shape", f"unknown dataset shape {cfg.shape!r}; known: {sorted(SHAPES)}")
    if not cfg.scale > 0:
        raise ConfigError("scale", f"must be > 0, got {cfg.scale}")


@dataclass
class SignalConfig:
    """The planted model behind synthetic labels (harness/data/synthetic.py)."""

    fields: List[str] = MISSING  # fields whose hidden vectors interact, by Criteo name
    latent_dim: int = MISSING
    dense_weight: float = MISSING
    interaction_weight: float = MISSING
    positive_rate: float = MISSING


@dataclass
class SyntheticConfig:
    name: str = MISSING
    kind: str = "synthetic"
    shape: str = MISSING
    scale: float = MISSING
    zipf_exponent: float = MISSING
    seed: int = MISSING
    signal: SignalConfig = field(default_factory=SignalConfig)

    def check(self) -> None:
        _check_common(self)
        if self.zipf_exponent < 0:
            raise ConfigError("zipf_exponent", f"must be >= 0, got {self.zipf_exponent}")
        known = feature_names(len(SHAPES[self.shape].table_rows))
        unknown = [f for f in self.signal.fields if f not in known]
        if unknown:
            raise ConfigError("signal.fields",
                              f"{unknown} are not features of the {self.shape} shape (C1..C26)")
        if self.signal.latent_dim < 1:
            raise ConfigError("signal.latent_dim", f"must be >= 1, got {self.signal.latent_dim}")
        if not 0 < self.signal.positive_rate < 1:
            raise ConfigError("signal.positive_rate", f"must be in (0, 1), got {self.signal.positive_rate}")


@dataclass
class CriteoConfig:
    name: str = MISSING
    kind: str = "criteo"
    shape: str = MISSING  # sets the table sizes ids are reduced into
    scale: float = MISSING
    path: str = MISSING
    strict: bool = MISSING  # stop at the first malformed line instead of skipping and counting it
    max_ind_range: Optional[int] = MISSING  # hash ids into min(rows, this) instead of taking them mod rows
    test_every: int = MISSING  # every test_every-th data row goes to the test split
    use_threads: bool = MISSING  # pyarrow's parallel parsing

    def check(self) -> None:
        _check_common(self)
        if self.path in (None, "", MISSING):
            raise ConfigError("path", "set it to a Criteo file, e.g. dataset.path=/data/train.txt")
        try:
            detect_format(self.path)
        except EmptyInput as exc:
            raise ConfigError("path", f"{exc}") from None
        if self.max_ind_range is not None and self.max_ind_range < 2:
            raise ConfigError("max_ind_range", f"must be >= 2 or null, got {self.max_ind_range}")
        if self.test_every < 2:
            raise ConfigError("test_every", f"must be >= 2, got {self.test_every}")

    def check_spec(self, spec) -> None:
        if spec.ids_per_lookup != 1:
            raise ConfigError("model.ids_per_lookup", "Criteo files hold one id per feature: it must be 1")


KINDS: dict[str, type] = {"synthetic": SyntheticConfig, "criteo": CriteoConfig}


def typed_config(node: dict | None) -> SyntheticConfig | CriteoConfig:
    """The `dataset` section as the Config dataclass its `kind` selects, checked."""
    if not node or "kind" not in node:
        raise ConfigError("dataset.kind", "missing: choose a dataset with dataset=<name> (conf/dataset/)")
    if node["kind"] not in KINDS:
        raise ConfigError("dataset.kind", f"unknown dataset kind {node['kind']!r}; known: {sorted(KINDS)}")
    return typed(KINDS[node["kind"]], node, "dataset")


class SyntheticDataset:
    def __init__(self, cfg: SyntheticConfig, spec) -> None:
        names = feature_names(spec.num_tables)
        self.generator = SyntheticCriteo(
            spec.table_rows, spec.num_dense, cfg.zipf_exponent, cfg.seed, spec.ids_per_lookup,
            signal_fields=tuple(names.index(f) for f in cfg.signal.fields),
            latent_dim=cfg.signal.latent_dim, dense_weight=cfg.signal.dense_weight,
            interaction_weight=cfg.signal.interaction_weight, positive_rate=cfg.signal.positive_rate,
        )
        self.stats = None

    def train_batches(self, batch_size: int) -> Iterator[LabeledBatch]:
        for i in itertools.count():
            yield LabeledBatch(*self.generator.samples("train", i * batch_size, batch_size))

    def eval_set(self, samples: int) -> LabeledBatch:
        return LabeledBatch(*self.generator.samples("test", 0, samples))

    def pool(self, query_size: int, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self.generator.batch(i, query_size, split="timing") for i in range(batches)]

    def hot_ids(self, feature: int, n: int, sample_rows: int) -> np.ndarray:
        """The `n` most popular ids of a field: known exactly, the generator's Zipf ranks 0..n-1."""
        sampler = self.generator.samplers[feature]
        return sampler.id_of_rank(np.arange(min(n, sampler.rows)))


class CriteoDataset:
    def __init__(self, cfg: CriteoConfig, spec) -> None:
        self.cfg = cfg
        self.table_rows = spec.table_rows
        self.stats: ReaderStats | None = None  # the latest pass over the file
        self.training_stats: ReaderStats | None = None  # training's pass, when one ran

    def _reader(self, split: str | None = None):
        reader = CriteoReader(self.cfg.path, self.table_rows, self.cfg.max_ind_range, self.cfg.strict,
                              use_threads=self.cfg.use_threads)
        self.stats = reader.stats  # the latest pass; counts grow as it reads
        if split == "train":  # training's own pass: what a run records as the rows it read
            self.training_stats = reader.stats
        return reader

    def _rows(self, split: str | None) -> Iterator[LabeledBatch]:
        """One pass over the file's rows of `split` (None: every row), chunk by chunk."""
        every = self.cfg.test_every
        for chunk in self._reader(split):
            if split is None:
                keep = slice(None)
            else:
                is_test = chunk.row_index % every == every - 1
                keep = is_test if split == "test" else ~is_test
            part = LabeledBatch(chunk.dense[keep], chunk.ids[keep], chunk.labels[keep])
            if len(part):
                yield part

    def _batched(self, rows: Iterator[LabeledBatch], size: int) -> Iterator[LabeledBatch]:
        pending: list[LabeledBatch] = []
        have = 0
        for part in rows:
            pending.append(part)
            have += len(part)
            while have >= size:
                merged = LabeledBatch(*(np.concatenate([getattr(p, f) for p in pending])
                                        for f in ("dense", "ids", "labels")))
                yield LabeledBatch(merged.dense[:size], merged.ids[:size], merged.labels[:size])
                rest = LabeledBatch(merged.dense[size:], merged.ids[size:], merged.labels[size:])
                pending, have = ([rest] if len(rest) else []), len(rest)

    def train_batches(self, batch_size: int) -> Iterator[LabeledBatch]:
        for epoch in itertools.count():
            produced = False
            for batch in self._batched(self._rows("train"), batch_size):
                produced = True
                yield batch
            if not produced:
                raise DataError(f"{self.cfg.path}: fewer training rows than one batch of {batch_size}")
            log.info("finished epoch %d over %s", epoch, self.cfg.path)

    def eval_set(self, samples: int) -> LabeledBatch:
        parts, have = [], 0
        for part in self._rows("test"):
            parts.append(part)
            have += len(part)
            if have >= samples:
                break
        if not parts:
            raise DataError(f"{self.cfg.path}: no test rows (every {self.cfg.test_every}th row is test)")
        return LabeledBatch(*(np.concatenate([getattr(p, f) for p in parts])[:samples]
                              for f in ("dense", "ids", "labels")))

    def hot_ids(self, feature: int, n: int, sample_rows: int) -> np.ndarray:
        """The `n` most frequent ids of a field over the first `sample_rows` training rows of the file."""
        if getattr(self, "_counts_rows", None) != sample_rows:
            counts: dict[int, np.ndarray] = {}
            seen = 0
            for part in self._rows("train"):
                for f in range(part.ids.shape[1]):
                    c = np.bincount(part.ids[:, f, :].reshape(-1), minlength=len(counts.get(f, ())))
                    c[: len(counts.get(f, ()))] += counts.get(f, np.zeros(0, dtype=np.int64))
                    counts[f] = c
                seen += len(part)
                if seen >= sample_rows:
                    break
            self._counts, self._counts_rows = counts, sample_rows
        of_feature = self._counts.get(feature, np.zeros(0, dtype=np.int64))
        present = np.flatnonzero(of_feature)
        return present[np.argsort(-of_feature[present], kind="stable")[:n]]

    def pool(self, query_size: int, batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The file's first rows, cut into batches; cycled again if the file is shorter."""
        out = []
        source = itertools.cycle(list(itertools.islice(self._batched(self._rows(None), query_size), batches)))
        for batch in itertools.islice(source, batches):
            out.append((batch.dense, batch.ids))
        if not out:
            raise DataError(f"{self.cfg.path}: fewer rows than one query of {query_size}")
        return out


DATASETS: dict[str, type] = {"synthetic": SyntheticDataset, "criteo": CriteoDataset}


def open_dataset(cfg, spec) -> Dataset:
    """The runtime dataset for a validated dataset config and the model's spec."""
    return DATASETS[cfg.kind](cfg, spec)
