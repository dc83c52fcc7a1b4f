"""The spans of traces in Parquet (format 1.5): one file per experiment,
experiments/<experiment_id>/spans.parquet, one row per span (docs/bundle-format.md, "spans.parquet").

A trace's document is written whole by put_unit with its spans inside its body, as in
format 1.4 (crash-safe and resumable like any unit document). `finish()` then moves the
spans of each experiment into its Parquet file (`consolidate`): it streams the trace
documents in the order readers list them (bundle/reader.py: unit ids in natural order),
writes their spans a row group at a time into a temp file (spans inside a document, or
for a document that already points at the file, its rows of the file there before), renames
it into place, and only then rewrites each document that held its spans to point at the
file instead (`span_file`: the file's name and how many spans of the trace it holds). A kill
at any point leaves every trace's spans in its document or in the file in place, so the
next `finish()` builds the file again. Memory: one row group, one document, and the names
of the experiment's trace documents (sorted: about 100 bytes a trace, twice that while
sorting; docs/performance.md, "Large experiments of traces").

Readers (`attach`) stream the file beside the experiment's documents, in the same order:
each trace takes its own rows (rows of traces without a document are passed over), checked
against the count its document names; the unit they hand on has its spans in its body again,
the form every store reads and writes.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import BinaryIO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from trackport._files import fsync_dir, sha256_stream, temp_name
from trackport.errors import BadInputError
from trackport.kinds import TRACE
from trackport.bundle import schemas
from trackport.bundle.documents import dumps, loads, short
from trackport.bundle.index import BundleIndex, Problem
from trackport.bundle.layout import (
    EXPERIMENTS_DIR, FORMAT_NAME, FORMAT_VERSION, MANIFEST_FILE, SPANS_FILE, UNITS_DIR, unit_id_of,
)
from trackport.bundle.unit_order import compact_key, document_key

SPAN_FILE_KEY = "span_file"  # a trace body's pointer to its spans: {"file": "spans.parquet", "count": n}
ROW_GROUP_SPANS = 16 * 1024  # at most this many spans a row group ...
ROW_GROUP_BYTES = 32 << 20  # ... and about this many bytes of span text
READ_BATCH_ROWS = 4096
_STRING_DICT = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema(
    [
        pa.field("trace_id", _STRING_DICT, nullable=False),
        pa.field("span_id", pa.string(), nullable=False),
        pa.field("parent_span_id", pa.string()),
        pa.field("name", pa.string(), nullable=False),
        pa.field("start_time_ns", pa.int64(), nullable=False),
        pa.field("end_time_ns", pa.int64()),
        pa.field("status_code", _STRING_DICT, nullable=False),
        pa.field("status_message", pa.string(), nullable=False),
        pa.field("attributes", pa.string(), nullable=False),  # JSON object: key -> the JSON text MLflow stores
        pa.field("events", pa.string(), nullable=False),  # JSON array of {name, time_unix_nano, attributes}
        pa.field("links", pa.string(), nullable=False),  # JSON array
    ],
    metadata={
        "trackport.format": FORMAT_NAME,
        "trackport.format_version": FORMAT_VERSION,
        "trackport.content": "trace-spans",
    },
)
_NULLABLE = {"parent_span_id", "end_time_ns"}
_JSON_COLUMNS = ("attributes", "events", "links")


class SpansFileError(ValueError):
    """The file is not a spans file of this format (columns, types, JSON text, nulls)."""


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _row(trace_id: str, span: dict) -> dict:
    return {
        "trace_id": trace_id, "span_id": span["span_id"], "parent_span_id": span["parent_span_id"], "name": span["name"],
        "start_time_ns": span["start_time_unix_nano"], "end_time_ns": span["end_time_unix_nano"],
        "status_code": span["status"]["code"], "status_message": span["status"]["message"],
        **{c: _json(span[c]) for c in _JSON_COLUMNS},
    }


def _span(row: dict) -> dict:
    """A row back in the body's form of a span (trackport.traces)."""
    for column, value in row.items():
        if value is None and column not in _NULLABLE:
            raise SpansFileError(f"a span of trace {short(str(row['trace_id']), 80)!r} has no {column}")
    try:
        decoded = {c: loads(row[c]) for c in _JSON_COLUMNS}
    except ValueError as e:
        raise SpansFileError(f"span {short(str(row['span_id']), 40)!r}: a JSON column is not strict JSON: {e}") from None
    return {
        "span_id": row["span_id"], "parent_span_id": row["parent_span_id"], "name": row["name"],
        "start_time_unix_nano": row["start_time_ns"], "end_time_unix_nano": row["end_time_ns"],
        "status": {"code": row["status_code"], "message": row["status_message"]}, **decoded,
    }


