"""MLflow's backend-store database read directly, without MLflow and without its server.

The reader is strictly read-only: sqlite files are opened with `mode=ro`, server databases
(PostgreSQL, MySQL) in read-only sessions, and nothing here ever creates a table, runs a
migration or takes a write lock, so it is safe on a live server's database. It reads
MLflow's core tables (experiments, experiment_tags, runs, params, tags, metrics,
latest_metrics for filters and run tables, datasets, inputs, input_tags), and MLflow 3's
logged model, registry and trace tables (trace_info, trace_tags, trace_request_metadata,
assessments, spans), through SQLAlchemy core with
lightweight table constructs (no ORM, no MLflow models), so the same queries serve every
dialect and reserved words such as `key` are quoted per dialect.

Metric histories, the bulk of the data, are streamed into Arrow in batches of
config.metric_batch_rows: from sqlite through ADBC (`adbc-driver-sqlite`, column-wise, no
Python object per value) when it is installed, otherwise through the sqlite3 module; from
server databases key by key: PostgreSQL through ADBC (`adbc-driver-postgresql`, COPY into
Arrow) when it is installed, otherwise, and MySQL, through SQLAlchemy with server-side cursors.

Modules: `uri` (trackport's own URI parameter), `tables` (the table constructs and what a
schema has), `metric_order` (metric rows into ordered Arrow batches), `source` (the reader
every dialect shares), `summaries` (metric summaries for filters and run tables, in SQL),
`models` (logged models and the registry), `traces` and `trace_rows` (traces, as a
tracking server's REST API gives them),
`sqlite` and `server` (the two kinds of database), `adbc_postgres` (PostgreSQL's metrics
through ADBC).
"""
