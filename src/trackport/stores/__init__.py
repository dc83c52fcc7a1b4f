"""The store adapters: every place trackport reads tracking data from or writes it into.

`base` is the interface the transfer engine asks of them; `registry` decides which kind
of store a URI names. The adapters: `rest` (a tracking server over its REST API),
`sqlite` (a local MLflow sqlite store, source and sink), `mlflow_db` (a tracking server's
backend database read directly), `local_mlruns` (a legacy mlruns/ folder); the bundle
package is one too. The factory that opens them from URIs (opening.py) sits above them:
nothing here imports it, the bundle package or the transfer engine.
"""
