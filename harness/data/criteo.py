"""Streaming reader for real Criteo files, with DLRM's preprocessing.

Formats: the Kaggle `train.txt` and Terabyte `day_N` files as distributed (TSV, no header: label,
I1..I13, C1..C26, empty = missing), plain or gzip (detected by magic bytes), and the CSV-with-header
variant (`label,I1,...,C26`; detected by the header). Files are parsed in blocks by pyarrow's streaming
CSV reader, so a 45M-row file never sits in memory at once.

Preprocessing (DLRM): missing or negative integers -> 0, dense = log(1 + x); categorical hex -> integer
-> index modulo the table's row count (or, with `max_ind_range`, a stable hash modulo
min(rows, max_ind_range)). A malformed line (wrong column count, a non-numeric integer field, a label
other than 0/1, a non-hex categorical) is skipped and counted, with the first few line numbers kept for
the warning; with `strict=True` the first one raises `MalformedLine` naming the file and line.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "day.tsv")
>>> _ = open(path, "w").write("1\\t3\\t\\t-2" + "\\t" * 11 + "\\t".join(["0000000a"] * 26) + "\\n")
>>> chunk = next(iter(CriteoReader(path, table_rows=(7,) * 26)))
>>> chunk.labels.tolist(), chunk.ids[0, :2, 0].tolist(), round(float(chunk.dense[0, 0]), 4)
([1.0], [3, 3], 1.3863)
"""

from __future__ import annotations

import gzip
import logging
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from harness.core.errors import DataError
from harness.data.synthetic import splitmix64

log = logging.getLogger(__name__)