class SpansWriter:
    """Streams traces' spans into a new Parquet file, a row group at a time."""

    def __init__(self, path: Path, *, row_group_spans: int | None = None) -> None:
        self.row_group_spans = row_group_spans or ROW_GROUP_SPANS
        self.rows = 0
        self._out = open(path, "xb")
        self._writer = pq.ParquetWriter(
            self._out, SCHEMA, compression="zstd", use_dictionary=["trace_id", "status_code"],
            write_statistics=True, write_page_index=True,
        )
        self._pending: list[dict] = []
        self._bytes = 0

    def add(self, trace_id: str, spans: list[dict]) -> None:
        for span in spans:
            row = _row(trace_id, span)
            self._pending.append(row)
            self._bytes += sum(len(row[c]) for c in _JSON_COLUMNS) + len(row["name"]) + 64
            if len(self._pending) >= self.row_group_spans or self._bytes >= ROW_GROUP_BYTES:
                self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.Table.from_pylist(self._pending, schema=SCHEMA), row_group_size=len(self._pending))
            self.rows += len(self._pending)
        self._pending, self._bytes = [], 0

    def close(self) -> None:
        self._flush()
        self._writer.close()
        self._out.flush()
        os.fsync(self._out.fileno())
        self._out.close()

    def abort(self) -> None:
        """Close without raising: the file is thrown away, and closing flushes what a full
        disk refused already (raising here would leave the temp file behind)."""
        for close in (self._writer.close, self._out.close):
            with contextlib.suppress(Exception):
                close()


def _check_columns(schema: pa.Schema) -> None:
    for field in SCHEMA:
        if field.name not in schema.names:
            raise SpansFileError(f"has no column {field.name!r}")
        t = schema.field(field.name).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        want = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if not (t == want or (pa.types.is_large_string(t) and pa.types.is_string(want))):
            raise SpansFileError(f"column {field.name!r} is {t}, not {want}")


class SpanCursor:
    """A spans file read trace by trace, forward only, in natural order of trace ids."""

    def __init__(self, f: BinaryIO | str | Path) -> None:
        try:
            parquet = pq.ParquetFile(f)
            _check_columns(parquet.schema_arrow)
        except (pa.ArrowException, OSError) as e:
            raise SpansFileError(f"is not a readable Parquet file: {short(str(e), 200)}") from None
        self._batches = parquet.iter_batches(batch_size=READ_BATCH_ROWS, columns=SCHEMA.names)
        self._rows: list[dict] = []
        self._at = 0
        self._keys: tuple[str | None, str] = (None, "")

    def _peek(self) -> dict | None:
        while self._at >= len(self._rows):
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            except (pa.ArrowException, OSError) as e:
                raise SpansFileError(f"cannot be read: {short(str(e), 200)}") from None
            self._rows, self._at = batch.to_pylist(), 0
        return self._rows[self._at]

    def _key(self, trace_id: str) -> str:
        if self._keys[0] != trace_id:
            self._keys = (trace_id, compact_key(trace_id))
        return self._keys[1]

    def take(self, trace_id: str) -> list[dict]:
        """The spans of that trace (rows of traces before it are passed over)."""
        wanted, spans = compact_key(trace_id), []
        while (row := self._peek()) is not None:
            if row["trace_id"] is None:
                raise SpansFileError("a span has no trace_id")
            if row["trace_id"] != trace_id:
                if spans or self._key(row["trace_id"]) > wanted:
                    break
            else:
                spans.append(_span(row))
            self._at += 1
        return spans


# -- writing: finish() ---------------------------------------------------------------------
def _documents(trace_dir: Path) -> list[str]:
    """The file names of the trace documents, in the order readers list them: names only
    (about 100 bytes a trace, and a key as large while sorting), never a document."""
    if not trace_dir.is_dir():
        return []
    with os.scandir(trace_dir) as entries:
        names = [e.name for e in entries if unit_id_of(e.name) is not None]
    return sorted(names, key=document_key)


def _holds_spans(path: Path) -> bool:
    return b'"spans":' in path.read_bytes()


def consolidate_all(root: Path) -> None:
    """Every experiment's spans file made whole (see the module docstring)."""
    experiments = root / EXPERIMENTS_DIR
    for e in sorted(experiments.iterdir()) if experiments.is_dir() else ():
        if e.is_dir() and not e.is_symlink():
            consolidate(e, [e / SPANS_FILE])


