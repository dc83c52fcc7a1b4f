"""Artifacts of a tracking server whose files live in S3, read and written there directly.

One real `mlflow server` per module, its --artifacts-destination a bucket of a moto server
that checks credentials (IAM auth on: wrong keys are refused as AWS refuses them), behind a
counting proxy (tests/faultproxy.py, no faults) so that requests reaching the server's
artifact proxy are counted. Runs' files are put into the bucket with boto3 where the server
would keep them. See docs/s3-artifacts.md.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import random
import resource
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import requests

from faultproxy import FaultProxy, Faults
from s3server import MotoServer
from servers import MlflowServer
from trackport import s3
from trackport.domain import ArtifactFile
from trackport.opening import open_bundle_source, open_source
from trackport.stores.rest.artifacts import MULTIPART_CHUNK, ArtifactUploader
from trackport.stores.rest.server import connect

ARTIFACTS = "/api/2.0/mlflow-artifacts/"
PREFIX = "mlartifacts"


class RefusingMoto(MotoServer):
    """moto with IAM auth on and no IAM user: every request is refused with
    InvalidAccessKeyId, as AWS refuses a key it does not know (moto's own signature check
    cannot be used for the tracking server: it rejects MLflow's listings with a delimiter)."""

    def start(self) -> "RefusingMoto":
        saved = os.environ.get("INITIAL_NO_AUTH_ACTION_COUNT")
        os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        try:
            return super().start()
        finally:
            if saved is None:
                del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]
            else:
                os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = saved


@pytest.fixture(scope="module")
def stack(moto_server, tmp_path_factory):
    bucket = moto_server.new_bucket()
    env = {**moto_server.env(), "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true"}
    server = MlflowServer(tmp_path_factory.mktemp("s3server"), artifacts_destination=f"s3://{bucket}/{PREFIX}",
                          extra_env=env)
    proxy = refusing = None
    try:
        server.start()
        refusing = RefusingMoto(tmp_path_factory.mktemp("refusing")).start()
        server.wait_ready()
        proxy = FaultProxy(server.url, Faults(), random.Random(0)).start()
        yield SimpleNamespace(moto=moto_server, bucket=bucket, server=server, proxy=proxy, url=proxy.url,
                              refusing=refusing, destination=f"s3://{bucket}/{PREFIX}",
                              seeded=_seed(proxy.url, moto_server, bucket))
    finally:
        if proxy is not None:
            proxy.stop()
        if refusing is not None:
            refusing.stop()
        server.stop()


def _aws_env(monkeypatch, env: dict[str, str]) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(s3, "_clients", {})  # clients keep the credentials they were made with


@pytest.fixture
def aws(stack, monkeypatch):
    """This process's boto3 pointed at the module's S3, its counters at zero."""
    _aws_env(monkeypatch, stack.moto.env())
    stack.proxy.reset_paths()
    return stack


@pytest.fixture
def wrong_keys(stack, monkeypatch):
    """This process's boto3 with keys S3 refuses."""
    _aws_env(monkeypatch, stack.refusing.env())
    stack.proxy.reset_paths()
    return stack


def _call(url: str, endpoint: str, body: dict) -> dict:
    answer = requests.post(f"{url}/api/2.0/mlflow/{endpoint}", json=body, timeout=30)
    answer.raise_for_status()
    return answer.json()


def _files(run_index: int) -> dict[str, bytes]:
    rng = random.Random(run_index)
    return {
        "model/MLmodel": b"artifact_path: model\nflavors: {}\n",
        "data/table.csv": b"a,b\n" + b"".join(b"%d,%d\n" % (rng.randint(0, 99), i) for i in range(200)),
        "blob.bin": rng.randbytes(1_500_000),  # streamed, not read whole
        "empty.txt": b"",
    }


def _seed(url: str, moto: MotoServer, bucket: str) -> dict[str, dict]:
    """Two experiments: 'proxied' (mlflow-artifacts:/ runs, files under the destination) and
    'in-s3' (artifact location s3://..., the runs' URIs name the bucket). Files are put
    where the server keeps them."""
    client = moto.client()
    runs = {}
    for name, location in (("proxied", None), ("in-s3", f"s3://{bucket}/direct-root")):
        body = {"name": name, **({"artifact_location": location} if location else {})}
        exp_id = _call(url, "experiments/create", body)["experiment_id"]
        for i in range(2):
            info = _call(url, "runs/create", {"experiment_id": exp_id, "run_name": f"{name}-{i}", "start_time": 1000 + i})["run"]["info"]
            uri = info["artifact_uri"]
            if uri.startswith("mlflow-artifacts:"):
                root = f"{PREFIX}/{uri.split(':', 1)[1].strip('/')}"
            else:
                root = uri.split(f"s3://{bucket}/", 1)[1]
            files = _files(len(runs))
            for rel, data in files.items():
                client.put_object(Bucket=bucket, Key=f"{root}/{rel}", Body=data)
            _call(url, "runs/update", {"run_id": info["run_id"], "status": "FINISHED", "end_time": 2000})
            runs[info["run_id"]] = {"experiment": name, "uri": uri, "files": files}
    return runs


def _export(stack, source: str, bundle, *, env: dict | None = None) -> dict:
    result = subprocess.run(["trackport", "export", source, str(bundle), "--json"], capture_output=True, text=True,
                            timeout=300, env=env or os.environ.copy())
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _assert_bundle_has_every_file(stack, bundle, experiment: str) -> None:
    with open_bundle_source(str(bundle)) as source:
        from trackport.stores.base import Selection

        seen = 0
        for exp in source.list_experiments(Selection()):
            for run in source.iter_runs(exp, Selection()):
                expected = stack.seeded[run.run_id]
                assert expected["experiment"] == experiment
                listed = {f.path: f.size for f in source.list_artifacts(run)}
                assert listed == {p: len(d) for p, d in expected["files"].items()}
                for path, data in expected["files"].items():
                    with source.open_artifact(run, path) as stream:
                        assert stream.read() == data, path
                seen += 1
        assert seen == 2


def test_proxied_runs_are_read_from_the_bucket_when_the_destination_is_given(aws, tmp_path):
    # Through the server first: every file crosses its artifact proxy (the counter works).
    proxied = subprocess.run(["trackport", "export", aws.url, str(tmp_path / "proxy"), "--experiment", "proxied", "--json"],
                             capture_output=True, text=True, timeout=300)
    assert proxied.returncode == 0, proxied.stderr
    assert aws.proxy.requests_to(ARTIFACTS, "GET") == 8  # 2 runs x 4 files
    aws.proxy.reset_paths()

    source = f"{aws.url}?artifacts_destination={aws.destination}"
    result = subprocess.run(["trackport", "export", source, str(tmp_path / "direct"), "--experiment", "proxied", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["artifact_files"]["done"] == 8
    assert aws.proxy.requests_to(ARTIFACTS) == 0
    assert aws.proxy.requests_to("/api/2.0/mlflow/artifacts/list") == 0  # listed in S3 too
    _assert_bundle_has_every_file(aws, tmp_path / "direct", "proxied")


def test_runs_with_s3_artifact_uris_are_read_directly_without_any_option(aws, tmp_path):
    result = subprocess.run(["trackport", "export", aws.url, str(tmp_path / "b"), "--experiment", "in-s3", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["artifact_files"]["done"] == 8
    for path in (ARTIFACTS, "/get-artifact", "/api/2.0/mlflow/artifacts/list"):
        assert aws.proxy.requests_to(path) == 0, path
    _assert_bundle_has_every_file(aws, tmp_path / "b", "in-s3")
