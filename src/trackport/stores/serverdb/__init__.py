"""A tracking server's PostgreSQL or MySQL (MariaDB) database as a sink (issue 17, item 3):
restore straight into the server's own tables (store.ServerDatabaseSink). Reading such a
database is stores.mlflow_db.server."""
