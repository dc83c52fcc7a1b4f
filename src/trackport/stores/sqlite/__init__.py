"""A local MLflow sqlite tracking store, as a source and as a sink (see `store`).

Modules: `store` (SqliteStore), `rows` (runs and their inputs as rows of MLflow's tables),
`metrics` (metric points in bulk), `group_commit` (one sqlite writer for many threads),
`schema` (MLflow's schema, copied from a template), `files` (where a store's files are and
how a database is made ready for writing), `run_folders` (the artifact folders of runs),
`patch` (a run brought up to date in place, for trackport sync), `run_writing` (put_run,
shared with the PostgreSQL/MySQL sink of stores.serverdb).
"""
