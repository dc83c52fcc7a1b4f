"""Artifacts of a tracking server whose files live in S3, read and written there directly.

One real `mlflow server` per module, its --artifacts-destination a bucket of the session's
moto server (MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD on), behind a counting proxy
(tests/faultproxy.py, no faults) so that requests reaching the server's artifact proxy are
counted; and a second moto with IAM auth on and no user, which refuses every key as AWS
refuses a wrong one. Runs' files are put into the bucket with boto3 where the server keeps
them. See docs/s3-artifacts.md.
"""
from __future__ import annotations

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
def stack(moto_server, server_pool, tmp_path_factory):
    bucket = moto_server.new_bucket()
    env = {**moto_server.env(), "MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD": "true"}
    server = MlflowServer(tmp_path_factory.mktemp("s3server"), artifacts_destination=f"s3://{bucket}/{PREFIX}",
                          extra_env=env, template_db=server_pool.template_db)
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


def _run_of(source, run_id: str):
    from trackport.stores.base import Selection

    for exp in source.list_experiments(Selection()):
        for run in source.iter_runs(exp, Selection()):
            if run.run_id == run_id:
                return run
    raise AssertionError(run_id)


def test_refused_keys_fall_back_to_the_proxy_with_a_note(wrong_keys, tmp_path):
    source_uri = f"{wrong_keys.url}?artifacts_destination={wrong_keys.destination}"
    result = subprocess.run(["trackport", "export", source_uri, str(tmp_path / "b"), "--experiment", "proxied", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["counts"]["artifact_files"]["done"] == 8
    assert wrong_keys.proxy.requests_to(ARTIFACTS, "GET") == 8  # every file through the server
    _assert_bundle_has_every_file(wrong_keys, tmp_path / "b", "proxied")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in result.stderr + result.stdout

    # The note in the run's ledger entry, and as the source hands it to the engine.
    run_id = next(i for i, r in wrong_keys.seeded.items() if r["experiment"] == "proxied")
    ledger = [json.loads(line) for line in (tmp_path / "b" / "transfer" / "ledger.jsonl").read_text().splitlines()]
    entry = next(e for e in ledger if e.get("source_id") == run_id)
    assert any("through the server's proxy" in n for n in entry.get("notes", ())), entry
    with open_source(source_uri) as source:
        run = _run_of(source, run_id)
        assert {f.path for f in source.list_artifacts(run)} == set(wrong_keys.seeded[run_id]["files"])
        with source.open_artifact(run, "blob.bin") as stream:
            assert stream.read() == wrong_keys.seeded[run_id]["files"]["blob.bin"]
        notes = source.unit_notes(run)
        assert len(notes) == 1 and "through the server's proxy" in notes[0] and "InvalidAccessKeyId" in notes[0], notes
        assert os.environ["AWS_SECRET_ACCESS_KEY"] not in notes[0] and os.environ["AWS_ACCESS_KEY_ID"] not in notes[0]
        assert source.unit_notes(run) == []  # taken once


def _target_prefix(stack, run_id: str) -> str:
    info = requests.get(f"{stack.url}/api/2.0/mlflow/runs/get", params={"run_id": run_id}, timeout=30).json()["run"]["info"]
    return f"{PREFIX}/{info['artifact_uri'].split(':', 1)[1].strip('/')}"


def test_artifacts_direct_writes_into_the_bucket_not_through_the_server(aws, tmp_path):
    bundle = tmp_path / "b"
    assert subprocess.run(["trackport", "export", aws.url, str(bundle), "--experiment", "in-s3"],
                          capture_output=True, text=True, timeout=300).returncode == 0
    aws.proxy.reset_paths()
    target = f"{aws.url}?artifacts_destination={aws.destination}"
    result = subprocess.run(["trackport", "import", str(bundle), target, "--artifacts-direct", "--json",
                             "--rename-experiment", "in-s3=written-direct"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["counts"]["artifact_files"]["done"] == 8
    assert aws.proxy.requests_to(ARTIFACTS) == 0  # not one file through the server
    client = aws.moto.client()
    exp = requests.get(f"{aws.url}/api/2.0/mlflow/experiments/get-by-name",
                       params={"experiment_name": "written-direct"}, timeout=30).json()["experiment"]
    copies = _call(aws.url, "runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
    assert len(copies) == 2
    for copy in copies:
        source_id = {t["key"]: t["value"] for t in copy["data"]["tags"]}["trackport.source.run_id"]
        files = aws.seeded[source_id]["files"]
        prefix = _target_prefix(aws, copy["info"]["run_id"])
        for rel, data in files.items():
            body = client.get_object(Bucket=aws.bucket, Key=f"{prefix}/{rel}")["Body"].read()
            assert body == data or rel.endswith("MLmodel"), rel
        # The server serves what was written behind its back.
        served = requests.get(f"{aws.url}{ARTIFACTS}artifacts/{prefix[len(PREFIX) + 1:]}/blob.bin", timeout=30)
        assert served.content == files["blob.bin"]


def test_artifacts_direct_with_refused_keys_is_a_one_line_error(stack, tmp_path):
    bundle = tmp_path / "b"
    env = {**os.environ, **stack.moto.env()}
    assert subprocess.run(["trackport", "export", stack.url, str(bundle), "--experiment", "in-s3"], env=env,
                          capture_output=True, text=True, timeout=300).returncode == 0
    env = {**os.environ, **stack.refusing.env()}
    target = f"{stack.url}?artifacts_destination={stack.destination}"
    result = subprocess.run(["trackport", "import", str(bundle), target, "--artifacts-direct",
                             "--rename-experiment", "in-s3=refused-direct"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 5, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()  # checked when the target is opened: nothing written
    assert len(lines) == 1 and lines[0].startswith("error: ") and "InvalidAccessKeyId" in lines[0], result.stderr
    assert requests.get(f"{stack.url}/api/2.0/mlflow/experiments/get-by-name", timeout=30,
                        params={"experiment_name": "refused-direct"}).status_code == 404
    assert env["AWS_SECRET_ACCESS_KEY"] not in result.stderr

    # Without a destination, a proxied target cannot be written directly: a one-line error.
    result = subprocess.run(["trackport", "import", str(bundle), stack.url, "--artifacts-direct",
                             "--rename-experiment", "in-s3=no-destination"], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 3, (result.stdout, result.stderr)  # bad input
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "artifacts_destination" in errors[0], result.stderr
    assert result.stderr.strip().splitlines()[-1] == errors[0]


BLOCK = 1 << 20


class Generated(io.RawIOBase):
    """size deterministic bytes, made as they are read (never held whole), seekable: block
    i of 1 MiB is a base block rotated by its own offset, so parts out of place show."""

    def __init__(self, size: int, seed: int = 16) -> None:
        base = random.Random(seed).randbytes(BLOCK)
        self._twice = base + base
        self.size = size
        self.pos = 0

    @staticmethod
    def _rotation(block: int) -> int:
        return (block * 7919) % BLOCK

    def expected(self, offset: int, length: int) -> bytes:
        out = bytearray()
        while length > 0 and offset < self.size:
            block, within = divmod(offset, BLOCK)
            take = min(length, BLOCK - within, self.size - offset)
            start = self._rotation(block) + within
            out += self._twice[start:start + take]
            offset += take
            length -= take
        return bytes(out)

    def readinto(self, buffer) -> int:
        data = self.expected(self.pos, len(buffer))
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self.pos = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence] + offset
        return self.pos


@dataclass
class _OneBigFile:
    path: str
    size: int

    def artifact_files(self):
        return iter([ArtifactFile(self.path, self.size)])

    @contextmanager
    def open_artifact(self, path: str):
        assert path == self.path
        yield Generated(self.size)


def test_a_600_mib_artifact_goes_through_the_servers_multipart_upload(aws):
    size = 600 * BLOCK
    exp_id = _call(aws.url, "experiments/create", {"name": f"multipart-{uuid.uuid4().hex[:6]}"})["experiment_id"]
    info = _call(aws.url, "runs/create", {"experiment_id": exp_id, "run_name": "big"})["run"]["info"]
    client, server = connect(aws.url, "target")
    assert server.multipart_uploads  # MLFLOW_ENABLE_PROXY_MULTIPART_UPLOAD advertised in server-info
    counted = SimpleNamespace(artifact_files=0, artifact_bytes=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    try:
        ArtifactUploader(client, multipart_uploads=True).upload_files(
            "run big", info["artifact_uri"], _OneBigFile("weights/model.bin", size), counted, lambda data: data
        )
    finally:
        client.close()
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < 150 * 1024, f"peak memory grew by {grown // 1024} MiB"  # a 10 MiB part at a time
    assert (counted.artifact_files, counted.artifact_bytes) == (1, size)

    assert aws.proxy.requests_to(f"{ARTIFACTS}mpu/create/", "POST") == 1
    assert aws.proxy.requests_to(f"{ARTIFACTS}mpu/complete/", "POST") == 1
    assert aws.proxy.requests_to(ARTIFACTS, "PUT") == 0  # the parts went to the presigned URLs
    key = f"{_target_prefix(aws, info['run_id'])}/weights/model.bin"
    s3client = aws.moto.client()
    head = s3client.head_object(Bucket=aws.bucket, Key=key)
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith(f"-{size // MULTIPART_CHUNK}")  # a multipart object of 60 parts
    generated = Generated(size)
    for offset in (0, MULTIPART_CHUNK - 8, 31 * MULTIPART_CHUNK - 8, size - 4096):
        part = s3client.get_object(Bucket=aws.bucket, Key=key, Range=f"bytes={offset}-{offset + 4095}")["Body"].read()
        assert part == generated.expected(offset, 4096), offset