NUM_DENSE, NUM_SPARSE = 13, 26
COLUMNS = ["label"] + [f"I{i}" for i in range(1, NUM_DENSE + 1)] + [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate("0123456789abcdef"):
    _HEX[ord(_c)] = _i
    _HEX[ord(_c.upper())] = _i


class MalformedLine(DataError):
    """A line that cannot be read (strict mode): the message names the file and line."""


class EmptyInput(DataError):
    """The file is missing, holds no rows, or is not text."""


@dataclass
class ReaderStats:
    rows: int = 0  # rows returned
    malformed: int = 0
    examples: list[tuple[int, str]] = field(default_factory=list)  # (line number, why), the first few

    def record(self, line: int, why: str, keep: int = 5) -> None:
        self.malformed += 1
        if len(self.examples) < keep:
            self.examples.append((line, why))


@dataclass
class CriteoChunk:
    dense: np.ndarray  # [n, 13] float32, log(1 + max(x, 0))
    ids: np.ndarray  # [n, 26, 1] int64, per-table indices
    labels: np.ndarray  # [n] float32
    row_index: np.ndarray  # [n] int64: 0-based data-row number in the file (header and bad lines excluded)


@dataclass(frozen=True)
class FileFormat:
    gzip: bool
    delimiter: str
    header: bool


SNIFF_BYTES = 1 << 16  # the start of a file read to tell its format (and that it is text at all)


def detect_format(path: str | Path) -> FileFormat:
    """gzip by magic bytes; a header when the first field is 'label'; comma if the first line has no tab.

    A file that is not text (a NUL byte, or bytes that are not UTF-8, at its start), a truncated gzip
    stream, and a file with a header but no row are refused here, naming the file, before any work.
    """
    path = Path(path)
    if not path.is_file():
        raise EmptyInput(f"{path}: no such file")
    with open(path, "rb") as raw:
        is_gzip = raw.read(2) == b"\x1f\x8b"
    opener = gzip.open if is_gzip else open
    try:
        with opener(path, "rb") as f:
            start = f.read(SNIFF_BYTES)
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile, a truncated stream
        raise EmptyInput(f"{path}: not a readable gzip file ({exc})") from None
    if b"\x00" in start:
        raise EmptyInput(f"{path}: not a text file (a NUL byte at offset {start.index(0)}); Criteo data is "
                         "TSV or CSV text, plain or gzip")
    try:
        start.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(start) - 4:  # not just a character cut at the end of the sample
            raise EmptyInput(
                f"{path}: not a text file (byte 0x{start[exc.start]:02x} at offset {exc.start} is "
                "not UTF-8); Criteo data is TSV or CSV text, plain or gzip"
            ) from None
    lines = start.split(b"\n", 2)
    first = lines[0]
    if not first.strip():
        raise EmptyInput(f"{path}: empty file (no rows)")
    delimiter = "\t" if b"\t" in first else ","
    header = first.split(delimiter.encode())[0].strip().lower() == b"label"
    if header and (len(lines) < 2 or not lines[1].strip()):
        raise EmptyInput(f"{path}: a header line and no rows")
    return FileFormat(is_gzip, delimiter, header)


def parse_hex(arr) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow string array of hex values -> (uint64 values, bad mask); nulls (empty) read as 0."""
    n = len(arr)
    values = np.zeros(n, dtype=np.uint64)
    bad = np.zeros(n, dtype=bool)
    if n == 0 or arr.null_count == n:
        return values, bad
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32, count=n + 1, offset=arr.offset * 4)
    data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)
    lengths = np.diff(offsets)
    present = lengths > 0
    if np.all(lengths[present] == 8):
        # Criteo's case: every value is 8 hex digits, stored back to back: no gather needed.
        words = data[offsets[0] : offsets[-1]].view(">u8").astype(np.uint64)
        decoded, ok = _hex8_swar(words)
        values[present] = decoded
        bad[present] = ~ok
        return values, bad
    width = 16 if lengths.max() > 8 else 8
    bad |= lengths > 16  # more than 64 bits
    lengths = np.minimum(lengths, width)
    # Right-align each value in `width` positions; the padding reads as '0'.
    column = np.arange(width)
    pad = (width - lengths)[present, None]
    positions = offsets[:-1][present, None] + column - pad
    raw = np.where(column >= pad, data[np.clip(positions, 0, max(len(data) - 1, 0))], ord("0"))
    nibbles = _HEX[raw]
    bad[present] |= (nibbles == 255).any(axis=1)
    nibbles &= 15
    packed = np.ascontiguousarray((nibbles[:, 0::2] << 4) | nibbles[:, 1::2])
    values[present] = packed.view(f">u{width // 2}").ravel()
    return values, bad


_U = np.uint64


def _hex8_swar(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8 ASCII hex digits per uint64 (big-endian) -> (their value, valid) with whole-word arithmetic.

    A byte's nibble is (b & 0xF) + 9 * bit6(b) for 0-9, a-f and A-F; nibbles are packed pairwise into
    bytes, then 16- and 32-bit lanes. Validity without a per-byte table: re-encode the value as lowercase
    hex and compare with the input with letters folded to lowercase (only bytes with bit 6 set are
    folded, so no control character can pass for a digit). 10x faster than a lookup table here.
    """
    v = (words & _U(0x0F0F0F0F0F0F0F0F)) + _U(9) * ((words >> _U(6)) & _U(0x0101010101010101))
    v = ((v >> _U(4)) | v) & _U(0x00FF00FF00FF00FF)
    v = ((v >> _U(8)) | v) & _U(0x0000FFFF0000FFFF)
    value = ((v >> _U(16)) | v) & _U(0x00000000FFFFFFFF)
    n = value
    n = (n | (n << _U(16))) & _U(0x0000FFFF0000FFFF)
    n = (n | (n << _U(8))) & _U(0x00FF00FF00FF00FF)
    n = (n | (n << _U(4))) & _U(0x0F0F0F0F0F0F0F0F)
    ascii = (
        n
        + _U(0x3030303030303030)
        + _U(39) * (((n + _U(0x0606060606060606)) >> _U(4)) & _U(0x0101010101010101))
    )
    folded = words | ((words & _U(0x4040404040404040)) >> _U(1))
    return value, ascii == folded


class CriteoReader:
    """Iterate a Criteo file in chunks of preprocessed rows; `stats` counts what was skipped."""

    def __init__(self, path: str | Path, table_rows: tuple[int, ...], max_ind_range: int | None = None,
                 strict: bool = False, block_bytes: int = 8 << 20, use_threads: bool = False) -> None:
        self.path = Path(path)
        self.format = detect_format(self.path)
        self.table_rows = np.asarray(table_rows, dtype=np.uint64)
        if len(self.table_rows) != NUM_SPARSE:
            raise ValueError(
                f"Criteo has {NUM_SPARSE} categorical columns, the model {len(self.table_rows)} tables"
            )
        self.modulus = (self.table_rows if max_ind_range is None else np.minimum(self.table_rows,
                                                                                 max_ind_range))
        self.hashed = max_ind_range is not None
        self.strict = strict
        self.block_bytes = block_bytes
        # Threads parse ~5% faster here but leave skipped lines unnumbered; strict mode needs the numbers.
        self.use_threads = use_threads and not strict
        self.stats = ReaderStats()

    def _fail_or_count(self, line: int, why: str) -> None:
        if self.strict:
            raise MalformedLine(f"{self.path}:{line}: {why}")
        self.stats.record(line, why)

    def __iter__(self) -> Iterator[CriteoChunk]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        fmt = self.format
        header_lines = 1 if fmt.header else 0
        column_skips: list[int] = []  # line numbers of rows pyarrow dropped (wrong column count)
        strict_failure: list[str] = []

        def invalid_row(row) -> str:
            # pyarrow numbers rows only when it parses on one thread; otherwise the text must do.
            known = row.number is not None and row.number >= 0
            line = row.number if known else -1
            why = f"expected {row.expected_columns} columns, found {row.actual_columns}"
            if not known:
                why += f": {row.text[:60]!r}"
            if self.strict:
                # An exception raised in this callback would be swallowed by pyarrow; "error" makes it
                # raise ArrowInvalid, which the loop below turns into this line's MalformedLine.
                strict_failure.append(f"{self.path}:{line}: {why}")
                return "error"
            self.stats.record(line, why)
            column_skips.append(line)
            return "skip"

        read = pacsv.ReadOptions(column_names=COLUMNS, skip_rows=header_lines, block_size=self.block_bytes,
                                 use_threads=self.use_threads)
        parse = pacsv.ParseOptions(delimiter=fmt.delimiter, invalid_row_handler=invalid_row)
        convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in COLUMNS},
                                       strings_can_be_null=True, null_values=[""])
        stream = pa.input_stream(str(self.path), compression="gzip" if fmt.gzip else None)
        emitted = 0  # rows pyarrow has handed us so far
        try:
            with pacsv.open_csv(stream, read_options=read, parse_options=parse,
                                convert_options=convert) as reader:
                for batch in _prefetched(reader):
                    if batch.num_rows == 0:
                        continue
                    chunk = self._convert(batch, emitted, header_lines, sorted(column_skips))
                    emitted += batch.num_rows
                    if len(chunk.labels):
                        self.stats.rows += len(chunk.labels)
                        yield chunk
        except pa.ArrowInvalid as exc:
            raise MalformedLine(strict_failure[0] if strict_failure else f"{self.path}: {exc}") from None
        except OSError as exc:  # e.g. a gzip stream cut short after its start: rows read so far were used
            raise DataError(
                f"{self.path}: cannot read past row {emitted + header_lines} ({exc}); a truncated "
                "or corrupt file?"
            ) from None

    def _line_of(self, emitted_index: np.ndarray, header_lines: int, skips: list[int]) -> np.ndarray:
        """File line numbers (1-based) of rows by their index among the rows pyarrow emitted."""
        lines = emitted_index + header_lines + 1
        for skipped in skips:  # few: each one pushes the later lines down by one
            lines = lines + (lines >= skipped)
        return lines

    def _convert(self, batch, emitted: int, header_lines: int, skips: list[int]) -> CriteoChunk:
        import pyarrow as pa
        import pyarrow.compute as pc

        n = batch.num_rows
        problems: list[tuple[np.ndarray, str]] = []  # (rows, why); reasons are only spelled out if any

        label = batch.column("label")
        is_one = pc.fill_null(pc.equal(label, "1"), False).to_numpy(zero_copy_only=False)
        is_zero = pc.fill_null(pc.equal(label, "0"), False).to_numpy(zero_copy_only=False)
        problems.append((~(is_one | is_zero), "label is not 0 or 1"))
        labels = is_one.astype(np.float32)

        dense = np.empty((n, NUM_DENSE), dtype=np.float32)
        for j in range(NUM_DENSE):
            col = batch.column(f"I{j + 1}")
            try:
                values = pc.cast(col, pa.float32())
            except pa.ArrowInvalid:
                # Rare: a non-numeric field in this block. Find the rows, read the rest.
                numeric = pc.fill_null(
                    pc.match_substring_regex(col, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"), True
                ).to_numpy(zero_copy_only=False)
                problems.append((~numeric, f"I{j + 1} is not a number"))
                values = pc.cast(pc.if_else(pa.array(numeric), col, pa.scalar(None, pa.string())),
                                 pa.float32())
            dense[:, j] = pc.fill_null(values, 0.0).to_numpy(zero_copy_only=False)
        np.maximum(dense, 0.0, out=dense)  # negative (and missing, filled above) -> 0
        np.log1p(dense, out=dense)

        ids = np.empty((n, NUM_SPARSE), dtype=np.int64)
        for t in range(NUM_SPARSE):
            col = batch.column(f"C{t + 1}")
            values, bad_hex = parse_hex(col.combine_chunks() if hasattr(col, "combine_chunks") else col)
            problems.append((bad_hex, f"C{t + 1} is not hexadecimal"))
            if self.hashed:
                values = splitmix64(values)
            modulus = self.modulus[t]
            if not self.hashed and values.max(initial=0) < (1 << 32):
                # Criteo's 8-digit hex: 32-bit division is about twice as fast as 64-bit.
                ids[:, t] = values.astype(np.uint32) % np.uint32(modulus)
            else:
                ids[:, t] = values % modulus

        index = np.arange(emitted, emitted + n, dtype=np.int64)
        rows = self._line_of(index, header_lines, skips) - header_lines - 1  # data-row numbers
        bad = np.zeros(n, dtype=bool)
        for mask, _ in problems:
            bad |= mask
        if bad.any():
            lines = self._line_of(index[bad], header_lines, skips)
            reasons = [next(why for mask, why in problems if mask[i]) for i in np.flatnonzero(bad)]
            for line, reason in zip(lines.tolist(), reasons):
                self._fail_or_count(int(line), reason)
            keep = ~bad
            dense, ids, labels, rows = dense[keep], ids[keep], labels[keep], rows[keep]
        return CriteoChunk(dense, ids[:, :, None], labels, rows)


def _prefetched(batches, depth: int = 2):
    """Iterate `batches` with the next ones parsed on a helper thread meanwhile.

    pyarrow parses a block in C++ without the GIL while this thread decodes the previous one (numpy and
    pyarrow compute release it too): on 2 cores the parse and the conversion overlap instead of taking
    turns (docs/performance.md). Errors reach the consumer in order; closing the iterator stops the helper.
    Rows skipped while parsing ahead only have later line numbers, so earlier blocks' numbering holds.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        items.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(done)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            items.put(exc)

    helper = threading.Thread(target=produce, name="criteo-prefetch", daemon=True)
    helper.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while helper.is_alive():  # unblock a helper waiting to put, then let it see `stop`
            try:
                items.get(timeout=0.1)
            except queue.Empty:
                pass
        helper.join()
