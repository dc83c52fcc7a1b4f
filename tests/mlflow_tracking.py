"""MLflow's own client pointed at a test server, for tests that check what a server holds."""
from __future__ import annotations

import os
from contextlib import contextmanager


@contextmanager
def tracking(url: str):
    """MLflow's client and fluent API pointed at url, the environment too (proxied artifacts
    and trace artifacts find their server through it); the previous tracking URI is put back.
    Yields the client."""
    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = url
    mlflow.set_tracking_uri(url)
    try:
        yield mlflow.MlflowClient(url)
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
        mlflow.set_tracking_uri(before)  # None: back to the environment's
