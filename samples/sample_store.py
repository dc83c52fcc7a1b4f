"""A small, deterministic MLflow store that exercises every corner trackport must keep.

Built with MLflow's own public client, never with trackport code, so tests compare
trackport against an independent origin. Run ids (and file-store experiment ids) are
deterministic; experiment creation times and the deleted run's deleted_time come from
MLflow's clock and are not.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

BASE_TIME = 1_700_000_000_000  # ms
SEED = 20240229

EXPERIMENT_A = "trackport-sample-a"
EXPERIMENT_B = "trackport sample b"

LONG_PARAM = "x" * 250 + "é" * 250  # 500 characters, some of them multi-byte
NOTE = "# A note\n\nwith *markdown*,\nseveral lines\tand a tab."
MLMODEL = (
    "artifact_path: model\n"
    "flavors:\n"
    "  python_function:\n"
    "    loader_module: mlflow.sklearn\n"
    "    python_version: 3.11.7\n"
    "mlflow_version: 3.17.2\n"
)

# Artifacts of the parent run: nested folders, an empty file, a binary file, an MLmodel.
PARENT_ARTIFACTS: dict[str, bytes] = {
    "MLmodel": MLMODEL.encode(),
    "model/sub/deep.txt": "deep inside\n".encode(),
    "model/conda.yaml": b"name: env\ndependencies: [python=3.11]\n",
    "empty.txt": b"",
    "data/blob.bin": bytes(range(256)) * 4,
    "notes with space.txt": "ünïcödé text\n".encode(),
}
CHILD_ARTIFACTS: dict[str, bytes] = {"report.json": b'{"ok": true}\n'}
DELETED_ARTIFACTS: dict[str, bytes] = {"gone.txt": b"deleted run artifact\n"}


def _points(key: str, rows: list[tuple[int, float, int]]) -> list[tuple[str, int, float, int]]:
    """(timestamp offset, value, step) rows -> (key, timestamp, value, step)."""
    return [(key, BASE_TIME + ts, value, step) for ts, value, step in rows]


# No exact duplicate points: the SQL store collapses them and the file store keeps them,
# and the sample must hold the same thing in both kinds.
PARENT_METRICS = (
    _points("loss", [(i * 10, 1.0 / (i + 1), i) for i in range(1000)])
    + _points(
        "métrique précision",
        [(1, float("nan"), 0), (2, float("inf"), 1), (3, float("-inf"), 2), (4, 0.5, 3)],
    )
    # Repeated steps: same step with different values and timestamps, and one step logged
    # twice at the same timestamp with different values.
    + _points("loss val", [(0, 0.5, 0), (5, 0.4, 0), (6, 0.3, 1), (6, 0.35, 1), (7, 0.2, 2)])
    + _points("train/acc", [(0, 0.1, 0), (1, 0.9, 1)])
)
CHILD_METRICS = _points("child_metric", [(0, 1.0, 0), (1, 2.0, 1), (2, -3.5, 2)])
GRANDCHILD_METRICS = _points("gc", [(0, 42.0, 7)])
DELETED_METRICS = _points("loss", [(0, 9.0, 0), (1, 8.0, 1)])
KILLED_METRICS = _points("x", [(0, 0.0, 0)])
# Points linked to a dataset: the file store writes them as 5-field lines.
EVAL_METRICS = _points("eval_acc", [(100, 0.7, 5), (200, 0.8, 6)])

_ALL_METRICS = (
    PARENT_METRICS + EVAL_METRICS + CHILD_METRICS + GRANDCHILD_METRICS + DELETED_METRICS
    + KILLED_METRICS
)
_ALL_ARTIFACTS = [PARENT_ARTIFACTS, CHILD_ARTIFACTS, DELETED_ARTIFACTS]
# The parent's MLmodel also names its run, as MLflow writes it: "run_id: <32 hex>\n".
_MLMODEL_RUN_ID_LINE_BYTES = len("run_id: \n") + 32

# Everything the store holds: Default (no runs) + 2 experiments; all 6 runs including the
# deleted one; every metric point and artifact file, the deleted run's included.
SAMPLE_COUNTS = {
    "experiments": 3,
    "runs": 6,
    "metric_points": len(_ALL_METRICS),
    "artifact_files": sum(len(a) for a in _ALL_ARTIFACTS),
    "artifact_bytes": sum(len(b) for a in _ALL_ARTIFACTS for b in a.values()) + _MLMODEL_RUN_ID_LINE_BYTES,
}
# The same without the deleted run (no experiment is deleted).
SAMPLE_COUNTS_ACTIVE = {
    "experiments": 3,
    "runs": 5,
    "metric_points": len(_ALL_METRICS) - len(DELETED_METRICS),
    "artifact_files": SAMPLE_COUNTS["artifact_files"] - len(DELETED_ARTIFACTS),
    "artifact_bytes": SAMPLE_COUNTS["artifact_bytes"] - sum(map(len, DELETED_ARTIFACTS.values())),
}


@contextlib.contextmanager
def _seeded_uuid4(label: str) -> Iterator[None]:
    """MLflow draws run ids, file-store experiment ids and dataset/input ids from
    uuid.uuid4(). Seeding it per call (not once per build) keeps ids stable even when
    something else in the process (a one-time init, telemetry) draws uuids too."""
    rng = random.Random(f"{SEED}:{label}")
    original = uuid.uuid4
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)  # type: ignore[assignment]
    try:
        yield
    finally:
        uuid.uuid4 = original  # type: ignore[assignment]


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def build_sample_store(directory: Path, kind: str = "sqlite", tracking_uri: str | None = None) -> str:
    """Build the sample store under directory (which should be empty); return its URI
    (sqlite:///<dir>/mlflow.db) or, for kind "mlruns", the mlruns directory path. Kind
    "server" fills the (empty) tracking server at tracking_uri instead; run ids are then
    the server's."""
    if kind == "server":
        assert tracking_uri, "kind 'server' needs tracking_uri"
        # The proxied artifact repository finds its server through the tracking URI.
        with _env("MLFLOW_TRACKING_URI", tracking_uri), tempfile.TemporaryDirectory() as tmp:
            _populate(tracking_uri, Path(tmp), kind, Path(tmp))
        return tracking_uri
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "sqlite":
        uri = f"sqlite:///{directory / 'mlflow.db'}"
        result = uri
        env = contextlib.nullcontext()
    elif kind == "mlruns":
        mlruns = directory / "mlruns"
        uri = mlruns.as_uri()
        result = str(mlruns)
        # MLflow >= 3.13 refuses the file store unless told otherwise.
        env = _env("MLFLOW_ALLOW_FILE_STORE", "true")
    else:
        raise ValueError(f"unknown sample store kind {kind!r}: use 'sqlite' or 'mlruns'")
    with env, tempfile.TemporaryDirectory() as tmp:
        _populate(uri, directory, kind, Path(tmp))
    return result


def _log_metrics(client, run_id: str, points, dataset=None) -> None:
    from mlflow.entities import Metric

    metrics = [
        Metric(
            key=k, value=v, timestamp=ts, step=s,
            dataset_name=dataset[0] if dataset else None,
            dataset_digest=dataset[1] if dataset else None,
        )
        for k, ts, v, s in points
    ]
    for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
        client.log_batch(run_id, metrics=metrics[i : i + 1000])


def _log_artifacts(client, run_id: str, files: dict[str, bytes], tmp: Path) -> None:
    src = tmp / run_id
    for rel, data in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    # Through the artifact repository of the run's URI, not client.log_artifacts: the
    # client caches repositories by run id, and deterministic ids repeat across builds
    # in one process, so a second build would write into the first one's directory.
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(client.get_run(run_id).info.artifact_uri).log_artifacts(str(src))


def _populate(uri: str, directory: Path, kind: str, tmp: Path) -> None:
    from mlflow.entities import Dataset, DatasetInput, InputTag, Param, RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    if kind == "sqlite":
        # Explicit locations keep artifacts beside the db instead of under the cwd.
        loc_a = (directory / "mlartifacts" / "a").as_uri()
        loc_b = (directory / "mlartifacts" / "b").as_uri()
    else:
        loc_a = loc_b = None
    client.get_experiment("0")  # make sure Default exists before our experiments
    with _seeded_uuid4("experiment a"):
        exp_a = client.create_experiment(
            EXPERIMENT_A, artifact_location=loc_a, tags={"team": "vision", "purpose": "sample"}
        )
    with _seeded_uuid4("experiment b"):
        exp_b = client.create_experiment(EXPERIMENT_B, artifact_location=loc_b)

    def run(exp, name, offset, user, extra_tags=None):
        tags = {"mlflow.user": user, "mlflow.source.type": "LOCAL", **(extra_tags or {})}
        with _seeded_uuid4(f"run {name}"):
            return client.create_run(
                exp, start_time=BASE_TIME + offset, tags=tags, run_name=name
            ).info.run_id

    parent = run(
        exp_a, "parent run", 0, "alice",
        {
            "mlflow.source.name": "train.py",
            "mlflow.source.git.commit": "0123456789abcdef0123456789abcdef01234567",
            "mlflow.note.content": NOTE,
            "team": "vision",
            "clé avec espace": "valeur ünïcode",
        },
    )
    client.log_batch(
        parent,
        params=[
            Param("lr", "0.001"),
            Param("long", LONG_PARAM),
            Param("paramètre spécial", "oui"),
            Param("nested/param", "1"),
        ],
        tags=[RunTag("stage", "dev")],
    )
    _log_metrics(client, parent, PARENT_METRICS)
    dataset = Dataset(
        name="iris",
        digest="abc123",
        source_type="local",
        source='{"uri": "/data/iris.csv"}',
        schema='{"mlflow_colspec": [{"type": "double", "name": "x"}]}',
        profile='{"num_rows": 150}',
    )
    dataset_input = DatasetInput(
        dataset, tags=[InputTag("mlflow.data.context", "training"), InputTag("split", "80/20")]
    )
    with _seeded_uuid4("inputs"):
        client.log_inputs(parent, datasets=[dataset_input])
    _log_metrics(client, parent, EVAL_METRICS, dataset=("iris", "abc123"))
    # As MLflow's client writes it when a model is logged: JSON naming the run itself.
    history = [{"run_id": parent, "artifact_path": "model", "utc_time_created": "2023-11-14 22:13:20.000000",
                "flavors": {"python_function": {"loader_module": "mlflow.sklearn"}}}]
    client.set_tag(parent, "mlflow.log-model.history", json.dumps(history))
    mlmodel = PARENT_ARTIFACTS["MLmodel"] + f"run_id: {parent}\n".encode()
    _log_artifacts(client, parent, {**PARENT_ARTIFACTS, "MLmodel": mlmodel}, tmp)
    client.set_terminated(parent, "FINISHED", end_time=BASE_TIME + 60_000)

    child = run(exp_a, "child", 1_000, "alice", {"mlflow.parentRunId": parent})
    client.log_param(child, "depth", "1")
    _log_metrics(client, child, CHILD_METRICS)
    _log_artifacts(client, child, CHILD_ARTIFACTS, tmp)
    client.set_terminated(child, "FINISHED", end_time=BASE_TIME + 30_000)

    grandchild = run(exp_a, "grandchild", 2_000, "bob", {"mlflow.parentRunId": child})
    _log_metrics(client, grandchild, GRANDCHILD_METRICS)
    client.set_terminated(grandchild, "FAILED", end_time=BASE_TIME + 20_000)

    deleted = run(exp_a, "deleted run", 3_000, "alice")
    _log_metrics(client, deleted, DELETED_METRICS)
    _log_artifacts(client, deleted, DELETED_ARTIFACTS, tmp)
    client.set_terminated(deleted, "FINISHED", end_time=BASE_TIME + 4_000)
    client.delete_run(deleted)

    killed = run(exp_b, "killed run", 10_000, "carol")
    _log_metrics(client, killed, KILLED_METRICS)
    client.set_terminated(killed, "KILLED", end_time=BASE_TIME + 11_000)

    run(exp_b, "still running", 20_000, "carol")  # RUNNING, no end_time
