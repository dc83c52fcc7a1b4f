"""MLflow 3 traces read from a tracking database, for MlflowDatabaseSource: the units a
tracking server's REST API gives for the same traces (stores/rest/traces_source.py), built
by trackport.traces from the rows as trace_rows turns them into what the API sends.

A trace's info is trace_info's row with its trace_tags, trace_request_metadata and
assessments rows. Its spans are where the tag `mlflow.trace.spansLocation` says: the
`spans` table (TRACKING_STORE), or the trace's artifact `traces.json` under the tag
`mlflow.artifactLocation` (a client that could not send spans), read when that is a path
this machine can open (a server's `mlflow-artifacts:` location under the source URI's
artifacts_destination); a trace whose spans cannot be read is Unreadable, with the reason,
as is one whose spans a server archived (ARCHIVE_REPO: its own file format).

Streamed: an experiment's traces a page at a time, in (timestamp_ms, request_id) order, so
that memory holds one page's rows and spans however many traces there are.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from trackport.domain import Experiment
from trackport.errors import UnitError
from trackport.kinds import TRACE, Unit
from trackport.stores.base import TRACES_BEFORE, NotSelected, Selection, Unreadable
from trackport.stores.mlflow_db.tables import Database, chunks
from trackport.stores.mlflow_db.trace_rows import assessment, info_metadata, info_tags, otel_span
from trackport.traces import (
    ARTIFACT_LOCATION_TAG,
    SPANS_LOCATION_TAG,
    TRACKING_STORE,
    TraceFields,
    span_from_artifact,
    span_from_otel_json,
    trace_unit,
)

TRACE_PAGE = 100  # traces read at once: their rows and spans are in memory together
TRACE_DATA_FILE = "traces.json"  # a trace's spans in its artifact folder (MLflow's name)
ARCHIVE_REPO = "ARCHIVE_REPO"  # spansLocation of a trace whose spans a server archived


class TraceReading:
    """The traces of an MLflow database, for MlflowDatabaseSource: it gives `_db` and
    `_local_folder` (an artifact URI as a local folder)."""

    _db: Database

    def _local_folder(self, uri: str | None, what: str, unit_id: str) -> Path | None:
        raise NotImplementedError

    def iter_traces(self, experiment: Experiment, selection: Selection | None = None) -> Iterator[Unit | Unreadable | NotSelected]:
        """The experiment's traces, oldest request first (then by id), a page at a time; with
        a selection's traces_since, the older ones as NotSelected (their spans not read)."""
        db = self._db
        if not db.has_traces:
            return
        since = None if selection is None else selection.traces_since
        after: tuple[int, str] | None = None
        while True:
            rows = self._trace_page(int(experiment.experiment_id), after)
            if not rows:
                return
            yield from self._page_units(rows, since)
            if len(rows) < TRACE_PAGE:
                return
            after = (rows[-1].timestamp_ms, rows[-1].request_id)

    def _trace_page(self, experiment_id: int, after: tuple[int, str] | None) -> list:
        """The next page of the experiment's trace_info rows after (timestamp_ms, request_id)."""
        db = self._db
        sa, ti = db.sa, db.tables["trace_info"]
        q = sa.select(*[c for c in ti.c if db.has("trace_info", c.name)]).where(ti.c.experiment_id == experiment_id)
        if after is not None:
            # keyset paging on MLflow's (timestamp_ms, request_id) index: no OFFSET rescans
            q = q.where(sa.or_(ti.c.timestamp_ms > after[0], sa.and_(ti.c.timestamp_ms == after[0], ti.c.request_id > after[1])))
        q = q.order_by(ti.c.timestamp_ms, ti.c.request_id).limit(TRACE_PAGE)
        with db.engine.connect() as conn:
            return conn.execute(q).all()

    def _page_units(self, rows: list, since: int | None) -> Iterator[Unit | Unreadable | NotSelected]:
        db = self._db
        ids = [row.request_id for row in rows]
        with db.engine.connect() as conn:
            tags = _key_values(conn, db, "trace_tags", ids)
            metadata = _key_values(conn, db, "trace_request_metadata", ids)
            assessments = _assessment_rows(conn, db, ids)
        has_name = db.has("trace_info", "trace_name")
        infos: list[tuple[Any, dict[str, str]]] = []
        for row in rows:
            info_tag = info_tags(tags.get(row.request_id, []), row._mapping.get("trace_name"), has_name)
            if since is not None and row.timestamp_ms < since:
                yield NotSelected(TRACE.name, row.request_id, info_tag.get("mlflow.traceName", ""), TRACES_BEFORE)
            else:
                infos.append((row, info_tag))
        in_store = [row.request_id for row, t in infos if t.get(SPANS_LOCATION_TAG) == TRACKING_STORE]
        spans = self._stored_spans(in_store)
        for row, info_tag in infos:
            yield self._unit(row, info_tag, metadata.get(row.request_id, []), assessments.get(row.request_id, []), spans)

    def _unit(self, row: Any, tags: dict[str, str], metadata: list, assessments: list, spans: dict[str, list[str]]) -> Unit | Unreadable:
        trace_id = row.request_id
        try:
            location = tags.get(SPANS_LOCATION_TAG)
            if location == TRACKING_STORE:
                span_dicts = [span_from_otel_json(otel_span(content)) for content in spans.get(trace_id, [])]
            elif location == ARCHIVE_REPO:
                raise UnitError(f"trace {trace_id}: its spans were archived by the tracking server (ARCHIVE_REPO); export it through the server")
            else:
                span_dicts = self._artifact_spans(trace_id, tags)
            mapping = row._mapping
            return trace_unit(TraceFields(
                trace_id=trace_id,
                experiment_id=str(row.experiment_id),
                request_time=int(row.timestamp_ms),
                execution_duration=None if row.execution_time_ms is None else int(row.execution_time_ms),
                state=row.status or "STATE_UNSPECIFIED",
                request_preview=mapping.get("request_preview"),
                response_preview=mapping.get("response_preview"),
                client_request_id=mapping.get("client_request_id") or None,
                tags=tags,
                metadata=info_metadata(metadata, dict(mapping), self._db.columns.get("trace_info", frozenset())),
                assessments=[assessment(a) for a in assessments],
                spans=span_dicts,
            ))
        except UnitError as exc:
            return Unreadable(TRACE.name, trace_id, str(exc), tags.get("mlflow.traceName", ""))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return Unreadable(TRACE.name, trace_id, f"trace {trace_id}: the database holds an unusable row ({exc!r})", tags.get("mlflow.traceName", ""))

    def _stored_spans(self, trace_ids: list[str]) -> dict[str, list[str]]:
        """trace id -> its spans' content (MLflow's span dicts as JSON) from the spans table;
        an emptied content (a span whose payload the server moved to its archive) is left out,
        as MLflow leaves it out."""
        db = self._db
        found: dict[str, list[str]] = {}
        if not trace_ids or "spans" not in db.table_names:
            return found
        s = db.tables["spans"]
        with db.engine.connect() as conn:
            for chunk in chunks(trace_ids):
                for trace_id, content in conn.execute(db.sa.select(s.c.trace_id, s.c.content).where(s.c.trace_id.in_(chunk))):
                    if content:
                        found.setdefault(trace_id, []).append(content)
        return found

    def _artifact_spans(self, trace_id: str, tags: dict[str, str]) -> list[dict]:
        """The spans in the trace's artifact traces.json (UnitError, one line, when it cannot be read)."""
        uri = tags.get(ARTIFACT_LOCATION_TAG)
        if not uri:
            raise UnitError(f"trace {trace_id}: its spans are neither in the database nor in an artifact ({ARTIFACT_LOCATION_TAG} is not set)")
        try:
            folder = self._local_folder(uri, "trace", trace_id)
        except UnitError as exc:  # the local-artifact helpers word their errors for runs
            raise UnitError(str(exc).replace(f"run {trace_id}", f"trace {trace_id}")) from None
        if folder is None:
            raise UnitError(f"trace {trace_id}: no artifact folder in {uri!r}")
        path = folder / TRACE_DATA_FILE
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise UnitError(f"trace {trace_id}: its spans file {path} is missing") from None
        except OSError as exc:
            raise UnitError(f"trace {trace_id}: cannot read its spans file {path}: {exc.strerror or exc}") from None
        except ValueError:
            raise UnitError(f"trace {trace_id}: its spans file {path} is not JSON") from None
        return [span_from_artifact(s) for s in data.get("spans") or ()]


def _key_values(conn: Any, db: Database, table_name: str, trace_ids: list[str]) -> dict[str, list[tuple[str, Any]]]:
    """trace id -> [(key, value)] of trace_tags or trace_request_metadata."""
    table = db.tables[table_name]
    out: dict[str, list[tuple[str, Any]]] = {}
    for chunk in chunks(trace_ids):
        for trace_id, key, value in conn.execute(db.sa.select(table.c.request_id, table.c.key, table.c.value).where(table.c.request_id.in_(chunk))):
            out.setdefault(trace_id, []).append((key, value))
    return out


def _assessment_rows(conn: Any, db: Database, trace_ids: list[str]) -> dict[str, list[dict]]:
    """trace id -> its assessments rows (as dicts of the columns the schema has)."""
    out: dict[str, list[dict]] = {}
    if not db.has("assessments"):
        return out
    table = db.tables["assessments"]
    columns = [c for c in table.c if db.has("assessments", c.name)]
    for chunk in chunks(trace_ids):
        for row in conn.execute(db.sa.select(*columns).where(table.c.trace_id.in_(chunk))):
            out.setdefault(row.trace_id, []).append(dict(row._mapping))
    return out