def consolidate(experiment_dir: Path, spans_files: list[Path], *, force: bool = False) -> None:
    """The experiment's spans file written from its trace documents: a document's own spans,
    else its rows in spans_files (the file there before; the parts of a merge), every
    document then pointing at the file. Nothing is done when every document points at the
    file already (unless force). Memory: the documents' names, one document, one row group."""
    trace_dir = experiment_dir / UNITS_DIR / TRACE.name
    documents = _documents(trace_dir)
    if not documents or not (force or any(_holds_spans(trace_dir / name) for name in documents)):
        return
    final = experiment_dir / SPANS_FILE
    tmp = final.with_name(temp_name(SPANS_FILE))
    opened = [open(f, "rb") for f in spans_files if f.is_file()]
    inline = bytearray(len(documents))  # 1 where a document held its spans (to point at the file after)
    writer = SpansWriter(tmp)
    try:
        cursors = [SpanCursor(f) for f in opened]
        for i, name in enumerate(documents):
            path = trace_dir / name
            doc = loads(path.read_bytes())
            body = doc["body"]
            if "spans" in body:
                spans = body["spans"]
                inline[i] = 1
            else:
                spans = [s for c in cursors for s in c.take(doc["id"])]
                expected = (body.get(SPAN_FILE_KEY) or {}).get("count")
                if len(spans) != expected:
                    raise BadInputError(
                        f"{path}: its trace has {len(spans)} spans in {SPANS_FILE}, not {expected}; export to a new path"
                    )
            writer.add(doc["id"], spans)
        writer.close()
    except BaseException:
        writer.abort()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for f in opened:
            f.close()
    os.replace(tmp, final)
    fsync_dir(experiment_dir)
    for name, held in zip(documents, inline):  # the file holds their spans now: a kill here leaves them in both
        if not held:
            continue
        path = trace_dir / name
        doc = loads(path.read_bytes())
        spans = doc["body"]["spans"]
        doc["body"] = {**{k: v for k, v in doc["body"].items() if k != "spans"}, SPAN_FILE_KEY: {"file": SPANS_FILE, "count": len(spans)}}
        tmp_doc = path.with_name(temp_name(path.name))
        tmp_doc.write_bytes(dumps(doc).encode("utf-8"))
        os.replace(tmp_doc, path)


# -- reading: the reader and verify ----------------------------------------------------------
Checked = tuple[str, "object", list[Problem]]  # (document name, UnitPlan or None, problems)


def attach(index: BundleIndex, experiment_id: str, checked: Iterator[Checked], body_schema: dict | None) -> Iterator[Checked]:
    """The trace documents of one experiment (in the reader's order), each one pointing at
    the spans file with its spans put back into its body, or a problem in its place."""
    rel = f"{EXPERIMENTS_DIR}/{experiment_id}/{SPANS_FILE}"
    cursor: SpanCursor | None = None
    failure: str | None = None
    opened: BinaryIO | None = None
    try:
        for name, plan, problems in checked:
            if plan is None or problems or SPAN_FILE_KEY not in plan.unit.body:
                yield name, plan, problems
                continue
            key = (TRACE.name, name)
            if cursor is None and failure is None:
                opened, cursor, failure = _open(index, rel)
            if failure is None:
                unit = plan.unit
                try:
                    spans = cursor.take(unit.unit_id)
                    count = unit.body[SPAN_FILE_KEY]["count"]
                    if len(spans) != count:
                        raise SpansFileError(f"holds {len(spans)} spans of trace {short(unit.unit_id, 80)!r}, its document {count}")
                except SpansFileError as e:
                    yield name, None, [Problem(rel, str(e), key)]
                    continue
                body = {**{k: v for k, v in unit.body.items() if k != SPAN_FILE_KEY}, "spans": spans}
                errors = schemas.body_errors(body_schema, body) if body_schema is not None else []
                if errors:
                    yield name, None, [Problem(rel, f"a span of trace {short(unit.unit_id, 80)!r} does not match the schema: {errors[0]}", key)]
                    continue
                yield name, dataclasses.replace(plan, unit=dataclasses.replace(unit, body=body)), []
            else:
                yield name, None, [Problem(rel, failure, key)]
    finally:
        if opened is not None:
            opened.close()


def _open(index: BundleIndex, rel: str) -> tuple[BinaryIO | None, SpanCursor | None, str | None]:
    """The listed spans file, hashed against the manifest, ready to read: (file, cursor,
    None), or (None, None, what is wrong)."""
    entry = index.span_files.get(rel)
    if entry is None:
        return None, None, f"(named by trace documents) is not listed in {MANIFEST_FILE}"
    problem = index.files.problem(rel, entry.size)
    if problem:
        return None, None, problem
    try:
        f = index.files.open(rel)
    except OSError as e:
        return None, None, f"cannot be read: {e.strerror or e}"
    try:
        if sha256_stream(f)[0] != entry.sha256:
            f.close()
            return None, None, f"does not match its sha256 in {MANIFEST_FILE}"
        f.seek(0)
        return f, SpanCursor(f), None
    except (OSError, SpansFileError) as e:
        f.close()
        return None, None, str(e) if isinstance(e, SpansFileError) else f"cannot be read: {e}"
