"""Bundles at s3://bucket/prefix, on moto in server mode (boto3 talks HTTP to it): a round
trip server -> S3 bundle -> server, verify on the bucket, exports and imports killed
half-way that resume without sending or fetching finished files again, and the one-line
errors of wrong credentials, a missing bucket and a denied write."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager

import botocore.client
import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from s3server import MotoServer
from trackport.cli.main import cli
from trackport.errors import ExitCode

pytestmark = pytest.mark.usefixtures("s3_env")


@contextmanager
def counted_s3_calls():
    """Every S3 API call this process makes, by operation name, and by (name, key)."""
    calls: Counter = Counter()
    original = botocore.client.BaseClient._make_api_call

    def counting(self, operation_name, api_params):
        calls[operation_name] += 1
        calls[(operation_name, api_params.get("Key"))] += 1
        return original(self, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = counting
    try:
        yield calls
    finally:
        botocore.client.BaseClient._make_api_call = original


def _keys(moto: MotoServer, bucket: str, prefix: str = "") -> dict[str, str]:
    found = {}
    for page in moto.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", ()):
            found[item["Key"]] = item["ETag"]
    return found


def test_server_to_s3_bundle_to_server(source_server, fresh_server, moto_server):
    bucket = moto_server.new_bucket()
    url = f"s3://{bucket}/backups/nightly"
    runner = CliRunner()
    exported = runner.invoke(cli, ["export", source_server.url, url, "--json"])
    assert exported.exit_code == 0, exported.output
    keys = _keys(moto_server, bucket)
    assert "backups/nightly/manifest.jsonl" in keys and "backups/nightly/trackport-bundle.json" in keys
    assert not any(k.startswith("backups/nightly/transfer/lock") for k in keys)
    head = moto_server.client().head_object(Bucket=bucket, Key="backups/nightly/manifest.jsonl")
    assert len(head["Metadata"]["sha256"]) == 64

    checked = runner.invoke(cli, ["bundle", "verify", url, "--level", "full"])
    assert checked.exit_code == 0 and checked.output.strip().endswith("0 problems"), checked.output
    inspected = runner.invoke(cli, ["bundle", "inspect", url, "--json"])
    assert inspected.exit_code == 0 and json.loads(inspected.output)["counts"]["runs"] > 0

    imported = runner.invoke(cli, ["import", url, fresh_server.url])
    assert imported.exit_code == 0, imported.output
    verified = runner.invoke(cli, ["verify", source_server.url, fresh_server.url])
    assert verified.exit_code == 0 and verified.output.strip().endswith("0 differences"), verified.output

    again = runner.invoke(cli, ["export", source_server.url, url])  # the same command twice
    assert again.exit_code == 0, again.output
    changed = {k for k, etag in _keys(moto_server, bucket).items() if keys.get(k) != etag}
    # Only the record of the second transfer (its ledger lines) and the manifest that lists it.
    assert changed <= {f"backups/nightly/{p}" for p in ("transfer/ledger.jsonl", "transfer/transfers.jsonl", "manifest.jsonl")}


def test_a_damaged_object_is_named_by_verify_and_refused_by_import(source_server, moto_server, tmp_path):
    bucket = moto_server.new_bucket()
    url = f"s3://{bucket}/b"
    runner = CliRunner()
    assert runner.invoke(cli, ["export", source_server.url, url]).exit_code == 0
    client = moto_server.client()
    run_json = next(k for k in _keys(moto_server, bucket) if k.endswith("/run.json"))
    body = client.get_object(Bucket=bucket, Key=run_json)["Body"].read()
    client.put_object(Bucket=bucket, Key=run_json, Body=body.replace(b'"', b"'", 1))  # same size, other bytes
    checked = runner.invoke(cli, ["bundle", "verify", url, "--level", "full"])
    assert checked.exit_code == ExitCode.VERIFY_FAILED
    assert run_json.split("/", 1)[1] in checked.output and "sha256" in checked.output


def _workload(tmp_path, runs: int, artifact_bytes: int) -> str:
    """A local sqlite store with runs that each hold one artifact of artifact_bytes."""
    uri = f"sqlite:///{tmp_path / 'src.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment(f"s3-resume-{tmp_path.name}", artifact_location=str(tmp_path / "artifacts"))
    blob = tmp_path / "blob.bin"
    for i in range(runs):
        blob.write_bytes(os.urandom(artifact_bytes))
        run = client.create_run(exp, run_name=f"r{i}")
        client.log_param(run.info.run_id, "i", str(i))
        client.log_artifact(run.info.run_id, str(blob))
        client.set_terminated(run.info.run_id)
    return uri


def _kill_when(command: list[str], ready, what: str) -> None:
    process = subprocess.Popen(command, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None and not ready():
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, f"the {what} ended before it could be killed half-way"


def test_killed_export_and_import_resume_without_sending_finished_files(tmp_path, moto_server, target_server):
    source = _workload(tmp_path, runs=40, artifact_bytes=1 << 20)
    bucket = moto_server.new_bucket()
    url = f"s3://{bucket}/resume"
    main = [sys.executable, "-m", "trackport.cli.main"]

    _kill_when([*main, "export", source, url], lambda: len(_keys(moto_server, bucket)) >= 8, "export")
    before = _keys(moto_server, bucket)
    assert "resume/manifest.jsonl" not in before  # nothing visible as a bundle yet
    with counted_s3_calls() as calls:
        resumed = CliRunner().invoke(cli, ["export", source, url])
    assert resumed.exit_code == 0, resumed.output
    after = _keys(moto_server, bucket)
    assert all(after[k] == etag for k, etag in before.items() if ".trackport-probe-" not in k)
    # One probe write, then only the objects the bucket did not hold.
    sent = calls["PutObject"] + calls["CreateMultipartUpload"]
    assert sent == len(after) - len(before) + 1, (calls, len(after), len(before))

    # The staging copy keeps no artifact bytes: each run's files became sparse once sent.
    from trackport.bundle.s3_bundle import staging_root

    blobs = list((staging_root(url) / "export").rglob("blob.bin"))
    assert len(blobs) == 40 and sum(b.stat().st_size for b in blobs) == 40 << 20
    assert sum(b.stat().st_blocks for b in blobs) * 512 < 1 << 20

    # The import reads each file from the bucket as it needs it; a killed one, run again,
    # reads the files of the runs it had not finished, and no artifact of the others.
    target = MlflowClient(tracking_uri=target_server.url)

    def complete_copies() -> int:
        exp = target.get_experiment_by_name(f"s3-resume-{tmp_path.name}")
        if exp is None:
            return 0
        return len(target.search_runs([exp.experiment_id], "tags.`trackport.complete` = 'true'", max_results=1000))

    _kill_when([*main, "import", url, target_server.url], lambda: complete_copies() >= 10, "import")
    done = complete_copies()
    with counted_s3_calls() as calls:
        imported = CliRunner().invoke(cli, ["import", url, target_server.url])
    assert imported.exit_code == 0, imported.output
    artifact_reads = sum(n for k, n in calls.items() if isinstance(k, tuple) and k[0] == "GetObject" and k[1].endswith("blob.bin"))
    assert 0 < artifact_reads <= 40 - done + 1, (artifact_reads, done)
    verified = CliRunner().invoke(cli, ["verify", source, target_server.url])
    assert verified.exit_code == 0 and verified.output.strip().endswith("0 differences"), verified.output


def test_a_prefix_that_holds_something_else_is_refused_untouched(source_server, moto_server):
    bucket = moto_server.new_bucket()
    moto_server.client().put_object(Bucket=bucket, Key="data/notes.txt", Body=b"mine")
    result = CliRunner().invoke(cli, ["export", source_server.url, f"s3://{bucket}/data"])
    assert result.exit_code == ExitCode.BAD_INPUT and "not a trackport bundle" in result.output
    assert list(_keys(moto_server, bucket)) == ["data/notes.txt"]


def test_a_missing_bucket_is_one_line_exit_3(source_server, moto_server):
    for command in (["export", source_server.url, "s3://no-such-bucket-tp/x"], ["import", "s3://no-such-bucket-tp/x", source_server.url]):
        result = CliRunner().invoke(cli, command)
        assert result.exit_code == ExitCode.BAD_INPUT, result.output
        assert "no such bucket" in result.output and len(result.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def authenticating_s3(tmp_path_factory):
    """A moto server that checks credentials and IAM policies (after the setup calls it
    lets through): a user who may read and list but not write, and its keys."""
    server = MotoServer(tmp_path_factory.mktemp("moto-auth"))
    server_env = {"INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    old = dict(os.environ)
    os.environ.update(server_env)
    try:
        server.start()
    finally:
        os.environ.clear()
        os.environ.update(old)
    import boto3

    iam = boto3.client("iam", endpoint_url=server.url, region_name="us-east-1",
                       aws_access_key_id="x", aws_secret_access_key="y")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="read", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:HeadBucket"], "Resource": "*"}],
    }))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    s3 = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="y")
    s3.create_bucket(Bucket="guarded")
    yield server, key
    server.stop()


def test_wrong_credentials_and_a_denied_write_are_one_line_exit_5(authenticating_s3, source_server, monkeypatch):
    server, key = authenticating_s3
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    denied = CliRunner().invoke(cli, ["export", source_server.url, "s3://guarded/b"])
    assert denied.exit_code == ExitCode.AUTH and "refused by S3" in denied.output, denied.output
    assert len(denied.output.strip().splitlines()) == 1 and key["SecretAccessKey"] not in denied.output

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
    wrong = CliRunner().invoke(cli, ["export", source_server.url, "s3://guarded/b"])
    assert wrong.exit_code == ExitCode.AUTH and len(wrong.output.strip().splitlines()) == 1, wrong.output
    import boto3

    reader = boto3.client("s3", endpoint_url=server.url, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
    assert reader.list_objects_v2(Bucket="guarded").get("KeyCount") == 0  # nothing half-visible


def test_an_export_from_another_machine_extends_the_bucket_s_bundle(tmp_path, moto_server, monkeypatch):
    """A second machine (another TRACKPORT_HOME) exports new runs into the bucket's bundle:
    it fetches the documents, not the artifacts, and sends only what is new."""
    source = _workload(tmp_path, runs=3, artifact_bytes=1 << 16)
    url = f"s3://{moto_server.new_bucket()}/shared"
    assert CliRunner().invoke(cli, ["export", source, url]).exit_code == 0
    before = _keys(moto_server, url.split("/")[2])
    client = MlflowClient(tracking_uri=source)
    exp = client.get_experiment_by_name(f"s3-resume-{tmp_path.name}")
    added = client.create_run(exp.experiment_id, run_name="later").info.run_id
    client.set_terminated(added)
    monkeypatch.setenv("TRACKPORT_HOME", str(tmp_path / "other-machine"))
    with counted_s3_calls() as calls:
        again = CliRunner().invoke(cli, ["export", source, url])
    assert again.exit_code == 0, again.output
    assert not any(isinstance(k, tuple) and k[0] == "GetObject" and k[1].endswith("blob.bin") for k in calls)
    after = _keys(moto_server, url.split("/")[2])
    assert all(after[k] == etag for k, etag in before.items() if "/runs/" in k)  # no run sent again
    assert any(f"/runs/{added}/run.json" in k for k in after)
    checked = CliRunner().invoke(cli, ["bundle", "verify", url, "--level", "full"])
    assert checked.exit_code == 0 and checked.output.strip().endswith("0 problems"), checked.output
    verified = CliRunner().invoke(cli, ["verify", source, url])
    assert verified.exit_code == 0 and verified.output.strip().endswith("0 differences"), verified.output


def test_an_incremental_chain_on_s3_restores_and_verify_names_a_damaged_link(tmp_path, moto_server):
    source = _workload(tmp_path, runs=4, artifact_bytes=1 << 16)
    bucket = moto_server.new_bucket()
    full, inc = f"s3://{bucket}/nightly/full", f"s3://{bucket}/nightly/inc1"
    runner = CliRunner()
    assert runner.invoke(cli, ["export", source, full]).exit_code == 0
    client = MlflowClient(tracking_uri=source)
    exp = client.get_experiment_by_name(f"s3-resume-{tmp_path.name}")
    runs = client.search_runs([exp.experiment_id])
    client.set_tag(runs[0].info.run_id, "changed", "yes")
    added = client.create_run(exp.experiment_id, run_name="added").info.run_id
    client.log_metric(added, "m", 1.0)
    client.set_terminated(added)
    made = runner.invoke(cli, ["export", source, inc, "--since-bundle", full])
    assert made.exit_code == 0, made.output
    full_bytes = sum(o["Size"] for o in moto_server.client().list_objects_v2(Bucket=bucket, Prefix="nightly/full/")["Contents"])
    inc_bytes = sum(o["Size"] for o in moto_server.client().list_objects_v2(Bucket=bucket, Prefix="nightly/inc1/")["Contents"])
    assert inc_bytes < full_bytes / 4  # the unchanged artifacts are references, not copies

    checked = runner.invoke(cli, ["bundle", "verify", inc, "--level", "full"])
    assert checked.exit_code == 0 and checked.output.strip().endswith("0 problems"), checked.output
    restored = f"sqlite:///{tmp_path / 'restored.db'}"
    imported = runner.invoke(cli, ["import", inc, restored])
    assert imported.exit_code == 0, imported.output
    verified = runner.invoke(cli, ["verify", source, restored])
    assert verified.exit_code == 0 and verified.output.strip().endswith("0 differences"), verified.output

    blob = next(k for k in _keys(moto_server, bucket, "nightly/full/") if k.endswith("blob.bin"))
    moto_server.client().put_object(Bucket=bucket, Key=blob, Body=b"damaged")
    damaged = runner.invoke(cli, ["bundle", "verify", inc, "--level", "full"])
    assert damaged.exit_code == ExitCode.VERIFY_FAILED and "link 1 of the chain" in damaged.output, damaged.output
    refused = runner.invoke(cli, ["export", source, f"s3://{bucket}/elsewhere/inc2", "--since-bundle", inc])
    assert refused.exit_code == ExitCode.BAD_INPUT and "side by side" in refused.output
